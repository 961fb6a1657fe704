"""Shared fixtures: databases on SQLite and PostgreSQL, fresh or already migrated.

Two kinds of database, each on both backends (``database_url`` and ``migrated_url``
run a test once per backend, the others name theirs):

- fresh, NOT migrated: ``database_url``, ``sqlite_url``, ``postgres_url``. For the tests
  of migrating itself and of commands refused on a database nobody migrated.
- migrated: ``migrated_url``, ``migrated_sqlite_url``, ``migrated_postgres_url`` and the
  module-wide ``module_migrated_url``. Each is a copy of a template that
  ``ledger.bootstrap.migrate_database`` migrated once per test session, so it always
  holds the current migrations, and a test pays for a file copy or a ``CREATE DATABASE
  ... TEMPLATE`` instead of a whole migration.

SQLite files and the local PostgreSQL cluster live in RAM when the machine has room
(tests.ramdisk): on a disk, creating and syncing files is most of what they cost.

PostgreSQL tests are never skipped for want of a server: ``postgres_server()`` starts one
(container or local binaries) and fails loudly if it cannot, because CI must run them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from ledger.bootstrap import migrate_database
from tests.postgres_server import (
    ENV_URL,
    create_database,
    drop_database,
    postgres_server,
    scratch_database,
    seal_template,
    unique_database_name,
)
from tests.ramdisk import ram_temp_dir

# Fixtures that need a PostgreSQL server; tests using them get the `postgres` marker.
_POSTGRES_FIXTURES = frozenset(
    {"postgres_admin_url", "postgres_url", "postgres_template", "migrated_postgres_url"}
)
# Once per backend; the postgres run carries the marker, so `-m "not postgres"` skips it.
_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


_SHARED_SERVER = pytest.StashKey[contextlib.ExitStack]()


def pytest_configure(config: pytest.Config) -> None:
    # A run stopped with SIGTERM (a CI timeout, `timeout 60 pytest`) would die
    # without tearing down the session's fixtures and leave its throwaway
    # PostgreSQL cluster running. As an interrupt, it unwinds like Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # Under pytest-xdist the controller starts one PostgreSQL server for all its
    # workers (they inherit its URL as if given), rather than each starting
    # its own; every test's database has a unique name on it.
    xdist_controller = not hasattr(config, "workerinput") and bool(
        config.getoption("numprocesses", default=None)
    )
    if xdist_controller and not os.environ.get(ENV_URL):
        stack = contextlib.ExitStack()
        os.environ[ENV_URL] = stack.enter_context(postgres_server())
        stack.callback(os.environ.pop, ENV_URL, None)
        config.stash[_SHARED_SERVER] = stack


def pytest_unconfigure(config: pytest.Config) -> None:
    stack = config.stash.get(_SHARED_SERVER, None)
    if stack is not None:
        stack.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Mark by fixture use too, so `-m "not postgres"` holds even if a test forgets the mark.
    for item in items:
        if _POSTGRES_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


# ----- PostgreSQL ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """Admin URL of the session's PostgreSQL server (may CREATE DATABASE)."""
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_template(postgres_admin_url: str) -> Iterator[str]:
    """Name of the session's migrated PostgreSQL template database.

    Built by the product's own `migrate_database`, whose pool is closed when it
    returns; then sealed, because PostgreSQL copies only a database nobody is
    connected to. The name is unique: the server may be shared (a given URL).
    """
    name = unique_database_name("ledger_template")
    url = create_database(postgres_admin_url, name)
    try:
        migrate_database(url)
        seal_template(postgres_admin_url, name)
        yield name
    finally:
        drop_database(postgres_admin_url, name)


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """URL of a fresh, empty database for this test only; dropped afterwards."""
    with scratch_database(postgres_admin_url) as url:
        yield url


@pytest.fixture
def migrated_postgres_url(postgres_admin_url: str, postgres_template: str) -> Iterator[str]:
    """URL of a migrated database for this test only (a copy of the template)."""
    with scratch_database(postgres_admin_url, template=postgres_template) as url:
        yield url


