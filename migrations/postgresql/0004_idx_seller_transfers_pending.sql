-- ledger:no-transaction
-- 0004: partial index for the payout process manager's first attempts.
--
-- The payout worker's select per tick is:
--   SELECT id FROM seller_transfers
--   WHERE status = 'pending' AND created_at <= now()
--   ORDER BY created_at LIMIT n;
--
-- A pending transfer is due as soon as it exists (nothing schedules a first
-- payout), so the worker takes the oldest first; `created_at <= now()` only
-- gives it the same shape (a time, a limit) as the other two due queries. pending rows are a thin, short-lived slice of
-- the table (a transfer leaves pending on its first Stripe answer), so a
-- partial index on created_at keeps the tick cheap however many settled rows
-- pile up, and costs nothing for writes to rows in any other status.
--
-- Why not reuse idx_seller_transfers_retry (0002): it only holds failed rows
-- with a retry scheduled. Why not one index for all due work: the three due
-- queries order by different columns (created_at here, next_retry_at there).
--
-- CONCURRENTLY, outside a transaction, for the same reason as 0002.

DROP INDEX CONCURRENTLY IF EXISTS idx_seller_transfers_pending;

CREATE INDEX CONCURRENTLY idx_seller_transfers_pending
    ON seller_transfers (created_at)
    WHERE status = 'pending';
