-- 0010: one order, one transfer, however the transfer arrives.
--
-- A created transfer's id derives from its order reference, so two creates of
-- one order meet on the event store's primary key. An imported transfer keeps
-- the id the old table gave it, and nothing stopped an import from bringing a
-- second transfer for an order the ledger already had (or two lines of one
-- file sharing an order): the daemon then paid the order twice.
--
-- transfer_orders reserves each order reference for one transfer. The
-- reservation is written in the same transaction as the transfer's first
-- event (a create's or an import's), so a race between a create and an
-- import, or two imports, ends with one of them refused, not with two
-- transfers. It is part of the write side, not a projection: nothing
-- rebuilds it from the events, and nothing but those two commands writes it.
--
-- Why not a unique index on seller_transfers (order_ref): the read table is
-- rebuilt and caught up from the events, and an old log that already holds
-- two transfers for one order would make every rebuild and catch-up fail.
-- Here the existing transfers reserve their orders below, the oldest first;
-- a later duplicate keeps its row and is the one `ledger reconcile` and a
-- person look at.

CREATE TABLE IF NOT EXISTS transfer_orders (
    order_ref text PRIMARY KEY,
    transfer_id uuid NOT NULL
);

INSERT INTO transfer_orders (order_ref, transfer_id)
    SELECT DISTINCT ON (order_ref) order_ref, id
    FROM seller_transfers
    ORDER BY order_ref, created_at, id
    ON CONFLICT (order_ref) DO NOTHING;
