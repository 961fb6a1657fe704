-- 0009: one row per running daemon, so `ledger health` can tell that someone
-- is doing the work (DESIGN section 8).
--
-- daemon_id   host:pid:random, the same name its claims carry in stripe_work.claimed_by.
-- seen_at     refreshed every few seconds by the daemon's loop (the database's clock).
-- stopped_at  set on a clean stop; a daemon killed outright just stops being seen.
--
-- Rows of daemons not seen for a week are deleted by the next daemon to start.

CREATE TABLE IF NOT EXISTS daemon_heartbeats (
    daemon_id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    concurrency integer NOT NULL,
    started_at timestamptz NOT NULL,
    seen_at timestamptz NOT NULL,
    stopped_at timestamptz
);
