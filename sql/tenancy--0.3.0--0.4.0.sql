-- tenancy 0.3.0 -> 0.4.0 (ALTER EXTENSION tenancy UPDATE TO '0.4.0'): fair sharing, per-workspace
-- admission control (issue 15).
-- - new: tenancy._admission_slots() (C, revoked from PUBLIC): the slots in shared memory; table
--   tenancy.workspace_limit (dumped by pg_dump) and its statement trigger workspace_limit_changed
--   (cache invalidation); set_limits(integer, interval, interval, uuid) and clear_limits(uuid)
--   (revoked from PUBLIC); view workspace_limits;
-- - tenancy._workspace_stats() gains the admission counters (new C symbol stats_rows_v2_wrapper;
--   the old symbol keeps the old shape for databases not yet updated): the views usage and
--   workspace_stats that depend on it are dropped and created again, with their comments and
--   grant.
-- Statements taken from tenancy--0.4.0.sql (scripts/upgrade-draft.py); tests/upgrade.rs checks
-- the result against a fresh install. Released: never edit this file (docs/releasing.md).

\echo Use "ALTER EXTENSION tenancy UPDATE TO '0.4.0'" to load this file. \quit

CREATE  FUNCTION "_admission_slots"() RETURNS TABLE (
	"database" oid,  
	"workspace_id" uuid,  
	"active" INT,  
	"waiting" INT  
)
STRICT VOLATILE PARALLEL RESTRICTED 
LANGUAGE c 
AS 'MODULE_PATHNAME', 'admission_slots_wrapper';

REVOKE ALL ON FUNCTION @extschema@._admission_slots() FROM PUBLIC;

COMMENT ON FUNCTION @extschema@._admission_slots() IS
'Internal: the admission slots in shared memory (database, workspace, statements active and waiting now), read by tenancy.workspace_limits.';

CREATE TABLE @extschema@.workspace_limit (
    workspace_id uuid,
    max_active integer CHECK (max_active >= 1),
    max_wait interval CHECK (max_wait >= interval '0'),
    statement_timeout interval CHECK (statement_timeout > interval '0'),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT workspace_limit_workspace_key UNIQUE NULLS NOT DISTINCT (workspace_id)
);

COMMENT ON TABLE @extschema@.workspace_limit IS
'Per-workspace limits: workspace_id NULL is the default for every workspace; a workspace''s own row overrides the whole default (NULL in a column: no limit for that item). Written by tenancy.set_limits / clear_limits.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.workspace_limit', '');

CREATE TRIGGER workspace_limit_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.workspace_limit
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.quota_config_changed();

