\set SHOW_CONTEXT never
\set QUIET on
\pset null (null)
\set QUIET off
\echo '== 4. Isolation: row-level security for an application role'
\echo '-- the migration: the application role (neither superuser nor owner), the audited cross-workspace role,'
\echo '-- and the policy on every workspace table (hierarchy option: a parent also reads its active children)'
SELECT tenancy.create_app_role('dittofeed_app');
SELECT tenancy.create_cross_workspace_role('dittofeed_cross_workspace', 'dittofeed_app');
SELECT string_agg(t::text, ', ') AS "tables under the tenancy policy" FROM tenancy.enable_rls_all(hierarchy => true) t;
\echo '-- the audit proves it: no fail rows (the superuser that runs migrations is a warning)'
SELECT severity, count(*), string_agg(DISTINCT "check", ', ') AS checks FROM tenancy.audit() GROUP BY 1 ORDER BY 1;
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
\echo '-- a request for "Parent 1": its own rows and its active children''s; writes stay on the parent'
BEGIN;
SELECT tenancy.set_workspace(id) IS NOT NULL AS context_set FROM "Workspace" WHERE name = 'Parent 1';
SELECT w.name AS workspace, count(*) AS segments_visible
  FROM "Segment" s JOIN "Workspace" w ON w.id = s."workspaceId" GROUP BY 1 ORDER BY 1;
UPDATE "Segment" SET name = name || ' (edited by parent)'
 WHERE "workspaceId" = (SELECT id FROM "Workspace" WHERE name = 'Child 1.1');
ROLLBACK;
\echo '-- a cross-workspace code path (admin key lookup): logged with its reason, for one transaction'
BEGIN;
SELECT tenancy.begin_cross_workspace('admin api key lookup', 'dittofeed_cross_workspace');
SELECT current_user, count(DISTINCT "workspaceId") AS workspaces_visible FROM "Segment";
COMMIT;
SELECT current_user, count(*) AS segments_visible_after_commit FROM "Segment";
RESET ROLE;
