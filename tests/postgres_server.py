"""A PostgreSQL server for tests, benchmarks and local development.

``postgres_server()`` yields an admin URL of the form
``postgresql://USER:PASSWORD@HOST:PORT/DB``, taken from the first source that works:

1. ``$LEDGER_TEST_DATABASE_URL`` (yielded as given; the user must be allowed to
   ``CREATE DATABASE``);
2. a ``postgres:15`` container via testcontainers, if a Docker engine answers;
3. a throwaway cluster built with the local ``initdb``/``pg_ctl`` binaries, kept in RAM
   (``tests.ramdisk``) when there is room and fsync was not asked for.

Run ``python -m tests.postgres_server [--fsync]`` to start a server, print its admin URL
on stdout (first and only line) and keep it running until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from tests.ramdisk import ram_temp_dir
from tests.waiting import wait_for

ENV_URL = "LEDGER_TEST_DATABASE_URL"
DOCKER_IMAGE = "postgres:15"
DB_USER = "ledger"
# The OS account the local cluster runs as when we are root (PostgreSQL refuses root).
OS_USER = "ledgertest"

_START_TIMEOUT_S = 30.0
_LOG_TAIL_LINES = 40
_START_ATTEMPTS = 3
# Database names we create are embedded in URLs, so keep them to plain identifiers.
_DB_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresStartError(RuntimeError):
    """The local cluster could not be initialised or started."""


@dataclass(frozen=True)
class LocalCluster:
    """A running throwaway cluster; ``root`` holds data dir, socket and log."""

    url: str
    root: Path
    port: int


@contextlib.contextmanager
def postgres_server(*, fsync: bool = False) -> Iterator[str]:
    """Yield an admin URL for a PostgreSQL server, stopping it (if we started it) on exit.

    ``fsync`` only applies to servers started here: tests want it off for speed, a
    benchmark wants it on to measure something real.
    """
    given = os.environ.get(ENV_URL)
    if given:
        yield given
    elif docker_available():
        with _docker_server(fsync=fsync) as url:
            yield url
    else:
        with local_cluster(fsync=fsync) as cluster:
            yield cluster.url


# --- databases ---------------------------------------------------------------------------


def database_url(admin_url: str, name: str) -> str:
    """The URL of database ``name`` on the same server, with the same credentials."""
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_database(admin_url: str, name: str, *, template: str = "template0") -> str:
    """Create database ``name`` as a copy of ``template`` and return its URL.

    The default, ``template0``, gives an empty database: nothing someone put in
    ``template1`` on a shared server leaks into it. A template must have no open
    connections while it is copied (PostgreSQL refuses otherwise).
    """
    _check_db_name(name)
    _check_db_name(template)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
        if conn.info.server_version >= 150000:
            # Copying the files is about twice as fast as PostgreSQL 15's default
            # (WAL_LOG, every page through the WAL) for a database this small.
            statement += sql.SQL(" STRATEGY FILE_COPY")
        conn.execute(statement)
    return database_url(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name`` (if it exists), disconnecting anyone still connected.

    A database marked as a template (see ``seal_template``) is unmarked first:
    PostgreSQL refuses to drop a template.
    """
    _check_db_name(name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT datistemplate FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if row is not None and row[0]:
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(name))
            )
        if conn.info.server_version >= 130000:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            return
        # Before PG13 there is no FORCE: kick the other sessions out by hand.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def unique_database_name(prefix: str = "test") -> str:
    """A name no other test (or test session on a shared server) uses."""
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


@contextlib.contextmanager
def scratch_database(admin_url: str, *, template: str = "template0") -> Iterator[str]:
    """Yield the URL of a new database copied from ``template``; drop it afterwards."""
    name = unique_database_name()
    url = create_database(admin_url, name, template=template)
    try:
        yield url
    finally:
        drop_database(admin_url, name)


def seal_template(admin_url: str, name: str) -> None:
    """Make database ``name`` a template that nobody can connect to any more.

    Copying needs the template to have no connections at all: refusing new ones
    means a test that is handed the template's URL by mistake fails at once,
    instead of making every later copy fail. Sessions still open are waited
    for (closing a pool does not wait for its server processes to exit), and
    one that stays is an error naming its application, not something to kill.
    """
    _check_db_name(name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
                sql.Identifier(name)
            )
        )

        def sessions() -> list[tuple[Any, ...]]:
            return conn.execute(
                "SELECT pid, application_name, state FROM pg_stat_activity WHERE datname = %s",
                (name,),
            ).fetchall()

        try:
            wait_for(lambda: not sessions(), what=f"the sessions on template {name} to end")
        except AssertionError as timed_out:
            raise AssertionError(f"{timed_out}; still open: {sessions()}") from None


