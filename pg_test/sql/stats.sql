-- Per-workspace usage statistics (shared memory; this cluster preloads tenancy).
\set SHOW_CONTEXT never
\pset null (null)
\set w '''00000000-0000-0000-0000-0000000000f1'''
SELECT tenancy.reset_stats(:w);

-- settings and capacity
SELECT name, setting, context FROM pg_settings WHERE name LIKE 'tenancy.%' ORDER BY name;
SELECT capacity, entries >= 0 AS has_entries, evictions, refused_statements >= 0 AS has_refused,
       shared_memory_bytes > 0 AS reserved, bytes_per_entry
  FROM tenancy.stats_info;

-- two top-level statements and one nested (inside DO) under a workspace context; none without
SET tenancy.workspace_id = :w;
SELECT 1 AS one;
SELECT g FROM generate_series(1, 4) g;
DO $$ BEGIN PERFORM 1; END $$;
RESET tenancy.workspace_id;
SELECT 'not counted' AS without_context;
SELECT queries, nested_queries, rows, exec_time_ms >= 0 AS timed, cpu_time_ms >= 0 AS cpu_timed,
       quota_rows_added, quota_rejections, sessions, last_activity IS NOT NULL AS active
  FROM tenancy.workspace_stats WHERE workspace_id = :w AND database = current_database();

-- reset of one workspace
SELECT tenancy.reset_stats(:w);
SELECT count(*) FROM tenancy.workspace_stats WHERE workspace_id = :w;

-- a parallel query is one statement of its workspace: its workers add no statement, rows or
-- execution time
CREATE TABLE stats_par AS SELECT g FROM generate_series(1, 30000) g;
ANALYZE stats_par;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
EXPLAIN (COSTS OFF) SELECT count(*) FROM stats_par WHERE g % 3 = 0;
SET tenancy.workspace_id = :w;
SELECT count(*) FROM stats_par WHERE g % 3 = 0;
RESET tenancy.workspace_id;
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
RESET min_parallel_table_scan_size;
RESET max_parallel_workers_per_gather;
SELECT queries, nested_queries, rows FROM tenancy.workspace_stats
 WHERE workspace_id = :w AND database = current_database();
DROP TABLE stats_par;

-- a backend over tenancy.stats_new_entry_limit creates no entry (superuser-only setting);
-- its statements go untracked and are counted in refused_statements
\set w2 '''00000000-0000-0000-0000-0000000000f2'''
SET tenancy.stats_new_entry_limit = 0;
SET tenancy.workspace_id = :w2;
SELECT 1 AS untracked;
RESET tenancy.workspace_id;
RESET tenancy.stats_new_entry_limit;
SELECT count(*) FROM tenancy.workspace_stats WHERE workspace_id = :w2;
SELECT refused_statements > 0 AS refused FROM tenancy.stats_info;

-- claiming a workspace reveals nothing: rows are for pg_read_all_stats (and superusers)
CREATE ROLE tenancy_stats_viewer;
SET ROLE tenancy_stats_viewer;
SET tenancy.workspace_id = :w;
SELECT count(*) FROM tenancy.workspace_stats;
SELECT entries > 0 AS totals_visible FROM tenancy.stats_info;
SET tenancy.stats_new_entry_limit = -1;
RESET tenancy.workspace_id;
RESET ROLE;
GRANT pg_read_all_stats TO tenancy_stats_viewer;
SET ROLE tenancy_stats_viewer;
SELECT count(*) > 0 AS all_rows FROM tenancy.workspace_stats WHERE workspace_id = :w;
RESET ROLE;
DROP ROLE tenancy_stats_viewer;
SELECT tenancy.reset_stats(:w);

-- a procedure or DO block that ends transactions inside (COMMIT, ROLLBACK), also one failing
-- after its ROLLBACK, leaves the statement depth as it found it: its statements are nested
-- ones, the statements after it are top-level ones again, and their CPU time is read
\set w3 '''00000000-0000-0000-0000-0000000000f3'''
CREATE TABLE stats_txn (n int);
CREATE PROCEDURE stats_commit() LANGUAGE plpgsql AS $$
BEGIN INSERT INTO stats_txn VALUES (1); COMMIT; INSERT INTO stats_txn VALUES (2); END $$;
CREATE PROCEDURE stats_rollback() LANGUAGE plpgsql AS $$
BEGIN INSERT INTO stats_txn VALUES (3); ROLLBACK; INSERT INTO stats_txn VALUES (4); END $$;
CREATE PROCEDURE stats_rollback_fail() LANGUAGE plpgsql AS $$
BEGIN INSERT INTO stats_txn VALUES (5); ROLLBACK; INSERT INTO stats_txn VALUES (6); RAISE EXCEPTION 'fails after its rollback'; END $$;
SELECT tenancy.reset_stats(:w3);
SET tenancy.workspace_id = :w3;
CALL stats_commit();
CALL stats_rollback();
DO $$ BEGIN CALL stats_rollback(); COMMIT; PERFORM 7; ROLLBACK; PERFORM 8; END $$;
CALL stats_rollback_fail();
SELECT 1 AS a;
SELECT 2 AS b;
SELECT count(*) AS busy FROM generate_series(1, 300000);
RESET tenancy.workspace_id;
-- 3 top-level statements; nested: 2 + 2 + (2 + 2) + 2
SELECT queries, nested_queries, cpu_time_ms > 0 AS cpu_read
  FROM tenancy.workspace_stats WHERE workspace_id = :w3 AND database = current_database();
SELECT array_agg(n ORDER BY n) AS kept FROM stats_txn;
DROP PROCEDURE stats_commit(), stats_rollback(), stats_rollback_fail();
DROP TABLE stats_txn;
SELECT tenancy.reset_stats(:w3);

-- the views are documented
SELECT c.relname, obj_description(c.oid, 'pg_class') IS NOT NULL AS commented
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'tenancy' AND c.relkind = 'v' ORDER BY 1;
