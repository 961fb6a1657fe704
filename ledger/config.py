"""Configuration from the environment (flags may override): where the database is."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit

from ledger.errors import InvalidInput

DEFAULT_DATABASE_URL: Final = "sqlite:///ledger.db"


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

    @classmethod
    def from_url(cls, url: str) -> DatabaseConfig:
        """`sqlite:///relative.db`, `sqlite:////absolute.db`, or
        `postgresql://user:pass@host:port/db`."""
        if url.startswith("sqlite:///"):
            path = url[len("sqlite:///") :]
            if not path or path.endswith("/"):
                raise InvalidInput(f"invalid database URL {url!r}: names no file")
            return cls(kind="sqlite", path=path)
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme in ("postgresql", "postgres"):
            parts = urlsplit(url)
            try:
                port = parts.port or 5432
            except ValueError:
                raise InvalidInput("invalid database URL: bad port") from None
            dbname = unquote(parts.path.lstrip("/"))
            if not parts.hostname or not dbname or not parts.username:
                raise InvalidInput(
                    "invalid database URL: expected postgresql://user:pass@host:port/db"
                )
            return cls(
                kind="postgresql",
                host=parts.hostname,
                port=port,
                user=unquote(parts.username),
                password=unquote(parts.password or ""),
                dbname=dbname,
            )
        # Never echo the URL here: it may carry a password.
        raise InvalidInput(
            "invalid database URL: expected sqlite:///PATH or postgresql://user:pass@host:port/db"
        )

    def libpq_params(self) -> dict[str, Any]:
        """Keyword arguments for psycopg.connect (PostgreSQL only)."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": self.dbname,
        }

    def eventsourcing_env(self, pool_size: int = 2) -> dict[str, str]:
        """The eventsourcing library's settings for this database. The library
        never creates tables on its own: `ledger migrate` does, under a lock.
        `pool_size`: connections kept open (the daemon wants one per worker)."""
        if self.kind == "sqlite":
            return {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "APPLICATION_RECORDER_TOPIC": "ledger.storage:StatementsSQLiteRecorder",
                "SQLITE_DBNAME": self.path,
                "SQLITE_LOCK_TIMEOUT": "30",
                "CREATE_TABLE": "n",
            }
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "APPLICATION_RECORDER_TOPIC": "ledger.storage:ArrayInsertPostgresRecorder",
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
    exclusive: bool = False,
) -> float | None:
    """A number from the environment (`default` when unset), at least `minimum`
    (more than it, with `exclusive`); bad values are bad input naming the variable."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"invalid {name} {raw!r}: expected a number") from None
    # Written so that NaN fails too.
    if not (value > minimum if exclusive else value >= minimum):
        bound = "more than" if exclusive else "at least"
        raise InvalidInput(f"invalid {name} {raw!r}: must be {bound} {minimum:g}")
    return value
