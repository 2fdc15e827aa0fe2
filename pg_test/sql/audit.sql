-- Audit of workspace isolation (tenancy.audit) and index advice (tenancy.index_advice). Runs as
-- the superuser after rls, which leaves row-level security off on every table. Roles are
-- cluster-wide: rows about roles are limited to the roles this test creates, and the database
-- name and the suggested application role name are masked.
\set SHOW_CONTEXT never
\pset null (null)

CREATE FUNCTION pg_temp.audit(col name DEFAULT 'workspaceId')
RETURNS TABLE (severity text, "check" text, object text, detail text, fix text)
LANGUAGE sql AS $$
    SELECT a.severity, a."check",
           CASE WHEN a.object LIKE 'database %' THEN 'database (current)' ELSE a.object END,
           a.detail,
           regexp_replace(a.fix, 'create_app_role\(''[^'']*''', 'create_app_role(''app''', 'g')
      FROM tenancy.audit(col) AS a
     WHERE (a.object NOT LIKE 'role %' OR a.object LIKE 'role "tenancy\_regress\_audit%')
       AND a."check" <> 'shared_preload_libraries'
$$;

-- 1. The fixture as rls left it: no row-level security, the application would connect as the
--    superuser. Fails per table and for the missing application role.
SELECT "check", severity, count(*) FROM pg_temp.audit() GROUP BY 1, 2 ORDER BY 1;
SELECT "check", severity FROM tenancy.audit() WHERE "check" = 'shared_preload_libraries';

-- 2. A table created without row-level security (hostile names), a second one referencing it
--    without the workspace column, owned by a login role.
CREATE SCHEMA "Audit ""S""; é";
CREATE TABLE "Audit ""S""; é"."Tenant ""Data""; x" (id int PRIMARY KEY, "Wörk ""space"" id" uuid NOT NULL);
CREATE TABLE "Audit ""S""; é"."Other 'T'" (id int PRIMARY KEY, "Wörk ""space"" id" uuid NOT NULL,
    "Ref; ""t""" int REFERENCES "Audit ""S""; é"."Tenant ""Data""; x" (id) ON DELETE SET NULL);
