"""Cursors over both databases with one face: `?` placeholders, rows as dicts.

SQL in the ledger is written once with `?` placeholders and rewritten to `%s`
for psycopg; a statement is (SQL, parameters)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

Row = dict[str, Any]
# A statement (with `?` placeholders) and its parameters.
Statement = tuple[str, Sequence[Any]]
# Stay under old SQLite builds' limit of 999 bound parameters per statement.
SQLITE_MAX_PARAMS = 900


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def fetchone(self) -> Row | None: ...
    def fetchall(self) -> list[Row]: ...


class _SQLiteCursor:
    """A Cursor over sqlite3: `?` placeholders, rows as dicts."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def _sql(self, sql: str) -> str:
        return sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cursor.execute(self._sql(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cursor.executemany(self._sql(sql), rows)

    def fetchone(self) -> Row | None:
        row = self._cursor.fetchone()
        return None if row is None else dict(row)

    def fetchall(self) -> list[Row]:
        return [dict(row) for row in self._cursor.fetchall()]


class _PostgresCursor(_SQLiteCursor):
    """The same over psycopg, whose placeholders are `%s`."""

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        # None, not (): psycopg then leaves a literal % in the SQL alone.
        self._cursor.execute(self._sql(sql), params or None)

    def copy_rows(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)
