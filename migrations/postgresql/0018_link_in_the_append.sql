-- 0018: ledger_append links its events itself.
--
-- Migration 0017's ledger_append called 0012's ledger_link_appended for the
-- chain links, which found the positions again (pg_get_serial_sequence and
-- currval, a catalog look-up), read the events back from the table it had
-- just written them to, and cost a function call of its own: about 0.02 ms of
-- a one-event append's 0.47 ms (pgbench, one caller, fsync on, the median of
-- eight alternating runs: 0.474 and 0.479 ms before, 0.454 and 0.457 ms
-- after). The links are the same bytes, made from the same values: the
-- document's, which the INSERT just stored, and the positions it returned,
-- in the events' order. Everything else is 0017's, unchanged; read 0017's
-- header for the document and the order of the locks.

CREATE OR REPLACE FUNCTION ledger_append(appended jsonb) RETURNS bigint[]
    LANGUAGE plpgsql AS $$
DECLARE
    positions bigint[];
    newest bigint;
    previous bytea;
    counted bigint;
    linked_events jsonb := appended->'events';  -- once: an import's is megabytes
    linked_event jsonb;
    linked_state bytea;
    linked_topic bytea;
BEGIN
    IF appended->'orders' IS NOT NULL THEN
        INSERT INTO transfer_orders (order_ref, transfer_id)
            SELECT o->>0, (o->>1)::uuid FROM jsonb_array_elements(appended->'orders') o;
    END IF;
    PERFORM set_config('lock_timeout', appended->>'lock_timeout', true);
    LOCK TABLE transfers_events IN EXCLUSIVE MODE;
    PERFORM pg_notify('transfers_events', '');
    WITH inserted AS (
        INSERT INTO transfers_events (originator_id, originator_version, topic, state)
            SELECT (e->>0)::uuid, (e->>1)::bigint, e->>2, decode(e->>3, 'hex')
            FROM jsonb_array_elements(appended->'events') WITH ORDINALITY AS x(e, n)
            ORDER BY n
            RETURNING notification_id
    )
    SELECT array_agg(notification_id ORDER BY notification_id) INTO positions FROM inserted;
    newest := positions[cardinality(positions)];
    IF (appended->>'link')::boolean THEN
        -- Each link as migration 0012's ledger_link_appended made it (and as
        -- ledger.audit.chain.link recomputes it), from the values just
        -- inserted: the document's, with their positions.
        SELECT link, seq INTO previous, counted FROM event_chain ORDER BY seq DESC LIMIT 1;
        previous := coalesce(previous, decode(repeat('00', 32), 'hex'));
        counted := coalesce(counted, 0);
        FOR i IN 1 .. cardinality(positions) LOOP
            linked_event := linked_events->(i - 1);
            linked_state := decode(linked_event->>3, 'hex');
            linked_topic := convert_to(linked_event->>2, 'UTF8');
            previous := sha256(
                previous
                || int8send(positions[i])
                || uuid_send((linked_event->>0)::uuid)
                || int8send((linked_event->>1)::bigint)
                || int4send(octet_length(linked_topic))
                || linked_topic
                || int8send(octet_length(linked_state)::bigint)
                || linked_state
            );
            counted := counted + 1;
            INSERT INTO event_chain (position, transfer_id, version, link, seq)
                VALUES (positions[i], (linked_event->>0)::uuid, (linked_event->>1)::bigint,
                        previous, counted);
        END LOOP;
    END IF;
    IF appended->'rows' IS NOT NULL THEN
        UPDATE projection_tracking SET position = CASE
            WHEN position >= coalesce((SELECT max(e.notification_id) FROM transfers_events e
                                       WHERE e.notification_id < positions[1]), 0)
            THEN newest ELSE position END
            WHERE name = appended->>'tracking';
        INSERT INTO seller_transfers (id, status, seller_account_id, order_ref, amount, currency,
                retry_count, next_retry_at, stripe_transfer_id, amount_reversed, last_error,
                reversal_request_ref, reversal_amount, version, created_at, updated_at)
            SELECT (r->>0)::uuid, r->>1, r->>2, r->>3, (r->>4)::bigint, r->>5,
                (r->>6)::integer, (r->>7)::timestamptz, r->>8, (r->>9)::bigint, r->>10,
                r->>11, (r->>12)::bigint, (r->>13)::integer, (r->>14)::timestamptz,
                (r->>15)::timestamptz
            FROM jsonb_array_elements(appended->'rows') r
            ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                seller_account_id = excluded.seller_account_id,
                order_ref = excluded.order_ref, amount = excluded.amount,
                currency = excluded.currency, retry_count = excluded.retry_count,
                next_retry_at = excluded.next_retry_at,
                stripe_transfer_id = excluded.stripe_transfer_id,
                amount_reversed = excluded.amount_reversed, last_error = excluded.last_error,
                reversal_request_ref = excluded.reversal_request_ref,
                reversal_amount = excluded.reversal_amount, version = excluded.version,
                created_at = excluded.created_at, updated_at = excluded.updated_at
            -- The version guard: never replace a row with an older picture of it.
            WHERE seller_transfers.version < excluded.version;
    END IF;
    RETURN positions;
END
$$;

DROP FUNCTION IF EXISTS ledger_link_appended(integer);
