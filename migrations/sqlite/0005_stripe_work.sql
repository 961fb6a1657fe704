-- 0005: the process managers' bookkeeping of Stripe work: claims, attempts, parking.
-- The embedded twin of postgresql/0005 (read that file for the why). Booleans
-- are 0/1 integers; times are fixed-width UTC ISO text as in 0001.

CREATE TABLE IF NOT EXISTS stripe_work (
    transfer_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('payout', 'reversal')),
    cause TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    outcome_unknown INTEGER NOT NULL DEFAULT 0,
    claimed_by TEXT,
    claim_expires_at TEXT,
    handling_failures INTEGER NOT NULL DEFAULT 0,
    not_before TEXT,
    last_failure TEXT,
    parked_at TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (transfer_id, kind)
);

CREATE INDEX IF NOT EXISTS idx_stripe_work_unavailable ON stripe_work (transfer_id)
    WHERE claimed_by IS NOT NULL OR not_before IS NOT NULL OR parked_at IS NOT NULL;
