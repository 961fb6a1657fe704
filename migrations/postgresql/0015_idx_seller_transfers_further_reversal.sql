-- ledger:no-transaction
-- 0015: a sibling partial index for further refunds of a reversed transfer.
--
-- Marketplaces refund orders item by item, and Stripe accepts reversals until
-- a transfer is fully reversed. The seed's matrix has `reversed` as the end of
-- the road (its only exits are to itself), so a second refund of a partially
-- reversed transfer is a same-status step: ReversalRequested reversed ->
-- reversed, with its own request_ref and its own Stripe reversal. What makes
-- such a transfer due is next_retry_at: NULL on a reversed transfer (nothing
-- asked), set to the request's time when a further refund is asked, moved on
-- by a failed attempt, and NULL again once its reversal is recorded. The
-- reversal worker's extra select is:
--   SELECT id FROM seller_transfers
--   WHERE status = 'reversed'
--     AND next_retry_at IS NOT NULL AND next_retry_at <= NOW()
--   ORDER BY next_retry_at
--   LIMIT n;
--
-- Neither 0002's index (status = 'failed') nor 0003's (status =
-- 'reversal_pending') can serve it. Reversed transfers are most of a mature
-- ledger's rows and almost none of them wait for anything, so the index keeps
-- only those that do: a handful of rows, as the workers' other indexes.
--
-- Why a sibling and not a wider 0003: widening a partial index means dropping
-- and recreating it, and the reversal worker would lose its index meanwhile
-- (0003 says the same of 0002).
--
-- CONCURRENTLY, outside a transaction, as 0002-0004; drop-then-create repairs
-- an INVALID index left by an interrupted run.

DROP INDEX CONCURRENTLY IF EXISTS idx_seller_transfers_further_reversal;

CREATE INDEX CONCURRENTLY idx_seller_transfers_further_reversal
    ON seller_transfers (next_retry_at)
    WHERE status = 'reversed' AND next_retry_at IS NOT NULL;
