-- Hierarchy option of the isolation policy (a Parent also reads its Active Children, writes stay
-- on the current workspace), the application role, and the audited cross-workspace path.
\set SHOW_CONTEXT never
\pset null (null)
\set root '''b094544e-e377-7a92-7abe-70ec1195aff9'''
-- (quota deleted child 1001 earlier in this database: parent 2 and its children serve here)
SELECT fixture.ws_id('parent', 2) AS p1, fixture.ws_id('child', 2001) AS c1, fixture.ws_id('child', 2002) AS c2 \gset

-- 1. The emitted DDL, and bad input.
SELECT tenancy.rls_policy_sql('"Journey"', hierarchy => true);
SELECT tenancy.rls_policy_sql('"Journey"', 'workspaceId', NULL);
\echo :LAST_ERROR_SQLSTATE

-- 2. readable_workspace_ids(): NULL without context; a parent reads its active children only.
SELECT tenancy.readable_workspace_ids() AS unset;
UPDATE "Workspace" SET status = 'Paused' WHERE id = :'c2';
BEGIN;
SELECT tenancy.set_workspace(:'p1') IS NOT NULL AS context_set;
SELECT tenancy.readable_workspace_ids() = ARRAY[:'p1', :'c1']::uuid[] AS parent_and_active_child;
SET LOCAL tenancy.registry_parent_column = '';
SELECT tenancy.readable_workspace_ids() = ARRAY[:'p1']::uuid[] AS hierarchy_disabled;
SET LOCAL tenancy.registry_parent_column = 'no such column';
SELECT tenancy.readable_workspace_ids();
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT tenancy.set_workspace(:'c1') IS NOT NULL AS context_set;
SELECT tenancy.readable_workspace_ids() = ARRAY[:'c1']::uuid[] AS child_reads_itself;
SELECT tenancy.set_workspace(:root) IS NOT NULL AS context_set;
SELECT tenancy.readable_workspace_ids() = ARRAY[:root]::uuid[] AS root_reads_itself;
ROLLBACK;

-- 3. The application role and the hierarchy policy at work.
SELECT tenancy.create_app_role('tenancy_regress_app');
SELECT tenancy.create_app_role('tenancy_regress_app'); -- idempotent
SELECT rolcanlogin, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'tenancy_regress_app';
SELECT has_table_privilege('tenancy_regress_app', '"Segment"', 'SELECT, INSERT, UPDATE, DELETE') AS dml,
       has_table_privilege('tenancy_regress_app', '"Segment"', 'TRUNCATE') AS truncate;
SELECT tenancy.create_app_role('postgres');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.create_app_role(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS tables FROM tenancy.enable_rls_all(hierarchy => true);
SELECT polname, polpermissive, polcmd, pg_get_expr(polqual, polrelid) AS using_expr
  FROM pg_policy WHERE polrelid = '"Segment"'::regclass ORDER BY polname;
SET ROLE tenancy_regress_app;
BEGIN;
SELECT tenancy.set_workspace(:'p1') IS NOT NULL AS context_set;
-- reads: the parent's own rows and its active child's, not the paused child's, nobody else's
SELECT CASE "workspaceId" WHEN :'p1' THEN 'parent' WHEN :'c1' THEN 'active child' ELSE 'OTHER' END AS owner, count(*)
  FROM "Segment" GROUP BY 1 ORDER BY 1;
-- the readable set is computed once (InitPlan) and is an index condition on the workspace column
-- (the fixture is small: without enable_seqscan = off the planner prefers a sequential scan)
SET LOCAL enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM "Segment" WHERE name = 'segment-1';
RESET enable_seqscan;
-- writes stay on the parent: a child's rows can be read but not changed
UPDATE "Segment" SET definition = '{"by": "parent"}' WHERE "workspaceId" = :'c1';
DELETE FROM "Segment" WHERE "workspaceId" = :'c1';
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (:'c1', 'from parent', '{}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT tenancy.set_workspace(:'p1') IS NOT NULL AS context_set;
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (:'c1', 'segment-1', '{}')
    ON CONFLICT ("workspaceId", name) DO UPDATE SET definition = '{"by": "parent"}';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT tenancy.set_workspace(:'p1') IS NOT NULL AS context_set;
WITH u AS (UPDATE "Segment" SET definition = '{"by": "parent"}' WHERE "workspaceId" = :'p1' RETURNING 1)
SELECT count(*) AS parent_rows_updated FROM u;
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (:'p1', 'parent own', '{}') RETURNING name;
ROLLBACK;
-- a child reads only itself
BEGIN;
SELECT tenancy.set_workspace(:'c1') IS NOT NULL AS context_set;
SELECT count(DISTINCT "workspaceId") AS workspaces_visible FROM "Segment";
ROLLBACK;
-- no context: nothing
SELECT count(*) AS visible_without_context FROM "Segment";
-- the registry: no deletes (the cascade would ignore row-level security), no re-parenting
DELETE FROM "Workspace" WHERE id = :'c2';
\echo :LAST_ERROR_SQLSTATE
UPDATE "Workspace" SET "parentWorkspaceId" = :'p1' WHERE id = :root;
\echo :LAST_ERROR_SQLSTATE

-- 4. The audited cross-workspace path.
SELECT tenancy.begin_cross_workspace('admin key lookup');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT tenancy.create_cross_workspace_role('tenancy_regress_cross', 'tenancy_regress_app');
SELECT tenancy.create_cross_workspace_role('tenancy_regress_cross', 'tenancy_regress_app'); -- idempotent
SELECT rolcanlogin, rolbypassrls, pg_has_role('tenancy_regress_app', oid, 'MEMBER') AS app_may_assume,
       pg_has_role('tenancy_regress_app', oid, 'USAGE') AS app_inherits_privileges
  FROM pg_roles WHERE rolname = 'tenancy_regress_cross';
SELECT tenancy.create_cross_workspace_role('tenancy_regress_app', 'tenancy_regress_app');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.create_cross_workspace_role('tenancy_regress_cross', 'no_such_role');
\echo :LAST_ERROR_SQLSTATE
-- a member that inherits privileges would use the role's registry DELETE without the logged switch
CREATE ROLE tenancy_regress_inherit LOGIN INHERIT;
SELECT tenancy.create_cross_workspace_role('tenancy_regress_cross', 'tenancy_regress_inherit');
\echo :LAST_ERROR_SQLSTATE
DROP ROLE tenancy_regress_inherit;
SET SESSION AUTHORIZATION tenancy_regress_app;
BEGIN;
SELECT tenancy.begin_cross_workspace('');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT tenancy.begin_cross_workspace('compute workflow: list every workspace', 'tenancy_regress_cross');
SELECT current_user, count(DISTINCT "workspaceId") > 3 AS sees_every_workspace FROM "Segment";
COMMIT;
-- it ended with the transaction
SELECT current_user, count(*) AS visible_without_context FROM "Segment";
RESET SESSION AUTHORIZATION;

-- 5. Back to the plain policy: the restrictive policies go.
SELECT count(*) AS tables FROM tenancy.enable_rls_all();
SELECT polname FROM pg_policy WHERE polrelid = '"Segment"'::regclass ORDER BY polname;
SELECT count(*) AS tables FROM (SELECT tenancy.disable_rls(t) FROM tenancy.enable_rls_all() t) d;
UPDATE "Workspace" SET status = 'Active' WHERE id = :'c2';
DROP OWNED BY tenancy_regress_cross;
DROP ROLE tenancy_regress_cross;
DROP OWNED BY tenancy_regress_app;
DROP ROLE tenancy_regress_app;
