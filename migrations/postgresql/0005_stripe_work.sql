-- 0005: the process managers' bookkeeping of Stripe work: claims, attempts, parking.
--
-- One row per transfer and kind of Stripe effect ('payout': a Stripe transfer;
-- 'reversal': a transfer reversal). The events say WHAT the ledger decided;
-- this table says what a daemon is doing about it right now, which is not
-- history and is never projected from events.
--
-- cause            the event that asked for the effect (transfer id:version);
--                  the Stripe idempotency keys and the outcome's caused_by derive from it.
-- attempts         how many Stripe calls were started for this cause; call N
--                  uses key ...-aN, so a retry after a replayed 500 gets a new key.
-- outcome_unknown  a call was started and no outcome is recorded yet (the daemon
--                  crashed, the call timed out, the connection dropped, a 5xx):
--                  the next attempt looks the object up at Stripe before calling.
--                  Set BEFORE the call in its own committed transaction, so no
--                  database transaction is open while Stripe is called.
-- claimed_by,      one daemon at a time works on a row; the claim expires so a
-- claim_expires_at dead daemon's work is taken over.
-- handling_failures, not_before, last_failure, parked_at
--                  failures that are not Stripe's answer (a bug, an unreadable
--                  event) are retried with backoff, then parked for an operator
--                  (`ledger parked list` / `ledger parked retry`).
--
-- The partial index holds only the rows the dispatcher must skip (claimed,
-- backing off, parked): a handful, however many transfers were ever paid.

CREATE TABLE IF NOT EXISTS stripe_work (
    transfer_id uuid NOT NULL,
    kind text NOT NULL CHECK (kind IN ('payout', 'reversal')),
    cause text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    outcome_unknown boolean NOT NULL DEFAULT false,
    claimed_by text,
    claim_expires_at timestamptz,
    handling_failures integer NOT NULL DEFAULT 0,
    not_before timestamptz,
    last_failure text,
    parked_at timestamptz,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (transfer_id, kind)
);

CREATE INDEX IF NOT EXISTS idx_stripe_work_unavailable ON stripe_work (transfer_id)
    WHERE claimed_by IS NOT NULL OR not_before IS NOT NULL OR parked_at IS NOT NULL;
