-- 0017: on PostgreSQL, an append becomes one statement (read
-- postgresql/0017 for the why). SQLite appends in-process, through the
-- recorder's own statements: nothing changes here.

SELECT 1;
