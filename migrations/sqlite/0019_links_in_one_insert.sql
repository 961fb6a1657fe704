-- 0019: on PostgreSQL, ledger_append inserts its chain links in one
-- statement (read postgresql/0019 for the why). SQLite links in-process,
-- through the recorder's append hook: nothing changes here.

SELECT 1;
