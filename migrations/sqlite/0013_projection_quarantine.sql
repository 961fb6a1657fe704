-- 0013: a transfer whose events the projection cannot apply is set aside,
-- not allowed to stop the read table.
-- The embedded twin of postgresql/0013 (read that file for the why).

CREATE TABLE IF NOT EXISTS projection_quarantine (
    name TEXT NOT NULL,
    transfer_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    version INTEGER NOT NULL,
    problem TEXT NOT NULL,
    quarantined_at TEXT NOT NULL,
    PRIMARY KEY (name, transfer_id)
);
