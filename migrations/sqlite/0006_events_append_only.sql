-- 0006: the event log is append-only, and the database enforces it.
-- The embedded twin of postgresql/0006 (read that file for the why). SQLite
-- has no TRUNCATE (DELETE without WHERE is refused by the DELETE trigger).

CREATE TRIGGER IF NOT EXISTS stored_events_no_update BEFORE UPDATE ON stored_events
BEGIN SELECT RAISE(ABORT, 'ledger: UPDATE on stored_events refused: the event log is append-only (migration 0006)'); END;

CREATE TRIGGER IF NOT EXISTS stored_events_no_delete BEFORE DELETE ON stored_events
BEGIN SELECT RAISE(ABORT, 'ledger: DELETE on stored_events refused: the event log is append-only (migration 0006)'); END;
