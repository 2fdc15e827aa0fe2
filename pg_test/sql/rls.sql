-- Row-level security helpers: the emitted policy, applying it, and isolation as an
-- application role that is neither superuser nor owner.
\set SHOW_CONTEXT never
\pset null (null)
\set r1 '''b094544e-e377-7a92-7abe-70ec1195aff9'''
\set r2 '''9fe8677b-8f7e-820a-1d36-85897f5546b1'''

-- 1. The DDL a migration can include (identifiers always quoted, schema-qualified).
SELECT tenancy.rls_policy_sql('"Segment"');
CREATE TABLE "Tenant ""Data""; x" ("Wörk ""space"" id" uuid NOT NULL, v int);
SELECT tenancy.rls_policy_sql('"Tenant ""Data""; x"', 'Wörk "space" id');

-- 2. Bad input.
SELECT tenancy.rls_policy_sql('"Segment"', 'no_such_column');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.rls_policy_sql('"Segment"', 'name');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.enable_rls_all('no_such_schema');
\echo :LAST_ERROR_SQLSTATE

-- 3. Apply to every table with "workspaceId"; idempotent.
SELECT tenancy.enable_rls_all();
SELECT count(*) AS tables FROM tenancy.enable_rls_all();
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, p.polname, pg_get_expr(p.polqual, p.polrelid) AS using_expr
  FROM pg_class c JOIN pg_policy p ON p.polrelid = c.oid
 WHERE c.relname IN ('Segment', 'EmailTemplate') ORDER BY 1;

-- 4. Isolation as a non-superuser, non-owner role.
CREATE ROLE tenancy_regress_rls LOGIN;
GRANT USAGE ON SCHEMA fixture TO tenancy_regress_rls;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO tenancy_regress_rls;
SET ROLE tenancy_regress_rls;
-- no context: nothing visible, nothing writable
SELECT count(*) AS visible_without_context FROM "Segment";
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (:r1, 'no-context', '{}');
\echo :LAST_ERROR_SQLSTATE
UPDATE "Segment" SET name = name || '!' RETURNING name;
DELETE FROM "Segment" RETURNING name;
-- context r1: only r1's rows
BEGIN;
SELECT tenancy.set_workspace(:r1) IS NOT NULL AS context_set;
SELECT count(DISTINCT "workspaceId") AS workspaces_visible, bool_and("workspaceId" = :r1) AS all_mine FROM "Segment";
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (:r1, 'mine', '{}') RETURNING name;
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (:r2, 'theirs', '{}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT tenancy.set_workspace(:r1) IS NOT NULL AS context_set;
-- moving a row into another workspace is refused; other workspaces' rows are untouched
UPDATE "Segment" SET "workspaceId" = :r2 WHERE name = 'segment-1';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT tenancy.set_workspace(:r1) IS NOT NULL AS context_set;
UPDATE "Segment" SET definition = '{"touched": true}' WHERE name = 'segment-2' RETURNING "workspaceId" = :r1 AS mine;
DELETE FROM "Segment" WHERE name = 'segment-3' RETURNING "workspaceId" = :r1 AS mine;
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (:r1, 'segment-2', '{}')
    ON CONFLICT ("workspaceId", name) DO UPDATE SET definition = '{"upserted": true}' RETURNING "workspaceId" = :r1 AS mine;
ROLLBACK;
RESET ROLE;
-- nothing of r2 changed
SELECT count(*) AS r2_rows_touched FROM "Segment" WHERE "workspaceId" = :r2 AND definition ? 'touched';

-- 5. The form for Citus (distributed => true; chosen by default where the citus extension is
-- installed): no sub-selects; the hierarchy option as permissive policies per command, since
-- Citus creates shard policies without AS RESTRICTIVE. audit() knows both forms.
SELECT tenancy.rls_policy_sql('"Segment"', distributed => true);
SELECT tenancy.rls_policy_sql('"Segment"', hierarchy => true, distributed => true);
SELECT tenancy.enable_rls('"Segment"', hierarchy => true, distributed => true);
SELECT polname, polcmd, polpermissive, pg_get_expr(polqual, polrelid) AS using, pg_get_expr(polwithcheck, polrelid) AS check
  FROM pg_policy WHERE polrelid = '"Segment"'::regclass ORDER BY polname;
SELECT tenancy._policy_state('"Segment"'::regclass, 'workspaceId');
SELECT tenancy.enable_rls('"Segment"', distributed => true);
SELECT tenancy._policy_state('"Segment"'::regclass, 'workspaceId');
SELECT count(*) AS policies FROM pg_policy WHERE polrelid = '"Segment"'::regclass;
-- without Citus the per-row calls are worth a warning
SELECT "check", object FROM tenancy.audit() WHERE object LIKE '%"Segment"%' AND severity <> 'info';
SET ROLE tenancy_regress_rls;
BEGIN;
SELECT tenancy.set_workspace(:r1) IS NOT NULL AS context_set;
SELECT count(*) FILTER (WHERE "workspaceId" <> :r1) AS foreign_rows, count(*) > 0 AS some_rows FROM "Segment";
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (:r2, 'theirs', '{}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
SELECT tenancy.enable_rls('"Segment"');
SELECT tenancy._policy_state('"Segment"'::regclass, 'workspaceId');

-- 6. disable_rls turns it off again; idempotent.
SELECT tenancy.disable_rls('"Segment"');
SELECT tenancy.disable_rls('"Segment"');
SELECT relrowsecurity, relforcerowsecurity, (SELECT count(*) FROM pg_policy WHERE polrelid = '"Segment"'::regclass) AS policies
  FROM pg_class WHERE oid = '"Segment"'::regclass;
SELECT tenancy.disable_rls(t) FROM tenancy.enable_rls_all() t;
DROP TABLE "Tenant ""Data""; x";
DROP OWNED BY tenancy_regress_rls;
DROP ROLE tenancy_regress_rls;