def _check_db_name(name: str) -> None:
    if not _DB_NAME_RE.fullmatch(name):
        raise ValueError(f"unsuitable database name {name!r}: use [a-z_][a-z0-9_]*, <= 63 chars")


# --- Docker ------------------------------------------------------------------------------


def docker_available() -> bool:
    """True if a Docker engine answers a ping within ~2 s."""
    try:
        import docker  # type: ignore[import-untyped]  # noqa: PLC0415 - only needed here

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure (no socket, no daemon, bad DOCKER_HOST) means "no"
        return False


@contextlib.contextmanager
def _docker_server(*, fsync: bool) -> Iterator[str]:
    try:
        from testcontainers.community.postgres import PostgresContainer  # noqa: PLC0415
    except ImportError:  # testcontainers < 4.14 kept it at the top level
        from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

    container = PostgresContainer(
        DOCKER_IMAGE,
        username=DB_USER,
        password=secrets.token_hex(16),
        dbname="postgres",
        driver=None,
    ).with_command(["postgres", "-c", f"fsync={_on_off(fsync)}", "-c", "max_connections=200"])
    with container as pg:
        yield pg.get_connection_url(driver=None)


# --- local binaries ----------------------------------------------------------------------


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: from PATH, else newest Debian-style."""
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        # Resolve symlinks such as /usr/local/bin/pg_ctl so both tools come from one install.
        candidates.append(Path(on_path).resolve().parent)
    versioned = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: _version_key(p.parent.name),
        reverse=True,
    )
    candidates.extend(versioned)
    for directory in candidates:
        if all(os.access(directory / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name)) or (-1,)


@contextlib.contextmanager
def local_cluster(*, fsync: bool = False) -> Iterator[LocalCluster]:
    """Initialise and start a private cluster in a temp dir; stop it and delete it on exit."""
    bindir = find_pg_bin()
    if bindir is None:
        raise PostgresStartError(
            "no PostgreSQL server available: set LEDGER_TEST_DATABASE_URL, start Docker, "
            "or install the PostgreSQL server binaries (initdb, pg_ctl)"
        )
    run_as = _unprivileged_user() if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="ledger-pg-", dir=_temp_parent(run_as, fsync=fsync)))
    started = False
    data = root / "data"
    try:
        password = secrets.token_hex(16)
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        if run_as is not None:
            os.chown(root, run_as.pw_uid, run_as.pw_gid)
            os.chown(pwfile, run_as.pw_uid, run_as.pw_gid)

        _run(
            run_as,
            root,
            [
                str(bindir / "initdb"),
                "-D", str(data),
                "-U", DB_USER,
                # md5, not scram-sha-256: a login costs half as much, and the
                # tests log in tens of thousands of times. Passwords are still
                # checked; the product leaves the method to libpq and the server.
                "-A", "md5",
                f"--pwfile={pwfile}",
                "-E", "UTF8",
                "--locale=C",
                # No fsync of the fresh data dir unless durability was asked for.
                *([] if fsync else ["--no-sync"]),
            ],
        )  # fmt: skip
        pwfile.unlink()
        _append_settings(data / "postgresql.conf", root, fsync=fsync)

        port = 0
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = _free_port()
            try:
                started = True  # even a failed start may leave a postmaster behind
                _start(run_as, bindir, root, port)
                break
            except PostgresStartError as exc:
                # Another process may grab the port between our probe and the bind: retry.
                if attempt == _START_ATTEMPTS or "could not bind" not in str(exc):
                    raise
        url = f"postgresql://{DB_USER}:{password}@127.0.0.1:{port}/postgres"
        _wait_until_ready(url, root)
        with psycopg.connect(url, autocommit=True) as conn:
            # initdb stored the password as SCRAM; stored again, it is md5.
            conn.execute(
                sql.SQL("ALTER USER {} PASSWORD {}").format(
                    sql.Identifier(DB_USER), sql.Literal(password)
                )
            )
        yield LocalCluster(url=url, root=root, port=port)
    finally:
        try:
            if started:
                _stop(run_as, bindir, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _append_settings(conf: Path, root: Path, *, fsync: bool) -> None:
    settings = {
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{root}'",
        "max_connections": "200",
        "fsync": _on_off(fsync),
        # Without fsync these only add waiting; keep the defaults when durability is wanted.
        "synchronous_commit": _on_off(fsync),
        "full_page_writes": _on_off(fsync),
        "logging_collector": "off",
        "password_encryption": "md5",
        # Thousands of short-lived databases: autovacuum would visit each one.
        "autovacuum": "off",
    }
    # Appending as root keeps the file's owner; later lines override initdb's defaults.
    with conf.open("a") as f:
        f.write("\n# tests/postgres_server.py\n")
        f.writelines(f"{key} = {value}\n" for key, value in settings.items())


def _start(run_as: pwd.struct_passwd | None, bindir: Path, root: Path, port: int) -> None:
    log = root / "server.log"
    try:
        _run(
            run_as,
            root,
            [
                str(bindir / "pg_ctl"),
                "-D", str(root / "data"),
                "-l", str(log),
                "-o", f"-p {port}",
                "-w", "-t", str(int(_START_TIMEOUT_S)),
                "start",
            ],
        )  # fmt: skip
    except PostgresStartError as exc:
        raise PostgresStartError(f"{exc}\n--- server log ---\n{_log_tail(log)}") from exc


def _wait_until_ready(url: str, root: Path) -> None:
    """Poll until a real login over TCP works; ``pg_ctl -w`` only checks the socket."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise PostgresStartError(
                    f"PostgreSQL did not accept connections within {_START_TIMEOUT_S:.0f} s: "
                    f"{exc}\n--- server log ---\n{_log_tail(root / 'server.log')}"
                ) from exc
            time.sleep(0.05)


