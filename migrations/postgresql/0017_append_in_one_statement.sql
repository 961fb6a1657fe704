-- 0017: an append is one statement: ledger_append(appended jsonb).
--
-- Until now the recorder sent an append as about nine statements (the order
-- reservations, the lock, the NOTIFY, the events, the chain links, the
-- tracking position, the read rows), each adapted and sent by Python. On the
-- API's hot path that Python work, not the database, was most of a call's
-- time, and with eight threads it queued on the GIL. This function does the
-- same work, in the same order and in the caller's transaction, from one JSON
-- document the recorder builds (jsonb: parsed once, where json would be parsed
-- again by every operator on it, and an import's document is megabytes):
--
--   events     [[originator id, version, topic, state as hex], ...], in order
--   orders     [[order ref, transfer id], ...]: transfer_orders reservations
--              of the transfers whose first event this is (an order reserved
--              already fails the whole append: one order, one transfer)
--   link       true: link every event into the chain (ledger_link_appended)
--   rows       the seller_transfers rows these events lead to, one array per
--              transfer, its values in the order of the INSERT's column list
--              below (ledger.views.COLUMNS, which a test holds equal); absent
--              for bare events, which the asynchronous projection writes
--   tracking   the projection's tracking name, whose position moves to the
--              append's last event when nothing before it is unprojected
--   lock_timeout  how long to wait for the events table's lock
--
-- The tracking row is taken before the rows, as the asynchronous projection
-- and a rebuild's switch take it (the reverse order could deadlock). Returns
-- the events' positions, in order. Called outside an explicit transaction,
-- the statement is the transaction: the lock is taken and released without a
-- round trip to the caller in between.

CREATE OR REPLACE FUNCTION ledger_append(appended jsonb) RETURNS bigint[]
    LANGUAGE plpgsql AS $$
DECLARE
    positions bigint[];
    newest bigint;
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
        PERFORM ledger_link_appended(cardinality(positions));
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
