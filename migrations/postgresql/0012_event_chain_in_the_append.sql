-- 0012: every event is linked into the chain in the same transaction as it
-- is appended, and the chain counts its links.
--
-- Until now links were sealed after the fact, by a daemon's turn or `ledger
-- audit head`. With no daemon running, an event edited, deleted, inserted or
-- reordered by someone past 0006's triggers passed `audit verify` as "not
-- sealed yet", and the next seal wrote the forged history into the chain for
-- good. From this migration on, the append itself links its events (this
-- function, called inside the append's transaction, under the events table's
-- EXCLUSIVE lock, so links are made in commit order), and an event without a
-- link is a finding of `audit verify`, not a pending seal. `ledger migrate`
-- links every event an existing database has not linked yet, right after
-- these files run.
--
-- seq is the link's number in the chain, 1, 2, 3...: a link deleted from the
-- middle, or a chain cut short, leaves a gap or an end that the chain shows on
-- its own, and `audit verify` names the positions around it. Existing links
-- are numbered in position order; the append-only trigger is set aside for
-- that one UPDATE, in this transaction.
--
-- ledger_link_appended(n): links the n events the current transaction has
-- just appended. The append's INSERT takes n consecutive values of the
-- events' sequence (no one else draws from it under the EXCLUSIVE lock), so
-- they are currval - n + 1 .. currval. The link is chain.link() of
-- ledger/audit/chain.py, byte for byte: sha256(previous link || position ||
-- transfer id || version || length-prefixed topic || length-prefixed state).
-- Events appended by anything else are not linked here, ever: they stay
-- findings.

ALTER TABLE event_chain ADD COLUMN IF NOT EXISTS seq bigint;

ALTER TABLE event_chain DISABLE TRIGGER event_chain_append_only;

UPDATE event_chain c SET seq = numbered.seq
    FROM (SELECT position, row_number() OVER (ORDER BY position) AS seq FROM event_chain) numbered
    WHERE numbered.position = c.position AND c.seq IS NULL;

ALTER TABLE event_chain ENABLE TRIGGER event_chain_append_only;

ALTER TABLE event_chain ALTER COLUMN seq SET NOT NULL;

ALTER TABLE event_chain DROP CONSTRAINT IF EXISTS event_chain_seq_key;

ALTER TABLE event_chain ADD CONSTRAINT event_chain_seq_key UNIQUE (seq);

CREATE OR REPLACE FUNCTION ledger_link_appended(appended integer) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    newest bigint := currval(pg_get_serial_sequence('transfers_events', 'notification_id'));
    previous bytea;
    counted bigint;
    appended_event record;
BEGIN
    SELECT link, seq INTO previous, counted FROM event_chain ORDER BY seq DESC LIMIT 1;
    previous := coalesce(previous, decode(repeat('00', 32), 'hex'));
    counted := coalesce(counted, 0);
    FOR appended_event IN
        SELECT notification_id, originator_id, originator_version, topic, state
        FROM transfers_events
        WHERE notification_id > newest - appended AND notification_id <= newest
        ORDER BY notification_id
    LOOP
        previous := sha256(
            previous
            || int8send(appended_event.notification_id)
            || uuid_send(appended_event.originator_id)
            || int8send(appended_event.originator_version)
            || int4send(octet_length(convert_to(appended_event.topic, 'UTF8')))
            || convert_to(appended_event.topic, 'UTF8')
            || int8send(octet_length(appended_event.state)::bigint)
            || appended_event.state
        );
        counted := counted + 1;
        INSERT INTO event_chain (position, transfer_id, version, link, seq)
            VALUES (appended_event.notification_id, appended_event.originator_id,
                    appended_event.originator_version, previous, counted);
    END LOOP;
END
$$;
