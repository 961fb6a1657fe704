-- 0001: the seller_transfers read table and the projection's tracking position.
--
-- seller_transfers is a projection of the event log, never written by hand:
-- every row is the state of one Transfer aggregate at `version`. The
-- projection upserts a row only over an older version, so replays cannot move
-- a row backwards.
--
-- next_retry_at: for reversal_pending, NULL = due now (first pass of the
-- reversal worker); for failed, NULL = no retry scheduled.
--
-- projection_tracking holds one position (the last notification id applied)
-- per consumer, written in the same transaction as the rows it covers: that is
-- what makes the projection exactly-once. Why not the eventsourcing library's
-- tracking tables: those are keyed by the upstream application's name, and two
-- consumers of one application in one database (this projection, a rebuild,
-- later the process managers) need positions of their own.
--
-- The table is new here, so its indexes can be created in this transaction;
-- the partial indexes the workers query come in 0002 and 0003, built
-- CONCURRENTLY as they would be on a live table.

CREATE TABLE IF NOT EXISTS seller_transfers (
    id uuid PRIMARY KEY,
    seller_account_id text NOT NULL,
    order_ref text NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    currency text NOT NULL CHECK (length(currency) = 3),
    status text NOT NULL CHECK (status IN ('pending', 'completed', 'failed',
        'reversal_pending', 'reversed', 'permanently_failed')),
    retry_count integer NOT NULL DEFAULT 0,
    next_retry_at timestamptz,
    stripe_transfer_id text,
    amount_reversed bigint NOT NULL DEFAULT 0,
    last_error text,
    reversal_request_ref text,
    reversal_amount bigint,
    version integer NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

-- `transfer create` looks an order up here before creating a second transfer
-- for an order that was imported under another id.
CREATE INDEX IF NOT EXISTS idx_seller_transfers_order_ref ON seller_transfers (order_ref);

CREATE TABLE IF NOT EXISTS projection_tracking (
    name text PRIMARY KEY,
    position bigint NOT NULL
);

INSERT INTO projection_tracking (name, position) VALUES ('seller_transfers', 0)
    ON CONFLICT (name) DO NOTHING;
