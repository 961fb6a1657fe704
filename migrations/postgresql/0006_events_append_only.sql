-- 0006: the event log is append-only, and the database enforces it.
--
-- Every status change of every transfer is an event in transfers_events (the
-- eventsourcing library's table, created by `ledger migrate` before these
-- files run). The ledger only ever INSERTs there. An UPDATE, DELETE or
-- TRUNCATE can only come from someone editing history by hand, so the
-- database refuses them with an error that names this rule, whoever asks
-- (short of disabling the triggers, which needs the table's owner and which
-- `ledger audit verify`'s hash chain is there to catch).
--
-- Row triggers for UPDATE and DELETE; TRUNCATE has only statement triggers.

CREATE OR REPLACE FUNCTION ledger_refuse_event_change() RETURNS trigger
    LANGUAGE plpgsql AS $$ BEGIN
    RAISE EXCEPTION 'ledger: % on % refused: the event log is append-only (migration 0006)', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation'; END $$;

DROP TRIGGER IF EXISTS transfers_events_append_only ON transfers_events;

CREATE TRIGGER transfers_events_append_only
    BEFORE UPDATE OR DELETE ON transfers_events
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_event_change();

DROP TRIGGER IF EXISTS transfers_events_no_truncate ON transfers_events;

CREATE TRIGGER transfers_events_no_truncate
    BEFORE TRUNCATE ON transfers_events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_event_change();
