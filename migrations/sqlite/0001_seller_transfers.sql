-- 0001: the seller_transfers read table and the projection's tracking position.
--
-- The embedded twin of postgresql/0001 (read that file for the why). SQLite
-- differences: ids are TEXT (canonical UUID strings) and times are TEXT in
-- fixed-width UTC ISO 8601 ('2026-01-31T12:00:00.000000+00:00'), so that
-- comparing them as strings compares them as times.

CREATE TABLE IF NOT EXISTS seller_transfers (
    id TEXT PRIMARY KEY,
    seller_account_id TEXT NOT NULL,
    order_ref TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL CHECK (length(currency) = 3),
    status TEXT NOT NULL CHECK (status IN ('pending', 'completed', 'failed',
        'reversal_pending', 'reversed', 'permanently_failed')),
    retry_count INTEGER NOT NULL DEFAULT 0,
    next_retry_at TEXT,
    stripe_transfer_id TEXT,
    amount_reversed INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    reversal_request_ref TEXT,
    reversal_amount INTEGER,
    version INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_seller_transfers_order_ref ON seller_transfers (order_ref);

CREATE TABLE IF NOT EXISTS projection_tracking (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);

INSERT INTO projection_tracking (name, position) VALUES ('seller_transfers', 0)
    ON CONFLICT (name) DO NOTHING;
