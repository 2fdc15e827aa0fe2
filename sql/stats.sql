-- Per-workspace usage statistics (src/stats.rs). Every entry point raises 55000 when the
-- library is not in shared_preload_libraries.

CREATE FUNCTION @extschema@._pg_time(us bigint) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN us <> 0 THEN timestamptz '2000-01-01 00:00:00+00' + us * interval '1 microsecond' END $$;
COMMENT ON FUNCTION @extschema@._pg_time(bigint) IS 'Internal: PostgreSQL TimestampTz (microseconds since 2000-01-01 UTC) to timestamptz.';

CREATE VIEW @extschema@.workspace_stats AS
SELECT s.workspace_id,
       d.datname AS database,
       s.queries,
       s.nested_queries,
       s.rows,
       round(s.exec_time_ms::numeric, 3) AS exec_time_ms,
       round(s.plan_time_ms::numeric, 3) AS plan_time_ms,
       round(s.cpu_time_ms::numeric, 3) AS cpu_time_ms,
       s.quota_rows_added,
       s.quota_rows_removed,
       s.quota_rejections,
       s.sessions,
       @extschema@._pg_time(s.last_activity_us) AS last_activity,
       s.statements_admitted,
       s.statements_waited,
       s.admission_rejections,
       s.statement_timeouts,
       round(s.wait_time_ms::numeric, 3) AS wait_time_ms
  FROM @extschema@._workspace_stats() s
  LEFT JOIN pg_catalog.pg_database d ON d.oid = s.dbid;
COMMENT ON VIEW @extschema@.workspace_stats IS
'Per workspace and database, since the last reset: top-level statements (queries) and nested ones, rows returned or affected, execution, planning and CPU time in milliseconds, rows added/removed in quota-enforced tables and quota rejections, sessions now holding the workspace, last activity, and admission control: statements admitted, waited, refused and timed out, wait time. Tracked only in databases where the extension is installed. Rows are visible to roles with the privileges of pg_read_all_stats (superusers included) or of the extension''s owner; other roles see no row, whatever workspace they claim (tenancy.stats_info shows them the totals).';
COMMENT ON COLUMN @extschema@.workspace_stats.queries IS 'top-level statements run under this workspace context';
COMMENT ON COLUMN @extschema@.workspace_stats.nested_queries IS 'statements run inside functions, triggers and procedures';
COMMENT ON COLUMN @extschema@.workspace_stats.rows IS 'rows returned (SELECT) or affected (INSERT/UPDATE/DELETE)';
COMMENT ON COLUMN @extschema@.workspace_stats.cpu_time_ms IS 'user + system CPU of top-level statements, planning included, and of the parallel workers of their queries';
COMMENT ON COLUMN @extschema@.workspace_stats.sessions IS 'backends whose tenancy.workspace_id is this workspace now';
COMMENT ON COLUMN @extschema@.workspace_stats.statements_admitted IS 'statements that took one of the workspace''s admission slots (tenancy.set_limits max_active)';
COMMENT ON COLUMN @extschema@.workspace_stats.statements_waited IS 'statements that waited for a slot (admitted after a wait, or refused)';
COMMENT ON COLUMN @extschema@.workspace_stats.admission_rejections IS 'statements refused with 53000 after waiting max_wait for a slot';
COMMENT ON COLUMN @extschema@.workspace_stats.statement_timeouts IS 'statements cancelled by the workspace''s own statement_timeout';
COMMENT ON COLUMN @extschema@.workspace_stats.wait_time_ms IS 'time statements spent waiting for a slot';
GRANT SELECT ON @extschema@.workspace_stats TO PUBLIC;

CREATE VIEW @extschema@.workspace_stats_other AS
SELECT d.datname AS database,
       s.queries,
       s.nested_queries,
       s.rows,
       round(s.exec_time_ms::numeric, 3) AS exec_time_ms,
       round(s.plan_time_ms::numeric, 3) AS plan_time_ms,
       round(s.cpu_time_ms::numeric, 3) AS cpu_time_ms,
       s.quota_rows_added,
       s.quota_rows_removed,
       s.quota_rejections,
       @extschema@._pg_time(s.last_activity_us) AS last_activity,
       s.statements_admitted,
       s.statements_waited,
       s.admission_rejections,
       s.statement_timeouts,
       round(s.wait_time_ms::numeric, 3) AS wait_time_ms
  FROM @extschema@._workspace_stats_other() s
  LEFT JOIN pg_catalog.pg_database d ON d.oid = s.dbid;
COMMENT ON VIEW @extschema@.workspace_stats_other IS
'Per database, since the last reset: what workspaces no longer in tenancy.workspace_stats had counted (evicted when the table was full) and the statements that got no entry of their own (their backend had used up tenancy.stats_new_entry_limit, or the table was full), with the columns of workspace_stats. workspace_stats plus this row is every statement tracked in the database. Visible to the readers of workspace_stats.';
GRANT SELECT ON @extschema@.workspace_stats_other TO PUBLIC;

