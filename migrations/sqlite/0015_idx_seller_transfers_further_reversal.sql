-- 0015: a sibling partial index for further refunds of a reversed transfer.
-- The embedded twin of postgresql/0015 (read that file for the why: a second
-- refund of a partially reversed transfer stays `reversed`, and next_retry_at
-- set marks it due).

CREATE INDEX IF NOT EXISTS idx_seller_transfers_further_reversal
    ON seller_transfers (next_retry_at)
    WHERE status = 'reversed' AND next_retry_at IS NOT NULL;
