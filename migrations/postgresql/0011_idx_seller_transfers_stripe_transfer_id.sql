-- ledger:no-transaction
-- 0011: find transfers by the Stripe transfer they record.
--
-- `ledger transfer import` refuses a line whose stripe_transfer_id another
-- transfer already records (one Stripe transfer paid one ledger transfer),
-- and asks for a batch of ids at a time; `ledger reconcile` and the webhook
-- handler look up Stripe transfers that name no ledger transfer the same way.
-- Without an index each of those asks scanned the whole table.
--
-- Partial: a pending or failed transfer records no Stripe transfer, so those
-- rows (the ones that change most) are not in it at all.
--
-- CONCURRENTLY, outside a transaction, for the same reason as 0002.

DROP INDEX CONCURRENTLY IF EXISTS idx_seller_transfers_stripe_transfer_id;

CREATE INDEX CONCURRENTLY idx_seller_transfers_stripe_transfer_id
    ON seller_transfers (stripe_transfer_id)
    WHERE stripe_transfer_id IS NOT NULL;