def _stop(run_as: pwd.struct_passwd | None, bindir: Path, root: Path) -> None:
    data = str(root / "data")
    pg_ctl = str(bindir / "pg_ctl")
    if not (root / "data" / "postmaster.pid").exists():
        return
    try:
        _run(run_as, root, [pg_ctl, "-D", data, "-m", "fast", "-w", "-t", "30", "stop"])
    except PostgresStartError:
        # A fast shutdown that hangs must not leave a server behind.
        _run(run_as, root, [pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], check=False)


def _run(
    run_as: pwd.struct_passwd | None, cwd: Path, argv: list[str], *, check: bool = True
) -> None:
    """Run a PostgreSQL tool, as ``run_as`` if given; raise with its output on failure."""
    if run_as is not None:
        if shutil.which("runuser"):
            argv = ["runuser", "-u", run_as.pw_name, "--", *argv]
        else:
            argv = [
                "setpriv",
                f"--reuid={run_as.pw_uid}",
                f"--regid={run_as.pw_gid}",
                "--clear-groups",
                "--",
                *argv,
            ]
    # cwd: the tools fail if they cannot read the directory they are started in.
    proc = subprocess.run(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=_START_TIMEOUT_S + 30,
    )
    if check and proc.returncode != 0:
        raise PostgresStartError(
            f"{' '.join(argv)} exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        )


def _unprivileged_user() -> pwd.struct_passwd:
    """The account to run the cluster as when we are root: ``ledgertest``, else ``nobody``."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(OS_USER)
    if shutil.which("useradd"):
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OS_USER],
            capture_output=True,
            check=False,
        )
    # Look again either way: a concurrent session may have created it first.
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(OS_USER)
    return pwd.getpwnam("nobody")


def _temp_parent(run_as: pwd.struct_passwd | None, *, fsync: bool) -> str | None:
    """Where to make the temp dir: in RAM if there is room and durability was not
    asked for, else the default, unless ``run_as`` could not reach it."""
    if not fsync:
        # Without fsync a crash loses the cluster anyway; in RAM, the per-test
        # CREATE DATABASE (some 300 files) costs a tenth of what it costs on disk.
        ram = ram_temp_dir()
        if ram is not None:
            return ram
    default = Path(tempfile.gettempdir())
    if run_as is None:
        return None
    for directory in (default, *default.parents):
        if not directory.stat().st_mode & stat.S_IXOTH:
            return "/tmp"  # world-traversable; the temp dir itself stays private
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _log_tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(lines[-_LOG_TAIL_LINES:])


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


# --- command line ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.postgres_server",
        description="Start a PostgreSQL server, print its admin URL, run until SIGINT/SIGTERM.",
    )
    parser.add_argument("--fsync", action="store_true", help="keep fsync on (for benchmarks)")
    args = parser.parse_args(argv)

    stop_signals = {signal.SIGINT, signal.SIGTERM}
    started_at = time.monotonic()
    with postgres_server(fsync=args.fsync) as url:
        # Block only now, so that the server processes do not inherit a blocked mask.
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        try:
            print(
                f"PostgreSQL ready in {time.monotonic() - started_at:.1f} s; "
                "stop with Ctrl-C or SIGTERM",
                file=sys.stderr,
            )
            print(url, flush=True)
            signal.sigwait(stop_signals)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
