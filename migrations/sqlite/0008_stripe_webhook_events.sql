-- 0008: the Stripe webhook deliveries the ledger has received.
-- The embedded twin of postgresql/0008 (read that file for the why). Times are
-- fixed-width UTC ISO text as in 0001.

CREATE TABLE IF NOT EXISTS stripe_webhook_events (
    stripe_event_id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    stripe_transfer_id TEXT NULL,
    transfer_id TEXT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('recorded', 'already_known', 'ignored',
        'refused', 'unknown_transfer')),
    detail TEXT NULL,
    received_at TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_stripe_webhook_events_attention
    ON stripe_webhook_events (received_at)
    WHERE outcome IN ('refused', 'unknown_transfer');
