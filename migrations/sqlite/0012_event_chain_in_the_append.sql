-- 0012: every event is linked into the chain in the same transaction as it
-- is appended, and the chain counts its links.
-- The embedded twin of postgresql/0012 (read that file for the why). SQLite
-- has no sha256(): the SQLite recorder computes each link in Python, inside
-- the append's transaction, which SQLite's single write lock serialises.
-- SQLite cannot add a NOT NULL column to a table with rows, so the chain is
-- copied into a table of the new shape, numbered in position order.

DROP TRIGGER IF EXISTS event_chain_no_update;

DROP TRIGGER IF EXISTS event_chain_no_delete;

CREATE TABLE event_chain_counted (
    position INTEGER PRIMARY KEY,
    transfer_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    link BLOB NOT NULL,
    seq INTEGER NOT NULL UNIQUE
);

INSERT INTO event_chain_counted (position, transfer_id, version, link, seq)
    SELECT position, transfer_id, version, link, row_number() OVER (ORDER BY position)
    FROM event_chain;

DROP TABLE event_chain;

ALTER TABLE event_chain_counted RENAME TO event_chain;

CREATE TRIGGER IF NOT EXISTS event_chain_no_update BEFORE UPDATE ON event_chain
BEGIN SELECT RAISE(ABORT, 'ledger: UPDATE on event_chain refused: the event log is append-only (migration 0007)'); END;

CREATE TRIGGER IF NOT EXISTS event_chain_no_delete BEFORE DELETE ON event_chain
BEGIN SELECT RAISE(ABORT, 'ledger: DELETE on event_chain refused: the event log is append-only (migration 0007)'); END;
