-- tenancy 0.2.0 -> 0.3.0 (ALTER EXTENSION tenancy UPDATE TO '0.3.0'): index advice from the
-- observed workload (issue 14).
-- - new: tenancy._workload_advice(text, integer) (C, revoked from PUBLIC): the workload rows,
--   from pg_qualstats, verified with hypopg;
-- - index_advice(name) gains the columns queries, calls, cost_before and cost_after: dropped and
--   created again (nothing depends on it), with its grant;
-- - new: index_advice_usage(name), whether the advised indexes are used since.
-- Statements taken from tenancy--0.3.0.sql (scripts/upgrade-draft.py); tests/upgrade.rs checks
-- the result against a fresh install. Released: never edit this file (docs/releasing.md).

\echo Use "ALTER EXTENSION tenancy UPDATE TO '0.3.0'" to load this file. \quit

CREATE  FUNCTION "_workload_advice"(
	"workspace_column" TEXT, 
	"max_queries" INT DEFAULT 200 
) RETURNS TABLE (
	"relid" oid,  
	"kind" TEXT,  
	"reason" TEXT,  
	"ddl" TEXT,  
	"queries" TEXT,  
	"calls" bigint,  
	"cost_before" double precision,  
	"cost_after" double precision  
)
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c 
AS 'MODULE_PATHNAME', 'workload_advice_wrapper';

REVOKE ALL ON FUNCTION @extschema@._workload_advice(text, integer) FROM PUBLIC;

COMMENT ON FUNCTION @extschema@._workload_advice(text, integer) IS
'Internal: the workload rows of index_advice() (kind workload_index, redundant_index or note), from pg_qualstats and verified with hypopg; plans observed queries as the roles that ran them.';

DROP FUNCTION @extschema@.index_advice(name);
CREATE FUNCTION @extschema@.index_advice(workspace_column name DEFAULT 'workspaceId')
RETURNS TABLE (table_name regclass, reason text, ddl text, queries text, calls bigint,
               cost_before numeric, cost_after numeric)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF workspace_column IS NULL THEN
        RAISE EXCEPTION 'workspace column must not be NULL' USING ERRCODE = '22004';
    END IF;
    RETURN QUERY
        WITH workload AS MATERIALIZED (
            SELECT * FROM @extschema@._workload_advice(workspace_column)
        ), catalog AS (
            SELECT a.relid, a.kind, a.reason, a.ddl FROM @extschema@._index_advice(workspace_column) AS a
             -- an advised workload index leads with the workspace column: it is the workspace index
             WHERE NOT (a.kind = 'workspace_index'
                        AND EXISTS (SELECT FROM workload w WHERE w.relid = a.relid AND w.kind = 'workload_index'))
        ), advice AS (
            SELECT c.relid, 1 AS section, c.reason, c.ddl, NULL::text AS queries, NULL::bigint AS calls,
                   NULL::float8 AS cost_before, NULL::float8 AS cost_after
              FROM catalog c
            UNION ALL
            SELECT w.relid, CASE w.kind WHEN 'note' THEN 0 WHEN 'workload_index' THEN 2 ELSE 3 END,
                   CASE w.kind WHEN 'note' THEN 'note: ' || w.reason ELSE w.reason END,
                   w.ddl, w.queries, w.calls, w.cost_before, w.cost_after
              FROM workload w
        )
        SELECT a.relid::regclass, a.reason, a.ddl, a.queries, a.calls,
               round(a.cost_before::numeric, 2), round(a.cost_after::numeric, 2)
          FROM advice a
          LEFT JOIN pg_class c ON c.oid = a.relid
          LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
         ORDER BY a.relid IS NOT NULL, n.nspname COLLATE "C", c.relname COLLATE "C", a.section,
                  a.reason COLLATE "C", a.ddl COLLATE "C";
END
$fn$;

COMMENT ON FUNCTION @extschema@.index_advice(name) IS
'Indexes workspace-scoped access needs on the tenant tables (tables with the uuid workspace column). From the catalog: (a) an index led by the workspace column where none is valid; (b) for each foreign key of a tenant table (except the workspace column alone) whose columns lead no index: (key columns..., workspace column); (c) invalid indexes: REINDEX INDEX CONCURRENTLY. From the observed workload (with pg_qualstats; verified with hypopg): composite indexes led by the workspace column, then the equality columns, then the sort (with its direction) or a range column, merged across queries, each with the queries it serves (calls as sampled by pg_qualstats) and the planner''s estimated cost per execution before and after; existing indexes an advised one makes redundant (DROP INDEX CONCURRENTLY); notes (table_name NULL) on what is missing. Every ddl uses CONCURRENTLY: run each outside a transaction block. Error 22004 on NULL.';

CREATE FUNCTION @extschema@.index_advice_usage(workspace_column name DEFAULT 'workspaceId')
RETURNS TABLE (index_name regclass, table_name regclass, scans bigint, size text, verdict text, ddl text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF workspace_column IS NULL THEN
        RAISE EXCEPTION 'workspace column must not be NULL' USING ERRCODE = '22004';
    END IF;
    RETURN QUERY
        SELECT i.indexrelid::regclass, i.indrelid::regclass, coalesce(s.idx_scan, 0),
               pg_size_pretty(pg_relation_size(i.indexrelid)),
               CASE WHEN NOT i.indisvalid THEN 'invalid (a failed CREATE INDEX CONCURRENTLY): drop it and create it again'
                    WHEN coalesce(s.idx_scan, 0) > 0 THEN format('used: %s scans since it was created (or since the statistics were reset)', s.idx_scan)
                    ELSE 'unused since it was created (or since the statistics were reset): if the workload has run since, drop it' END,
               CASE WHEN NOT i.indisvalid OR coalesce(s.idx_scan, 0) = 0
                    THEN format('DROP INDEX CONCURRENTLY %s;', i.indexrelid::regclass) END
          FROM @extschema@._tenant_tables(workspace_column) AS t
          JOIN pg_index i ON i.indrelid = t.relid
          JOIN pg_class ic ON ic.oid = i.indexrelid
          LEFT JOIN pg_stat_all_indexes s ON s.indexrelid = i.indexrelid
         WHERE ic.relname LIKE '%\_tenancy\_idx'
         ORDER BY t.nspname COLLATE "C", t.relname COLLATE "C", ic.relname COLLATE "C";
END
$fn$;

COMMENT ON FUNCTION @extschema@.index_advice_usage(name) IS
'After applying index_advice(): the advised indexes (named ..._tenancy_idx) on the tenant tables, their scans since they were created (pg_stat_all_indexes.idx_scan) and size, and for an unused or invalid one the DROP INDEX CONCURRENTLY to run. Error 22004 on NULL.';

REVOKE ALL ON FUNCTION @extschema@.index_advice(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.index_advice_usage(name) FROM PUBLIC;
