-- tenancy 0.5.0 -> 0.6.0 (ALTER EXTENSION tenancy UPDATE TO '0.6.0'): usage statistics at
-- Dittofeed's scale (issue 16). The figures of evicted workspaces and of statements that got no
-- entry of their own are kept per database: function _workspace_stats_other() and view
-- workspace_stats_other (new); workspace_metrics() adds them to its '_other' row (same
-- signature, new body), so the totals stay exact.
-- Statements taken from tenancy--0.6.0.sql (scripts/upgrade-draft.py); tests/upgrade.rs checks
-- the result against a fresh install. Released: never edit this file (docs/releasing.md).

\echo Use "ALTER EXTENSION tenancy UPDATE TO '0.6.0'" to load this file. \quit

CREATE FUNCTION @extschema@."_workspace_stats_other"() RETURNS TABLE (
	"dbid" oid,  
	"queries" bigint,  
	"nested_queries" bigint,  
	"rows" bigint,  
	"exec_time_ms" double precision,  
	"plan_time_ms" double precision,  
	"cpu_time_ms" double precision,  
	"quota_rows_added" bigint,  
	"quota_rows_removed" bigint,  
	"quota_rejections" bigint,  
	"statements_admitted" bigint,  
	"statements_waited" bigint,  
	"admission_rejections" bigint,  
	"statement_timeouts" bigint,  
	"wait_time_ms" double precision,  
	"last_activity_us" bigint  
)
STRICT VOLATILE PARALLEL RESTRICTED 
LANGUAGE c 
AS 'MODULE_PATHNAME', 'stats_other_wrapper';

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

COMMENT ON FUNCTION @extschema@._workspace_stats_other() IS 'Internal: rows of tenancy.workspace_stats_other.';

CREATE OR REPLACE FUNCTION @extschema@.workspace_metrics(top_n integer DEFAULT NULL)
RETURNS TABLE (database name, workspace text, queries bigint, nested_queries bigint, rows bigint,
               exec_seconds float8, plan_seconds float8, cpu_seconds float8,
               quota_rows_added bigint, quota_rows_removed bigint, quota_rejections bigint,
               sessions bigint, statements_admitted bigint, statements_waited bigint,
               admission_rejections bigint, statement_timeouts bigint, wait_seconds float8)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH n AS (
        SELECT greatest(coalesce(top_n, pg_catalog.current_setting('tenancy.metrics_workspaces', true)::integer, 50), 0) AS n
    ), ranked AS (
        SELECT s.database, s.queries, s.nested_queries, s.rows, s.exec_time_ms, s.plan_time_ms,
               s.cpu_time_ms, s.quota_rows_added, s.quota_rows_removed, s.quota_rejections,
               s.sessions, s.statements_admitted, s.statements_waited, s.admission_rejections,
               s.statement_timeouts, s.wait_time_ms, s.workspace_id,
               row_number() OVER (PARTITION BY s.database ORDER BY s.queries + s.nested_queries DESC, s.workspace_id) AS rk
          FROM @extschema@.workspace_stats s
        UNION ALL
        -- evicted workspaces and statements without an entry of their own: always in _other
        SELECT o.database, o.queries, o.nested_queries, o.rows, o.exec_time_ms, o.plan_time_ms,
               o.cpu_time_ms, o.quota_rows_added, o.quota_rows_removed, o.quota_rejections,
               0, o.statements_admitted, o.statements_waited, o.admission_rejections,
               o.statement_timeouts, o.wait_time_ms, NULL, NULL
          FROM @extschema@.workspace_stats_other o
    )
    SELECT r.database,
           CASE WHEN r.rk <= n.n THEN r.workspace_id::text ELSE '_other' END,
           sum(r.queries)::bigint, sum(r.nested_queries)::bigint, sum(r.rows)::bigint,
           sum(r.exec_time_ms)::float8 / 1000, sum(r.plan_time_ms)::float8 / 1000, sum(r.cpu_time_ms)::float8 / 1000,
           sum(r.quota_rows_added)::bigint, sum(r.quota_rows_removed)::bigint, sum(r.quota_rejections)::bigint,
           sum(r.sessions)::bigint, sum(r.statements_admitted)::bigint, sum(r.statements_waited)::bigint,
           sum(r.admission_rejections)::bigint, sum(r.statement_timeouts)::bigint, sum(r.wait_time_ms)::float8 / 1000
      FROM ranked r CROSS JOIN n
     GROUP BY 1, 2
$fn$;

COMMENT ON FUNCTION @extschema@.workspace_metrics(integer) IS
'Usage statistics for Prometheus (monitoring/queries.yaml), in base units (seconds): in each database, the top_n most active workspaces by statements since the last reset get their own row, the rest, with the figures of evicted workspaces and of statements without an entry of their own (tenancy.workspace_stats_other), are summed into workspace ''_other'' (totals stay exact; at most top_n + 1 rows per database). top_n NULL: tenancy.metrics_workspaces. Rows as tenancy.workspace_stats shows them (pg_read_all_stats members and the extension''s owner).';
