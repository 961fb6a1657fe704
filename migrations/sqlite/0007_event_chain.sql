-- 0007: the tamper-evidence chain over the event log.
-- The embedded twin of postgresql/0007 (read that file for the why). Ids are
-- TEXT (canonical UUID strings), links BLOBs.

CREATE TABLE IF NOT EXISTS event_chain (
    position INTEGER PRIMARY KEY,
    transfer_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    link BLOB NOT NULL
);

CREATE TRIGGER IF NOT EXISTS event_chain_no_update BEFORE UPDATE ON event_chain
BEGIN SELECT RAISE(ABORT, 'ledger: UPDATE on event_chain refused: the event log is append-only (migration 0007)'); END;

CREATE TRIGGER IF NOT EXISTS event_chain_no_delete BEFORE DELETE ON event_chain
BEGIN SELECT RAISE(ABORT, 'ledger: DELETE on event_chain refused: the event log is append-only (migration 0007)'); END;
