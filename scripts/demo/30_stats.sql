\set SHOW_CONTEXT never
\set QUIET on
\pset null (null)
\set QUIET off
\echo '== 3. Usage statistics per workspace (shared memory)'
\echo '-- a short mixed workload from several workspaces, as the application would run it'
DO $$
DECLARE
    w record;
BEGIN
    FOR w IN SELECT id, name, row_number() OVER (ORDER BY name) AS n
               FROM "Workspace" WHERE status = 'Active' AND type <> 'Parent' ORDER BY name LIMIT 4 LOOP
        PERFORM set_config('tenancy.workspace_id', w.id::text, true);
        FOR i IN 1 .. w.n * 5 LOOP
            PERFORM count(*) FROM "Segment" WHERE "workspaceId" = w.id AND status = 'Running';
            PERFORM name FROM "Journey" WHERE "workspaceId" = w.id ORDER BY "updatedAt" DESC LIMIT 10;
        END LOOP;
        INSERT INTO "Journey" ("workspaceId", name) VALUES (w.id, 'demo-journey-' || w.n);
    END LOOP;
    PERFORM set_config('tenancy.workspace_id', '', true);
END $$;
\echo '-- who uses the database (statements run inside the DO block count as nested)'
SELECT w.name AS workspace, s.queries, s.nested_queries, s.rows, s.exec_time_ms, s.quota_rows_added, s.last_activity IS NOT NULL AS active
  FROM tenancy.workspace_stats s JOIN "Workspace" w ON w.id = s.workspace_id
 WHERE s.database = current_database() ORDER BY s.nested_queries DESC;
\echo '-- who uses what, and how close to their limits'
SELECT w.name AS workspace, u.table_name, u.used, u.max_rows, u.pct, u.queries, u.rows AS rows_read_or_written
  FROM tenancy.usage u JOIN "Workspace" w ON w.id = u.workspace_id
 WHERE u.table_name = '"Segment"'::regclass ORDER BY u.pct DESC NULLS LAST LIMIT 5;
\echo '-- capacity of the statistics table'
SELECT * FROM tenancy.stats_info;
