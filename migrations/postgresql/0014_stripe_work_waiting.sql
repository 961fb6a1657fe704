-- 0014: work that waits on a condition outside the transfer, and when its
-- attempt began.
--
-- Some of Stripe's refusals say nothing about the transfer: a 429 (our rate,
-- across every daemon), `balance_insufficient` on a payout (the platform's
-- available balance is short until charges settle), a destination without
-- the `transfers` capability (the seller has not finished onboarding). Counted
-- as failed attempts they ended transfers `permanently_failed` (a terminal
-- status, "not paid") within minutes of an outage or a slow settlement, and
-- parked a seller's payout as our bug. They are conditions: the work waits,
-- with a backoff of its own, and spends no attempt; no event is appended, as
-- nothing about the transfer changed.
--
-- waiting_for      why the work waits now: 'rate_limit', 'platform_balance' or
--                  'seller_capability'; NULL when it does not. not_before says
--                  until when, last_failure says Stripe's words.
-- waiting_since    when it began waiting for that (the first refusal in a row):
--                  `ledger health` says since when; a seller who cannot receive
--                  transfers for LEDGER_SELLER_WAIT_DAYS ends the payout
--                  permanently_failed, with that reason.
-- waits            refusals in a row: the backoff doubles with each, capped.
-- attempt_started_at
--                  when the current attempt's key was first sent. A daemon taking
--                  over work whose outcome is unknown looks the object up; if
--                  Stripe has nothing, the earlier daemon's request may still be
--                  on its way or running there, so within an hour of this moment
--                  it sends the same request under the same key (Stripe answers
--                  it once), never a new key.

ALTER TABLE stripe_work ADD COLUMN IF NOT EXISTS waiting_for text;
ALTER TABLE stripe_work ADD COLUMN IF NOT EXISTS waiting_since timestamptz;
ALTER TABLE stripe_work ADD COLUMN IF NOT EXISTS waits integer NOT NULL DEFAULT 0;
ALTER TABLE stripe_work ADD COLUMN IF NOT EXISTS attempt_started_at timestamptz;
