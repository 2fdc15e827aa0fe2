-- tenancy 0.5.0 -> 0.6.0 (ALTER EXTENSION tenancy UPDATE TO '0.6.0'): usage statistics at
-- Dittofeed's scale (issue 16). The figures of evicted workspaces and of statements that got no
-- entry of their own are kept per database: function _workspace_stats_other() and view
-- workspace_stats_other (new). workspace_metrics() (same signature, new body) reads the new
-- _workspace_metrics(integer), which ranks in Rust and adds the other rows to '_other', so the
-- totals stay exact and a scrape stays cheap.
-- Statements taken from tenancy--0.6.0.sql (scripts/upgrade-draft.py); tests/upgrade.rs checks
-- the result against a fresh install. Released: never edit this file (docs/releasing.md).

\echo Use "ALTER EXTENSION tenancy UPDATE TO '0.6.0'" to load this file. \quit

CREATE FUNCTION @extschema@."_workspace_metrics"(
	"top_n" INT 
) RETURNS TABLE (
	"dbid" oid,  
	"workspace" TEXT,  
	"queries" bigint,  
	"nested_queries" bigint,  
	"rows" bigint,  
	"exec_seconds" double precision,  
	"plan_seconds" double precision,  
	"cpu_seconds" double precision,  
	"quota_rows_added" bigint,  
	"quota_rows_removed" bigint,  
	"quota_rejections" bigint,  
	"sessions" bigint,  
	"statements_admitted" bigint,  
	"statements_waited" bigint,  
	"admission_rejections" bigint,  
	"statement_timeouts" bigint,  
	"wait_seconds" double precision  
)
STRICT VOLATILE PARALLEL RESTRICTED 
LANGUAGE c 
AS 'MODULE_PATHNAME', 'workspace_metrics_rows_wrapper';

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

COMMENT ON FUNCTION @extschema@._workspace_metrics(integer) IS 'Internal: rows of tenancy.workspace_metrics(), with the database oid.';
