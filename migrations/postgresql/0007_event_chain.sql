-- 0007: the tamper-evidence chain over the event log.
--
-- One link per event, in log order (position = the event's notification id):
--   link = sha256(previous link || position || transfer id || version || topic || state)
-- with 32 zero bytes before the first. `ledger audit verify` recomputes every
-- link from the events, so an event edited, deleted, inserted or reordered by
-- someone who got past 0006's triggers breaks the chain at that position.
-- `ledger audit head` prints the newest link, for an operator to keep outside
-- the database: a chain rewritten wholesale no longer contains it.
--
-- Links are sealed right after events are projected (every command and the
-- daemon do it), not in the append itself, so appends pay nothing for them;
-- `audit verify` tells sealed events from those not sealed yet. transfer_id
-- and version are kept so that a finding can name the event a link was made
-- for, even after that event has been deleted.
--
-- The chain is append-only too, by the same function as the events (0006).

CREATE TABLE IF NOT EXISTS event_chain (
    position bigint PRIMARY KEY,
    transfer_id uuid NOT NULL,
    version bigint NOT NULL,
    link bytea NOT NULL
);

DROP TRIGGER IF EXISTS event_chain_append_only ON event_chain;

CREATE TRIGGER event_chain_append_only
    BEFORE UPDATE OR DELETE ON event_chain
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_event_change();

DROP TRIGGER IF EXISTS event_chain_no_truncate ON event_chain;

CREATE TRIGGER event_chain_no_truncate
    BEFORE TRUNCATE ON event_chain
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_event_change();
