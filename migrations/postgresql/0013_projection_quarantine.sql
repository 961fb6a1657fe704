-- 0013: a transfer whose events the projection cannot apply is set aside,
-- not allowed to stop the read table.
--
-- Every command writes its read-table rows in the append itself (one
-- transaction with the events), so an event whose row cannot be written is
-- never appended. The projection that catches up with events written any
-- other way (an older version, another writer, a rebuild) still meets such
-- events: one whose row the database refuses (a text it cannot store), or a
-- history that cannot be replayed. Before, such an event stopped the
-- projection for good: every list, show, verify and rebuild failed, and only
-- editing the append-only log could help.
--
-- Now the projection quarantines that transfer: one row here, per projection
-- (the live one, a rebuild's), saying at which event and why. Its later events
-- are passed over; every other transfer goes on. `ledger health` and `ledger
-- audit verify` report each quarantined transfer until it is resolved, and
-- the daemon logs it once. A rebuild tries every transfer again.

CREATE TABLE IF NOT EXISTS projection_quarantine (
    name text NOT NULL,
    transfer_id uuid NOT NULL,
    position bigint NOT NULL,
    version bigint NOT NULL,
    problem text NOT NULL,
    quarantined_at timestamptz NOT NULL,
    PRIMARY KEY (name, transfer_id)
);
