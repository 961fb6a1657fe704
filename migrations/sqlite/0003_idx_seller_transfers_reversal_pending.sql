-- 0003: partial composite index for the reversal worker's hot path.
-- The embedded twin of postgresql/0003 (read that file for the why: a sibling
-- of 0002 that keeps the NULL next_retry_at first-pass rows).

CREATE INDEX IF NOT EXISTS idx_seller_transfers_reversal_pending
    ON seller_transfers (status, next_retry_at)
    WHERE status = 'reversal_pending';
