-- 0009: one row per running daemon, for `ledger health`.
-- The embedded twin of postgresql/0009 (read that file for the why); times are
-- fixed-width UTC ISO text as in 0001.

CREATE TABLE IF NOT EXISTS daemon_heartbeats (
    daemon_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    concurrency INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    seen_at TEXT NOT NULL,
    stopped_at TEXT
);
