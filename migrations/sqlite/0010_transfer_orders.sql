-- 0010: one order, one transfer, however the transfer arrives.
-- The embedded twin of postgresql/0010 (read that file for the why).

CREATE TABLE IF NOT EXISTS transfer_orders (
    order_ref text PRIMARY KEY,
    transfer_id text NOT NULL
);

INSERT OR IGNORE INTO transfer_orders (order_ref, transfer_id)
    SELECT order_ref, id FROM seller_transfers ORDER BY created_at, id;
