-- tenancy 0.5.0 -> 0.6.0 (ALTER EXTENSION tenancy UPDATE TO '0.6.0'):
-- - usage statistics at Dittofeed's scale (issue 16): the figures of evicted workspaces and of
--   statements that got no entry of their own are kept per database (function
--   _workspace_stats_other(), view workspace_stats_other); workspace_metrics() (same signature,
--   new body) reads the new _workspace_metrics(integer), which ranks in Rust, adds the other
--   rows to '_other' and leaves out dropped databases;
-- - change stamps (issue 17, first part): track_changes(), untrack_changes(), change_stamp(),
--   change_stamps(), and their internal _change_trigger() and _change_stamp(oid, uuid).
-- Statements taken from tenancy--0.6.0.sql (scripts/upgrade-draft.py); tests/upgrade.rs checks
-- the result against a fresh install. Released: never edit this file (docs/releasing.md).

\echo Use "ALTER EXTENSION tenancy UPDATE TO '0.6.0'" to load this file. \quit

CREATE FUNCTION @extschema@."_change_stamp"(
	"tbl" oid, 
	"workspace" uuid 
) RETURNS bigint 
VOLATILE PARALLEL RESTRICTED 
LANGUAGE c 
AS 'MODULE_PATHNAME', 'change_stamp_wrapper';

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

CREATE FUNCTION @extschema@._change_trigger() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_change_trigger';

COMMENT ON FUNCTION @extschema@._change_trigger() IS
'Internal: the trigger of tenancy.track_changes() (BEFORE ... FOR EACH ROW, and AFTER TRUNCATE; arguments: the workspace column, the tracked table''s oid); notes the workspaces a transaction changed, bumped at commit.';

CREATE FUNCTION @extschema@.track_changes(tbl regclass, workspace_column name DEFAULT 'workspaceId')
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    coltype regtype;
BEGIN
    IF tbl IS NULL OR workspace_column IS NULL THEN
        RAISE EXCEPTION 'tenancy.track_changes(): table and workspace column must not be NULL'
            USING ERRCODE = '22004';
    END IF;
    IF (SELECT relkind FROM pg_class WHERE oid = tbl) NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'cannot track changes of %: not a table', tbl
            USING ERRCODE = '42809', HINT = 'Change stamps are kept for ordinary and partitioned tables.';
    END IF;
    SELECT a.atttypid::regtype INTO coltype FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = workspace_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF coltype IS NULL THEN
        RAISE EXCEPTION 'column "%" of % does not exist', workspace_column, tbl
            USING ERRCODE = '42703', HINT = 'Name the table''s workspace column: tenancy.track_changes(table, column).';
    ELSIF coltype <> 'uuid'::regtype THEN
        RAISE EXCEPTION 'the workspace column "%" of % is of type %, not uuid', workspace_column, tbl, coltype
            USING ERRCODE = '42804';
    END IF;
    -- as the caller: creating triggers needs the TRIGGER privilege on the table (its owner)
    PERFORM @extschema@.untrack_changes(tbl);
    -- row triggers BEFORE (no transition tables, no after-trigger queue: the cheapest form);
    -- the second argument names the tracked table, so a partition's cloned trigger notes it
    EXECUTE format('CREATE TRIGGER tenancy_changes_insert BEFORE INSERT ON %s FOR EACH ROW EXECUTE FUNCTION @extschema@._change_trigger(%L, %L)', tbl, workspace_column, tbl::oid);
    EXECUTE format('CREATE TRIGGER tenancy_changes_update BEFORE UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION @extschema@._change_trigger(%L, %L)', tbl, workspace_column, tbl::oid);
    EXECUTE format('CREATE TRIGGER tenancy_changes_delete BEFORE DELETE ON %s FOR EACH ROW EXECUTE FUNCTION @extschema@._change_trigger(%L, %L)', tbl, workspace_column, tbl::oid);
    EXECUTE format('CREATE TRIGGER tenancy_changes_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._change_trigger(%L, %L)', tbl, workspace_column, tbl::oid);
END
$fn$;

COMMENT ON FUNCTION @extschema@.track_changes(regclass, name) IS
'Keeps change stamps for the table: row triggers note the workspaces each statement changes (both of a row moved between workspaces; TRUNCATE: all), and their stamps move when the transaction commits. Needs the TRIGGER privilege on the table (its owner). Idempotent.';

CREATE FUNCTION @extschema@.untrack_changes(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t name;
BEGIN
    FOR t IN SELECT tgname FROM pg_trigger
              WHERE tgrelid = tbl AND tgname IN ('tenancy_changes_insert', 'tenancy_changes_update',
                                                 'tenancy_changes_delete', 'tenancy_changes_truncate')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t, tbl);
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION @extschema@.untrack_changes(regclass) IS
'Stops keeping change stamps for the table (drops the triggers of track_changes).';

CREATE FUNCTION @extschema@.change_stamp(tbl regclass, workspace uuid DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT @extschema@._change_stamp(tbl::oid, workspace) $fn$;

COMMENT ON FUNCTION @extschema@.change_stamp(regclass, uuid) IS
'The change stamp of (table, workspace); workspace NULL: the current context. It moves when a transaction that changed rows of that workspace in that table commits, and only then; it never repeats or goes back, across restarts and crashes too. Read it in one statement, then the data in a later one (docs/caching.md).';

CREATE FUNCTION @extschema@.change_stamps(workspace uuid DEFAULT NULL)
RETURNS TABLE (table_name regclass, stamp bigint)
LANGUAGE sql VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT t.tgrelid::regclass, @extschema@._change_stamp(t.tgrelid, workspace)
      FROM pg_catalog.pg_trigger t
     WHERE t.tgname = 'tenancy_changes_insert'
       AND t.tgparentid = 0  -- not a partition's clone: stamps are kept for the tracked table
       AND t.tgfoid = '@extschema@._change_trigger()'::pg_catalog.regprocedure
       AND pg_catalog.has_table_privilege(t.tgrelid, 'SELECT')
     ORDER BY 1
$fn$;

COMMENT ON FUNCTION @extschema@.change_stamps(uuid) IS
'The change stamp of the workspace (NULL: the current context) in every tracked table of this database the caller may read.';

COMMENT ON FUNCTION @extschema@._change_stamp(oid, uuid) IS 'Internal: tenancy.change_stamp().';

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
