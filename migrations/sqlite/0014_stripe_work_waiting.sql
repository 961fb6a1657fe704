-- 0014: work that waits on a condition outside the transfer, and when its
-- attempt began.
-- The embedded twin of postgresql/0014 (read that file for the why).

ALTER TABLE stripe_work ADD COLUMN waiting_for TEXT;
ALTER TABLE stripe_work ADD COLUMN waiting_since TEXT;
ALTER TABLE stripe_work ADD COLUMN waits INTEGER NOT NULL DEFAULT 0;
ALTER TABLE stripe_work ADD COLUMN attempt_started_at TEXT;
