-- 0018: on PostgreSQL, ledger_append links its events itself (read
-- postgresql/0018 for the why). SQLite links in-process, through the
-- recorder's append hook: nothing changes here.

SELECT 1;
