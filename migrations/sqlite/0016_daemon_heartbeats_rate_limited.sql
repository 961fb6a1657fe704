-- 0016: a 429 slows every daemon, not only the one that met it.
-- The embedded twin of postgresql/0016 (read that file for the why).

ALTER TABLE daemon_heartbeats ADD COLUMN rate_limited_until TEXT;
