-- ledger:no-transaction
-- 0003: partial composite index for the reversal worker's hot path
-- (the old system's migration 982).
--
-- The worker's select per tick is:
--   SELECT * FROM seller_transfers
--   WHERE status = 'reversal_pending'
--     AND (next_retry_at IS NULL OR next_retry_at <= NOW())
--   ORDER BY next_retry_at NULLS FIRST
--   LIMIT 20;
--
-- idx_seller_transfers_retry (0002) cannot serve this query because (a) its
-- partial WHERE clause excludes reversal_pending rows, and (b) it excludes rows
-- with next_retry_at NULL, which are exactly the freshly requested reversals
-- the worker should pick up on its first pass. This sibling index is scoped to
-- reversal_pending and keeps the NULLs, so first-pass rows land in it.
--
-- Why not widen 0002's index instead: widening a partial index means dropping
-- and recreating it, and the retry worker would lose its index meanwhile. Two
-- parallel partial indexes are the cheaper DDL and keep both queries
-- planner-friendly.
--
-- CONCURRENTLY, outside a transaction, for the same reason as 0002; drop-then-
-- create repairs an INVALID index left by an interrupted run.

DROP INDEX CONCURRENTLY IF EXISTS idx_seller_transfers_reversal_pending;

CREATE INDEX CONCURRENTLY idx_seller_transfers_reversal_pending
    ON seller_transfers (status, next_retry_at)
    WHERE status = 'reversal_pending';
