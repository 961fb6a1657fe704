-- 0008: the Stripe webhook deliveries the ledger has received.
--
-- One row per Stripe event id, whatever became of it. The primary key is the
-- deduplication: Stripe delivers an event at least once, may deliver it again
-- hours later and out of order, and a redelivery must append nothing. The row
-- of a delivery that records events on a transfer is inserted in the same
-- transaction as those events, so "recorded" here and the events can never
-- disagree; a concurrent second delivery of the same event loses on this key.
--
-- stripe_transfer_id  the Stripe transfer the event is about (tr_...), when it is about one.
-- transfer_id         the ledger transfer it was matched to (canonical UUID text),
--                     when one was found. Text, not uuid: it is what the delivery
--                     named, kept even when no such transfer exists.
-- outcome             recorded          events were appended on the transfer;
--                     already_known     the ledger had it already (its own reversal,
--                                       or one recorded before);
--                     ignored           an event type the ledger does not act on;
--                     refused           the matrix refused the change: nothing was
--                                       appended, and `ledger reconcile` lists it;
--                     unknown_transfer  no ledger transfer matches: listed too.
-- detail              why, in words, for refused and unknown_transfer (never a secret).
--
-- The partial index serves reconcile's listing of what needs a person: only
-- the refused and unmatched deliveries, a handful among the many.

CREATE TABLE IF NOT EXISTS stripe_webhook_events (
    stripe_event_id text PRIMARY KEY,
    event_type text NOT NULL,
    stripe_transfer_id text NULL,
    transfer_id text NULL,
    outcome text NOT NULL CHECK (outcome IN ('recorded', 'already_known', 'ignored',
        'refused', 'unknown_transfer')),
    detail text NULL,
    received_at timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_stripe_webhook_events_attention
    ON stripe_webhook_events (received_at)
    WHERE outcome IN ('refused', 'unknown_transfer');
