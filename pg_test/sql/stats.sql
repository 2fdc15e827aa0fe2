-- Per-workspace usage statistics (shared memory; this cluster preloads tenancy).
\set SHOW_CONTEXT never
\pset null (null)
\set w '''00000000-0000-0000-0000-0000000000f1'''
SELECT tenancy.reset_stats(:w);

-- settings and capacity
SELECT name, setting, context FROM pg_settings WHERE name LIKE 'tenancy.%' ORDER BY name;
SELECT capacity, entries >= 0 AS has_entries, evictions, shared_memory_bytes > 0 AS reserved, bytes_per_entry
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

-- the views are documented
SELECT c.relname, obj_description(c.oid, 'pg_class') IS NOT NULL AS commented
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'tenancy' AND c.relkind = 'v' ORDER BY 1;
