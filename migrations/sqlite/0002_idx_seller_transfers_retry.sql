-- 0002: partial composite index for the payout retry worker's hot path.
-- The embedded twin of postgresql/0002 (read that file for the why). SQLite
-- has no CONCURRENTLY: its writers are serialised anyway.

CREATE INDEX IF NOT EXISTS idx_seller_transfers_retry
    ON seller_transfers (status, next_retry_at)
    WHERE status = 'failed' AND next_retry_at IS NOT NULL;