# ----- SQLite ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the session's SQLite files go: in RAM when there is room (see
    tests.ramdisk; SQLite syncs on commit, and on a disk that is much of a
    test's time), else in the session's temporary directory."""
    ram = ram_temp_dir()
    if ram is None:
        yield tmp_path_factory.mktemp("databases")
        return
    root = Path(tempfile.mkdtemp(prefix="ledger-tests-", dir=ram))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def _sqlite_dir(root: Path, prefix: str) -> Iterator[Path]:
    # Removed afterwards: in RAM, thousands of tests' files would add up.
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sqlite_dir(sqlite_root: Path) -> Iterator[Path]:
    """This test's own directory for SQLite files (absolute), removed after it."""
    with _sqlite_dir(sqlite_root, "test-") as path:
        yield path


@pytest.fixture(scope="session")
def sqlite_template(sqlite_root: Path) -> Path:
    """The session's migrated SQLite file, built by the product's `migrate_database`.

    Copying the one file is only a complete copy if nothing of the database is
    left in a `-wal` file beside it: the WAL is checkpointed into the file and
    truncated. The file stays in WAL mode (the mode is kept in the file itself),
    so each copy starts as the product leaves a database it migrated.
    """
    path = sqlite_root / "template" / "ledger.db"
    path.parent.mkdir()
    migrate_database(f"sqlite:///{path}")
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0, "a connection to the SQLite template is still open"
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0, f"{wal} still holds pages"
    return path


@pytest.fixture
def sqlite_url(sqlite_dir: Path) -> str:
    """URL of a not-yet-existing SQLite file; the path is absolute, hence four slashes."""
    return f"sqlite:///{sqlite_dir / 'ledger.db'}"


@pytest.fixture
def migrated_sqlite_url(sqlite_dir: Path, sqlite_template: Path) -> str:
    """URL of a migrated SQLite file for this test only (a copy of the template)."""
    # Not ledger.db: a test may also take the fresh `sqlite_url`.
    path = sqlite_dir / "migrated.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


# ----- both backends -------------------------------------------------------------------


@pytest.fixture(params=_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend, `sqlite` or `postgres`. `database_url`, `migrated_url` and
    `other_database_url` follow this one, so a test that takes several of them gets
    them all on one backend (and runs once per backend, not once per combination)."""
    name: str = request.param
    return name


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str:
    """A fresh, NOT migrated database, once per backend, so storage tests run on both."""
    # getfixturevalue keeps the sqlite run from starting a PostgreSQL server.
    url: str = request.getfixturevalue(f"{backend}_url")
    return url


@pytest.fixture
def migrated_url(backend: str, request: pytest.FixtureRequest) -> str:
    """A migrated database (a copy of the session's template), once per backend."""
    url: str = request.getfixturevalue(f"migrated_{backend}_url")
    return url


@pytest.fixture(scope="module", params=_BACKENDS)
def module_migrated_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """One migrated database per backend shared by a whole test module, for
    modules whose tests build on one expensive world (a paid-out ledger)."""
    # Parametrised itself: a module-wide fixture cannot follow the per-test `backend`.
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        with _sqlite_dir(request.getfixturevalue("sqlite_root"), "module-") as directory:
            shutil.copyfile(template, directory / "ledger.db")
            yield f"sqlite:///{directory / 'ledger.db'}"
        return
    admin_url: str = request.getfixturevalue("postgres_admin_url")
    with scratch_database(admin_url, template=request.getfixturevalue("postgres_template")) as url:
        yield url


@pytest.fixture
def other_database_url(backend: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A second fresh, NOT migrated database on the same backend as the test's others."""
    if backend == "sqlite":
        sqlite_dir: Path = request.getfixturevalue("sqlite_dir")
        yield f"sqlite:///{sqlite_dir / 'other.db'}"
        return
    with scratch_database(request.getfixturevalue("postgres_admin_url")) as url:
        yield url
