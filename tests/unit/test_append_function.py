"""PostgreSQL's ledger_append (migration 0017) takes each read row as a JSON
array of values by position: its INSERT's column list must be the order the
inline projection sends them in (ledger.views.COLUMNS)."""

from __future__ import annotations

import re

from ledger.migrate import available_migrations
from ledger.views import COLUMNS


def test_ledger_append_inserts_the_rows_columns_in_the_order_the_projection_sends_them() -> None:
    (migration,) = [m for m in available_migrations("postgresql") if m.version == 17]
    listed = re.search(r"INSERT INTO seller_transfers \(([^)]*)\)", migration.sql)
    assert listed is not None
    assert tuple(" ".join(listed[1].split()).split(", ")) == COLUMNS
    # One value per column, read from positions 0 .. len(COLUMNS) - 1.
    positions = sorted({int(p) for p in re.findall(r"r->>(\d+)", migration.sql)})
    assert positions == list(range(len(COLUMNS)))


def test_ledger_append_upserts_every_column_but_the_id_from_the_newer_row() -> None:
    (migration,) = [m for m in available_migrations("postgresql") if m.version == 17]
    assignments = re.findall(r"(\w+) = excluded\.(\w+)", migration.sql)
    assert all(column == source for column, source in assignments)
    assert tuple(column for column, _ in assignments) == COLUMNS[1:]
    # The version guard, as the other projections' upserts have it.
    assert "WHERE seller_transfers.version < excluded.version" in migration.sql
