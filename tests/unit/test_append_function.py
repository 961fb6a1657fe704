"""PostgreSQL's ledger_append (migration 0017, and 0018 and 0019 after it) takes each read
row as a JSON array of values by position: its INSERT's column list must be the order the
inline projection sends them in (ledger.views.COLUMNS), and the values sent
must be the projection's row of the transfer."""

from __future__ import annotations

import re
from uuid import UUID

import pytest

from ledger.matrix import STATUSES
from ledger.migrate import Migration, available_migrations
from ledger.projections.rows import ProjectionError, check_storable, json_row_of, row_of
from ledger.views import COLUMNS, TIME_COLUMNS
from tests.unit.builders import a_new_transfer, a_transfer_in


def _newest_ledger_append() -> Migration:
    """The migration that last defines ledger_append: the one a database runs."""
    return [m for m in available_migrations("postgresql") if "FUNCTION ledger_append(" in m.sql][-1]


def test_ledger_append_inserts_the_rows_columns_in_the_order_the_projection_sends_them() -> None:
    migration = _newest_ledger_append()
    listed = re.search(r"INSERT INTO seller_transfers \(([^)]*)\)", migration.sql)
    assert listed is not None
    assert tuple(" ".join(listed[1].split()).split(", ")) == COLUMNS
    # One value per column, read from positions 0 .. len(COLUMNS) - 1.
    positions = sorted({int(p) for p in re.findall(r"r->>(\d+)", migration.sql)})
    assert positions == list(range(len(COLUMNS)))


def test_ledger_append_upserts_every_column_but_the_id_from_the_newer_row() -> None:
    migration = _newest_ledger_append()
    assignments = re.findall(r"(\w+) = excluded\.(\w+)", migration.sql)
    assert all(column == source for column, source in assignments)
    assert tuple(column for column, _ in assignments) == COLUMNS[1:]
    # The version guard, as the other projections' upserts have it.
    assert "WHERE seller_transfers.version < excluded.version" in migration.sql


@pytest.mark.parametrize("status", STATUSES)
def test_the_row_ledger_append_is_sent_is_the_projection_s_row_of_the_transfer(
    status: str,
) -> None:
    """`json_row_of` reads the row's values from the aggregate in one pass;
    it must give what `row_of` gives, in COLUMNS order, as JSON takes it."""
    transfer = a_transfer_in(status)
    row = row_of(transfer)
    expected = [getattr(row, column) for column in COLUMNS]
    expected[0] = row.id.hex
    for index, column in enumerate(COLUMNS):
        if column in TIME_COLUMNS and expected[index] is not None:
            expected[index] = expected[index].isoformat()
    assert json_row_of(transfer) == expected
    assert UUID(json_row_of(transfer)[0]) == transfer.id


def test_a_row_that_cannot_be_stored_is_refused_as_check_storable_refuses_it() -> None:
    transfer = a_new_transfer()
    # Written past the validators (an older version's event, say).
    object.__setattr__(transfer, "order_ref", "order\x00with a NUL")
    with pytest.raises(ProjectionError) as by_check:
        check_storable(row_of(transfer))
    with pytest.raises(ProjectionError) as by_json:
        json_row_of(transfer)
    assert str(by_json.value) == str(by_check.value)
