-- Metrics for Prometheus with bounded cardinality (monitoring/queries.yaml reads these; issue 16):
-- only the most active workspaces get their own label value, the rest are summed into
-- workspace '_other', so totals stay exact and the series count stays bounded.

CREATE FUNCTION @extschema@.workspace_metrics(top_n integer DEFAULT NULL)
RETURNS TABLE (database name, workspace text, queries bigint, nested_queries bigint, rows bigint,
               exec_seconds float8, plan_seconds float8, cpu_seconds float8,
               quota_rows_added bigint, quota_rows_removed bigint, quota_rejections bigint,
               sessions bigint, statements_admitted bigint, statements_waited bigint,
               admission_rejections bigint, statement_timeouts bigint, wait_seconds float8)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    -- ranked in Rust (src/stats/metrics.rs): one pass over the table, cheap at every scrape
    SELECT d.datname, m.workspace, m.queries, m.nested_queries, m.rows,
           m.exec_seconds, m.plan_seconds, m.cpu_seconds,
           m.quota_rows_added, m.quota_rows_removed, m.quota_rejections,
           m.sessions, m.statements_admitted, m.statements_waited,
           m.admission_rejections, m.statement_timeouts, m.wait_seconds
      FROM @extschema@._workspace_metrics(greatest(coalesce(top_n,
               pg_catalog.current_setting('tenancy.metrics_workspaces', true)::integer, 50), 0)) m
      -- statistics left by dropped databases stay in the table until evicted or reset, but
      -- have no name: two of them could give the exporter the same labels twice (it then fails
      -- the whole scrape), and their series have ended anyway
      JOIN pg_catalog.pg_database d ON d.oid = m.dbid
$fn$;
COMMENT ON FUNCTION @extschema@.workspace_metrics(integer) IS
'Usage statistics for Prometheus (monitoring/queries.yaml), in base units (seconds): in each database, the top_n most active workspaces by statements since the last reset get their own row, the rest, with the figures of evicted workspaces and of statements without an entry of their own (tenancy.workspace_stats_other), are summed into workspace ''_other'' (totals stay exact; at most top_n + 1 rows per database). top_n NULL: tenancy.metrics_workspaces. Rows as tenancy.workspace_stats shows them (pg_read_all_stats members and the extension''s owner).';

CREATE FUNCTION @extschema@.quota_metrics(top_n integer DEFAULT NULL)
RETURNS TABLE (table_name text, workspace text, used bigint, max_rows bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH n AS (
        SELECT greatest(coalesce(top_n, pg_catalog.current_setting('tenancy.metrics_workspaces', true)::integer, 50), 0) AS n
    ), ranked AS (
        SELECT q.*, row_number() OVER (PARTITION BY q.table_name ORDER BY q.used DESC, q.workspace_id) AS rk
          FROM @extschema@.quota_usage q
    )
    SELECT r.table_name::text,
           CASE WHEN r.rk <= n.n THEN r.workspace_id::text ELSE '_other' END,
           sum(r.used)::bigint,
           -- a limit is per workspace: none for the '_other' sum
           CASE WHEN r.rk <= n.n THEN max(r.max_rows) END
      FROM ranked r CROSS JOIN n
     GROUP BY 1, 2, r.rk <= n.n
$fn$;
COMMENT ON FUNCTION @extschema@.quota_metrics(integer) IS
'Quota use for Prometheus (monitoring/queries.yaml): per enforced table, the top_n workspaces by rows used get their own row with their limit (NULL: unlimited), the rest are summed into workspace ''_other'' (no limit). top_n NULL: tenancy.metrics_workspaces.';

REVOKE ALL ON FUNCTION @extschema@.workspace_metrics(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.quota_metrics(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.workspace_metrics(integer) TO pg_monitor;
GRANT EXECUTE ON FUNCTION @extschema@.quota_metrics(integer) TO pg_monitor;
GRANT SELECT ON @extschema@.quota_usage TO pg_monitor;
GRANT EXECUTE ON FUNCTION @extschema@._quota_counts() TO pg_monitor;
COMMENT ON FUNCTION @extschema@._workspace_metrics(integer) IS 'Internal: rows of tenancy.workspace_metrics(), with the database oid.';