CREATE ROLE "tenancy_regress_audit ""owner""" LOGIN;
GRANT USAGE ON SCHEMA "Audit ""S""; é" TO "tenancy_regress_audit ""owner""";
ALTER TABLE "Audit ""S""; é"."Other 'T'" OWNER TO "tenancy_regress_audit ""owner""";
\x on
SELECT * FROM pg_temp.audit('Wörk "space" id');
\x off
-- every fix works (the application role under this test's name)
SELECT replace(fix, 'create_app_role(''app''', 'create_app_role(''tenancy_regress_audit_app''')
  FROM pg_temp.audit('Wörk "space" id') WHERE fix IS NOT NULL AND NOT fix LIKE '%CONCURRENTLY%' \gexec
SELECT severity, "check", object, fix FROM pg_temp.audit('Wörk "space" id');
-- FORCE keeps the owner under row-level security; it can still turn it off (warn)
SELECT severity, "check", detail FROM pg_temp.audit('Wörk "space" id') WHERE "check" = 'owner_login';

-- 3. Index advice on that table, with an invalid index left by a failed CREATE INDEX CONCURRENTLY.
INSERT INTO "Audit ""S""; é"."Tenant ""Data""; x" VALUES (1, '00000000-0000-0000-0000-00000000000a'),
                                                        (2, '00000000-0000-0000-0000-00000000000a');
CREATE UNIQUE INDEX CONCURRENTLY "Audit ""idx""" ON "Audit ""S""; é"."Tenant ""Data""; x" ("Wörk ""space"" id");
\x on
SELECT * FROM tenancy.index_advice('Wörk "space" id');
\x off
DELETE FROM "Audit ""S""; é"."Tenant ""Data""; x" WHERE id = 2;
SELECT ddl FROM tenancy.index_advice('Wörk "space" id') \gexec
SELECT * FROM tenancy.index_advice('Wörk "space" id');
SELECT severity, "check", object FROM pg_temp.audit('Wörk "space" id');

-- 4. The fixture isolated: enable_rls_all and an application role (not superuser, not BYPASSRLS,
--    owning nothing, with DML on the tables). No fails; the foreign keys without "workspaceId"
--    and the two tables without a workspace index are warnings.
SELECT count(*) AS tables FROM tenancy.enable_rls_all();
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO tenancy_regress_audit_app;
SELECT severity, "check", object FROM pg_temp.audit();
-- a composite foreign key fix, applied and undone
SELECT fix FROM pg_temp.audit() WHERE object = 'constraint "Segment_subscriptionGroupId_fkey" on "public"."Segment"';
BEGIN;
SELECT fix FROM pg_temp.audit() WHERE object = 'constraint "Segment_subscriptionGroupId_fkey" on "public"."Segment"' \gexec
SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'Segment_subscriptionGroupId_fkey';
SELECT count(*) AS still_reported FROM pg_temp.audit() WHERE "check" = 'fk_without_workspace' AND object LIKE '%"Segment_subscriptionGroupId_fkey"%';
ROLLBACK;

-- 5. One crafted object per check.
CREATE VIEW "Audit view ""v""" AS SELECT id, name FROM "Segment";
CREATE VIEW audit_view_invoker WITH (security_invoker = true) AS SELECT id, name FROM "Segment";
CREATE MATERIALIZED VIEW audit_mv AS SELECT "workspaceId", count(*) FROM "Segment" GROUP BY 1;
CREATE FUNCTION audit_count_segments() RETURNS bigint LANGUAGE sql SECURITY DEFINER
AS $$ SELECT count(*) FROM "Segment" $$;
CREATE ROLE tenancy_regress_audit_definer NOLOGIN;
CREATE FUNCTION audit_count_journeys() RETURNS bigint LANGUAGE sql SECURITY DEFINER
AS $$ SELECT count(*) FROM "Journey" $$;
ALTER FUNCTION audit_count_journeys() OWNER TO tenancy_regress_audit_definer;
CREATE ROLE "tenancy_regress_audit ""bypass""" LOGIN BYPASSRLS;
SELECT tenancy.create_cross_workspace_role('tenancy_regress_audit_cross', 'tenancy_regress_audit_app');
GRANT TRUNCATE ON "Journey" TO tenancy_regress_audit_app;
ALTER POLICY tenancy_isolation ON "Secret" USING (true);
CREATE POLICY audit_per_row ON "Broadcast" USING ("workspaceId" = current_setting('tenancy.workspace_id')::uuid);
SELECT tenancy.enable_rls('"MessageTemplate"', hierarchy => true);
DROP POLICY tenancy_isolation_delete ON "MessageTemplate";
\x on
SELECT * FROM pg_temp.audit()
 WHERE severity <> 'info' AND "check" NOT IN ('fk_without_workspace', 'missing_workspace_index');
\x off
SELECT detail FROM pg_temp.audit() WHERE "check" = 'bypassrls_role';
SELECT fix FROM pg_temp.audit() WHERE fix IS NOT NULL AND "check" NOT IN ('fk_without_workspace', 'missing_workspace_index') \gexec
-- left: the per-row call (a policy of the application's: no automatic fix) and the materialized view
SELECT severity, "check", object FROM pg_temp.audit()
 WHERE "check" NOT IN ('fk_without_workspace', 'missing_workspace_index', 'isolated');
SELECT detail FROM pg_temp.audit() WHERE object LIKE 'table "public"."MessageTemplate"';
DROP POLICY audit_per_row ON "Broadcast";
DROP MATERIALIZED VIEW audit_mv;

-- 6. Index advice on the fixture: EmailTemplate and UserPropertyIndex lack a workspace index,
--    and these foreign-key columns lead no index (WriteKey's ("workspaceId", "secretId") does
--    not serve lookups by "secretId" alone; UserPropertyIndex's unique "userPropertyId" does).
SELECT table_name, ddl FROM tenancy.index_advice();
\x on
SELECT * FROM tenancy.index_advice() WHERE table_name IN ('"EmailTemplate"'::regclass, '"WriteKey"'::regclass);
\x off
SELECT ddl FROM tenancy.index_advice() \gexec
SELECT * FROM tenancy.index_advice();
SELECT severity, "check", object FROM pg_temp.audit() WHERE "check" = 'missing_workspace_index';

-- 7. Bad input, and who may run it.
SELECT * FROM tenancy.audit(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM tenancy.index_advice(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS no_such_column FROM tenancy.audit('no such column');
SELECT count(*) AS no_such_column FROM tenancy.index_advice('no such column');
SELECT count(*) AS not_uuid FROM tenancy.audit('name');
SET ROLE tenancy_regress_audit_app;
SELECT count(*) FROM tenancy.audit();
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM tenancy.index_advice();
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- 8. Clean up.
DROP VIEW "Audit view ""v""", audit_view_invoker;
DROP FUNCTION audit_count_segments(), audit_count_journeys();
DROP SCHEMA "Audit ""S""; é" CASCADE;
SELECT count(*) AS tables FROM (SELECT tenancy.disable_rls(t) FROM tenancy.enable_rls_all() t) d;
DROP OWNED BY tenancy_regress_audit_cross;
DROP ROLE tenancy_regress_audit_cross;
DROP OWNED BY tenancy_regress_audit_app;
DROP ROLE tenancy_regress_audit_app;
DROP OWNED BY tenancy_regress_audit_definer;
DROP ROLE tenancy_regress_audit_definer;
DROP OWNED BY "tenancy_regress_audit ""owner""";
DROP ROLE "tenancy_regress_audit ""owner""";
DROP OWNED BY "tenancy_regress_audit ""bypass""";
DROP ROLE "tenancy_regress_audit ""bypass""";
