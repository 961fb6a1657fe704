-- 0016: a 429 slows every daemon, not only the one that met it.
--
-- All daemons on a database share one Stripe rate budget (each takes its
-- share by the daemons alive, from these rows). When Stripe answers one of
-- them 429 anyway (the platform's own traffic took part of the limit), that
-- daemon pauses, and writes until when into its heartbeat row; at their next
-- beat (2 s) the others read the latest such time among the live daemons and
-- pause as long. NULL: not rate-limited.

ALTER TABLE daemon_heartbeats ADD COLUMN IF NOT EXISTS rate_limited_until timestamptz;
