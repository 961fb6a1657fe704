"""Configuration from the environment (flags may override): where the database
is, and the one rule for every number the environment gives."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from ledger.errors import InvalidInput

DEFAULT_DATABASE_URL: Final = "sqlite:///ledger.db"
# Set from the URL's own parts; the query string may not repeat them.
_URL_PARTS: Final = frozenset({"host", "port", "user", "password", "dbname"})


@cache
def libpq_keywords() -> frozenset[str]:
    """Every connection parameter this libpq knows (sslmode, sslrootcert,
    application_name, target_session_attrs...)."""
    import psycopg  # noqa: PLC0415 - only PostgreSQL URLs need libpq

    return frozenset(option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults())


@dataclass(frozen=True)
class DatabaseConfig:
    """Where everything lives: events, the read table, tracking positions."""

    kind: Literal["sqlite", "postgresql"]
    # sqlite: the file path. postgresql: connection parameters.
    path: str = ""
    host: str = ""
    port: int = 5432
    user: str = ""
    password: str = ""
    dbname: str = ""
    # Every other libpq parameter the URL's query string gives (sslmode=...),
    # passed to every connection the ledger makes. repr=False: one may be a
    # password (sslpassword).
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @classmethod
    def from_url(cls, url: str) -> DatabaseConfig:
        """`sqlite:///relative.db`, `sqlite:////absolute.db`, or
        `postgresql://user:pass@host:port/db[?sslmode=verify-full&...]`."""
        if url.startswith("sqlite:///"):
            path = url[len("sqlite:///") :]
            if not path or path.endswith("/"):
                raise InvalidInput(f"invalid database URL {url!r}: names no file")
            return cls(kind="sqlite", path=path)
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme in ("postgresql", "postgres"):
            return cls._postgresql(url)
        # Never echo the URL here: it may carry a password.
        raise InvalidInput(
            "invalid database URL: expected sqlite:///PATH or postgresql://user:pass@host:port/db"
        )

    @classmethod
    def _postgresql(cls, url: str) -> DatabaseConfig:
        try:
            parts = urlsplit(url)
            port = parts.port or 5432
            hostname, username, password = parts.hostname, parts.username, parts.password
        except ValueError as error:
            # "Invalid IPv6 URL", a port out of range: urllib's words, no password in them.
            raise InvalidInput(f"invalid database URL: {error}") from None
        try:
            query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            query = [] if not parts.query else [("", "")]
        options: dict[str, str] = {}
        for key, value in query:
            if key in _URL_PARTS or key not in libpq_keywords():
                shown = key if key.isprintable() and len(key) <= 40 else "?"
                raise InvalidInput(
                    f"invalid database URL: unknown connection parameter {shown!r}"
                    " (libpq's: sslmode, sslrootcert, application_name, connect_timeout, ...)"
                )
            options[key] = value
        dbname = unquote(parts.path.lstrip("/"))
        if not hostname or not dbname or not username:
            raise InvalidInput("invalid database URL: expected postgresql://user:pass@host:port/db")
        return cls(
            kind="postgresql",
            host=hostname,
            port=port,
            user=unquote(username),
            password=unquote(password or ""),
            dbname=dbname,
            options=tuple(options.items()),
        )

    def libpq_params(self) -> dict[str, Any]:
        """Keyword arguments for psycopg.connect (PostgreSQL only): the URL's
        parts and every libpq parameter of its query string."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": self.dbname,
            **dict(self.options),
        }

    def eventsourcing_env(self, pool_size: int = 2) -> dict[str, str]:
        """The eventsourcing library's settings for this database. The library
        never creates tables on its own: `ledger migrate` does, under a lock.
        `pool_size`: connections kept open (the daemon wants one per worker)."""
        # Both stores encode events with the ledger's transcoder: the
        # library's JSON, written faster (ledger.storage.encoding).
        transcoder = "ledger.storage.encoding:EventTranscoder"
        if self.kind == "sqlite":
            return {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "TRANSCODER_TOPIC": transcoder,
                "APPLICATION_RECORDER_TOPIC": "ledger.storage:StatementsSQLiteRecorder",
                "SQLITE_DBNAME": self.path,
                "SQLITE_LOCK_TIMEOUT": "30",
                "CREATE_TABLE": "n",
            }
        return {
            "PERSISTENCE_MODULE": "ledger.storage:LedgerPostgresFactory",
            "TRANSCODER_TOPIC": transcoder,
            "LEDGER_LIBPQ_OPTIONS": json.dumps(dict(self.options)),
            "APPLICATION_RECORDER_TOPIC": "ledger.storage:FunctionAppendPostgresRecorder",
            "POSTGRES_DBNAME": self.dbname,
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
            "POSTGRES_POOL_SIZE": str(pool_size),
            "POSTGRES_MAX_OVERFLOW": "4",
            "POSTGRES_CONNECT_TIMEOUT": "10",
            # Appends take an EXCLUSIVE table lock; wait for it rather than fail fast.
            "POSTGRES_LOCK_TIMEOUT": "30",
            # Connections lost to a server restart are found when used, and the
            # pool is then checked at once (ledger.storage): checking every
            # connection before it is lent would cost each command a round trip.
            "POSTGRES_PRE_PING": "n",
            # The ledger runs its own statements inside an append's transaction;
            # the library's insert function would skip them.
            "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
            "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "5",
            "POSTGRES_SCHEMA": "",
            "ORIGINATOR_ID_TYPE": "uuid",
            "CREATE_TABLE": "n",
        }


def database_url(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get("LEDGER_DATABASE_URL") or DEFAULT_DATABASE_URL


def env_number(
    environ: Mapping[str, str],
    name: str,
    default: float | None,
    *,
    minimum: float,
    maximum: float,
    exclusive: bool = False,
    whole: bool = False,
) -> float | None:
    """A number from the environment (`default` when unset). The one rule for
    every number the ledger reads from its environment: finite, from `minimum`
    (more than it, with `exclusive`) to `maximum`, a whole number with
    `whole`; anything else is bad input naming the variable and its range."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    low = f"more than {minimum:g}" if exclusive else f"{minimum:g}"
    expected = f"expected {'a whole number' if whole else 'a number'} from {low} to {maximum:g}"
    shown = raw if len(raw) <= 30 else raw[:27] + "..."  # shown with repr(): escaped
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"invalid {name} {shown!r}: {expected}") from None
    in_range = value > minimum if exclusive else value >= minimum
    # Written so that NaN fails too; inf fails the maximum.
    if not (math.isfinite(value) and in_range and value <= maximum):
        raise InvalidInput(f"invalid {name} {shown!r}: {expected}")
    if whole and value != int(value):
        raise InvalidInput(f"invalid {name} {shown!r}: {expected}")
    return value
