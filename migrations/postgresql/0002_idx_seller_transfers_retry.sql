-- ledger:no-transaction
-- 0002: partial composite index for the payout retry worker's hot path
-- (the old system's migration 116).
--
-- The retry worker's select per tick is:
--   SELECT id FROM seller_transfers
--   WHERE status = 'failed' AND next_retry_at IS NOT NULL AND next_retry_at <= now()
--   ORDER BY next_retry_at LIMIT n;
--
-- Partial: only failed rows with a retry scheduled are ever due, and they are
-- a small slice of the table; indexing the rest would cost every write for
-- rows this query never reads. failed rows with NULL next_retry_at (no retry
-- scheduled) are left out on purpose.
--
-- CONCURRENTLY, outside a transaction: on a live table a plain CREATE INDEX
-- blocks writes for the whole build. If an earlier run was interrupted it may
-- have left an INVALID index behind; this file runs again only if it was not
-- recorded as applied, so drop-then-create repairs that case.

DROP INDEX CONCURRENTLY IF EXISTS idx_seller_transfers_retry;

CREATE INDEX CONCURRENTLY idx_seller_transfers_retry
    ON seller_transfers (status, next_retry_at)
    WHERE status = 'failed' AND next_retry_at IS NOT NULL;