CREATE VIEW @extschema@.stats_info AS
SELECT capacity, entries, evictions, refused_statements, shared_memory_bytes, bytes_per_entry,
       @extschema@._pg_time(last_reset_us) AS last_reset
  FROM @extschema@._stats_info();
COMMENT ON VIEW @extschema@.stats_info IS
'Capacity (tenancy.max_workspaces), entries in use, evictions since start, statements left untracked since start because their backend had used up its tenancy.stats_new_entry_limit (refused_statements), shared memory reserved, and the last full reset.';
GRANT SELECT ON @extschema@.stats_info TO PUBLIC;

CREATE VIEW @extschema@.usage AS
SELECT q.workspace_id, q.table_name, q.used, q.max_rows, q.source, q.pct,
       s.queries, s.rows, s.exec_time_ms, s.cpu_time_ms, s.quota_rejections, s.last_activity,
       s.admission_rejections, s.wait_time_ms
  FROM @extschema@.quota_usage q
  LEFT JOIN @extschema@.workspace_stats s
    ON s.workspace_id = q.workspace_id AND s.database = pg_catalog.current_database();
COMMENT ON VIEW @extschema@.usage IS
'Who uses what, and how close to their limits: quota_usage joined with this database''s workspace_stats.';

COMMENT ON FUNCTION @extschema@.reset_stats(uuid) IS
'Discards the usage statistics of one workspace (in every database), or of all workspaces when NULL.';
REVOKE ALL ON FUNCTION @extschema@.reset_stats(uuid) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._workspace_stats() IS 'Internal: rows of tenancy.workspace_stats.';
COMMENT ON FUNCTION @extschema@._stats_info() IS 'Internal: row of tenancy.stats_info.';
COMMENT ON FUNCTION @extschema@._workspace_stats_other() IS 'Internal: rows of tenancy.workspace_stats_other.';

-- The usage statistics of every node of a Citus cluster, per node (issue 19): each node counts
-- what runs on it in its own shared memory (the coordinator the client's statements, a worker
-- the shard queries, attributed to the workspace the context forwarded with SET LOCAL). Read
-- from the coordinator with Citus' run_command_on_all_nodes, as the caller (each node shows
-- what it would show the caller); a node that does not answer is left out with a WARNING.
-- Without Citus: this node's rows, node 'local'.
CREATE FUNCTION @extschema@.cluster_workspace_stats()
RETURNS TABLE (node text, workspace_id uuid, queries bigint, nested_queries bigint, "rows" bigint,
               exec_time_ms numeric, plan_time_ms numeric, cpu_time_ms numeric,
               quota_rows_added bigint, quota_rows_removed bigint, quota_rejections bigint,
               last_activity timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    r record;
BEGIN
    IF NOT @extschema@._citus_installed() THEN
        RETURN QUERY
            SELECT 'local'::text, s.workspace_id, s.queries, s.nested_queries, s.rows, s.exec_time_ms,
                   s.plan_time_ms, s.cpu_time_ms, s.quota_rows_added, s.quota_rows_removed,
                   s.quota_rejections, s.last_activity
              FROM @extschema@.workspace_stats s WHERE s.database = current_database();
        RETURN;
    END IF;
    FOR r IN EXECUTE
        $q$SELECT n.nodename || ':' || n.nodeport AS node, a.success, a.result
             FROM pg_catalog.run_command_on_all_nodes(
                    'SELECT coalesce(json_agg(s), ''[]'') FROM @extschema@.workspace_stats s WHERE s.database = current_database()') a
             JOIN pg_catalog.pg_dist_node n ON n.nodeid = a.nodeid
            ORDER BY 1$q$
    LOOP
        IF NOT r.success THEN
            RAISE WARNING 'usage statistics of node % could not be read: %', r.node, r.result;
            CONTINUE;
        END IF;
        RETURN QUERY
            SELECT r.node, (j->>'workspace_id')::uuid, (j->>'queries')::bigint, (j->>'nested_queries')::bigint,
                   (j->>'rows')::bigint, (j->>'exec_time_ms')::numeric, (j->>'plan_time_ms')::numeric,
                   (j->>'cpu_time_ms')::numeric, (j->>'quota_rows_added')::bigint,
                   (j->>'quota_rows_removed')::bigint, (j->>'quota_rejections')::bigint,
                   (j->>'last_activity')::timestamptz
              FROM json_array_elements(r.result::json) j;
    END LOOP;
END
$fn$;
COMMENT ON FUNCTION @extschema@.cluster_workspace_stats() IS
'Usage statistics of this database on every node of a Citus cluster, one row per (node, workspace): the coordinator counts the client''s statements, each worker the shard queries it ran for the workspace. Sum per workspace for the cluster''s total work (queries: statements on the coordinator plus shard queries on the workers). Without Citus: this node''s rows, node ''local''.';