CREATE FUNCTION @extschema@.set_limits(max_active integer, max_wait interval DEFAULT NULL,
                                       statement_timeout interval DEFAULT NULL, workspace uuid DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF max_active < 1 THEN
        RAISE EXCEPTION 'max_active must be at least 1 (or NULL: no limit), not %', max_active
            USING ERRCODE = '22023', HINT = 'To stop a workspace entirely, revoke its access; a limit of 0 would make every statement wait.';
    END IF;
    IF max_wait < interval '0' THEN
        RAISE EXCEPTION 'max_wait must not be negative: %', max_wait
            USING ERRCODE = '22023', HINT = 'interval ''0'' refuses at once when the workspace is at its limit; NULL waits without limit.';
    END IF;
    IF statement_timeout <= interval '0' THEN
        RAISE EXCEPTION 'statement_timeout must be positive: %', statement_timeout
            USING ERRCODE = '22023', HINT = 'NULL leaves the session''s own statement_timeout alone.';
    END IF;
    INSERT INTO @extschema@.workspace_limit AS l (workspace_id, max_active, max_wait, statement_timeout)
    VALUES (workspace, max_active, max_wait, statement_timeout)
    ON CONFLICT ON CONSTRAINT workspace_limit_workspace_key
    DO UPDATE SET max_active = EXCLUDED.max_active, max_wait = EXCLUDED.max_wait,
                  statement_timeout = EXCLUDED.statement_timeout, updated_at = now();
END
$fn$;

COMMENT ON FUNCTION @extschema@.set_limits(integer, interval, interval, uuid) IS
'Sets the limits of one workspace, or (workspace NULL) the default for every workspace: max_active, the most statements of the workspace running at once in the database (nested statements take no extra slot); max_wait, how long a statement waits for a slot before failing with 53000; statement_timeout, applied to the workspace''s statements when smaller than the session''s. NULL: no limit for that item. Transactional and idempotent; takes effect in every backend at commit. 22023 on a bad value.';

CREATE FUNCTION @extschema@.clear_limits(workspace uuid)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $fn$
    DELETE FROM @extschema@.workspace_limit WHERE workspace_id IS NOT DISTINCT FROM workspace;
$fn$;

COMMENT ON FUNCTION @extschema@.clear_limits(uuid) IS
'Removes a workspace''s own limits, so that the default applies to it again; with NULL, removes the default (workspaces without their own row are then unlimited). Idempotent.';

CREATE VIEW @extschema@.workspace_limits AS
WITH slots AS (
    SELECT s.workspace_id, s.active, s.waiting FROM @extschema@._admission_slots() s
     WHERE s.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())
), dflt AS (
    SELECT l.* FROM @extschema@.workspace_limit l WHERE l.workspace_id IS NULL
)
SELECT l.workspace_id, l.max_active, l.max_wait, l.statement_timeout,
       CASE WHEN l.workspace_id IS NULL THEN 'default' ELSE 'workspace' END AS source,
       coalesce(s.active, 0) AS active, coalesce(s.waiting, 0) AS waiting
  FROM @extschema@.workspace_limit l
  LEFT JOIN slots s ON s.workspace_id = l.workspace_id
UNION ALL

SELECT s.workspace_id, d.max_active, d.max_wait, d.statement_timeout, 'default', s.active, s.waiting
  FROM slots s CROSS JOIN dflt d
 WHERE NOT EXISTS (SELECT FROM @extschema@.workspace_limit l WHERE l.workspace_id = s.workspace_id);

COMMENT ON VIEW @extschema@.workspace_limits IS
'Limits in force: the default (workspace_id NULL, source default), each workspace''s own row (source workspace), and each workspace running under the default with statements active now (source default); active and waiting: its statements holding a slot and waiting for one now, in this database.';

REVOKE ALL ON TABLE @extschema@.workspace_limit FROM PUBLIC;

REVOKE ALL ON FUNCTION @extschema@.set_limits(integer, interval, interval, uuid) FROM PUBLIC;

REVOKE ALL ON FUNCTION @extschema@.clear_limits(uuid) FROM PUBLIC;

-- the statistics, with the admission counters
DROP VIEW @extschema@.usage;
DROP VIEW @extschema@.workspace_stats;
DROP FUNCTION @extschema@._workspace_stats();

CREATE  FUNCTION "_workspace_stats"() RETURNS TABLE (
	"workspace_id" uuid,  
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
	"sessions" bigint,  
	"last_activity_us" bigint  
)
STRICT VOLATILE PARALLEL RESTRICTED 
LANGUAGE c 
AS 'MODULE_PATHNAME', 'stats_rows_v2_wrapper';

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

CREATE VIEW @extschema@.usage AS
SELECT q.workspace_id, q.table_name, q.used, q.max_rows, q.source, q.pct,
       s.queries, s.rows, s.exec_time_ms, s.cpu_time_ms, s.quota_rejections, s.last_activity,
       s.admission_rejections, s.wait_time_ms
  FROM @extschema@.quota_usage q
  LEFT JOIN @extschema@.workspace_stats s
    ON s.workspace_id = q.workspace_id AND s.database = pg_catalog.current_database();

COMMENT ON VIEW @extschema@.usage IS
'Who uses what, and how close to their limits: quota_usage joined with this database''s workspace_stats.';

COMMENT ON FUNCTION @extschema@._workspace_stats() IS 'Internal: rows of tenancy.workspace_stats.';
