-- 0011: find transfers by the Stripe transfer they record.
-- The embedded twin of postgresql/0011 (read that file for the why).

CREATE INDEX IF NOT EXISTS idx_seller_transfers_stripe_transfer_id
    ON seller_transfers (stripe_transfer_id)
    WHERE stripe_transfer_id IS NOT NULL;
