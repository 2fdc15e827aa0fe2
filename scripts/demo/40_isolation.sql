\set SHOW_CONTEXT never
\set QUIET on
\pset null (null)
\set QUIET off
\echo '== 4. Isolation: row-level security for an application role'
\echo '-- the migration: an application role that is neither superuser nor owner, and the policy on every workspace table'
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dittofeed_app') THEN
        CREATE ROLE dittofeed_app LOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
END $$;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO dittofeed_app;
SELECT string_agg(t::text, ', ') AS "tables under the tenancy policy" FROM tenancy.enable_rls_all() t;
SET ROLE dittofeed_app;
\echo '-- no context: the application sees nothing (fail closed)'
SELECT count(*) AS segments_visible FROM "Segment";
\echo '-- a request for "Root 2": only its rows, whatever the query asks for'
BEGIN;
SELECT tenancy.set_workspace(id) IS NOT NULL AS context_set FROM "Workspace" WHERE name = 'Root 2';
SELECT count(*) AS segments_visible, count(DISTINCT "workspaceId") AS workspaces FROM "Segment";
SELECT count(*) AS "segments of Root 1 (asked explicitly)" FROM "Segment"
 WHERE "workspaceId" = (SELECT id FROM "Workspace" WHERE name = 'Root 1');
\echo '-- writing into another workspace is refused (SQLSTATE 42501: map it to HTTP 403)'
INSERT INTO "Segment" ("workspaceId", name, definition)
SELECT id, 'sneaky', '{}' FROM "Workspace" WHERE name = 'Root 1';
ROLLBACK;
RESET ROLE;
