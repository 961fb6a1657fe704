-- 0004: partial index for the payout process manager's first attempts.
-- The embedded twin of postgresql/0004 (read that file for the why).

CREATE INDEX IF NOT EXISTS idx_seller_transfers_pending
    ON seller_transfers (created_at)
    WHERE status = 'pending';
