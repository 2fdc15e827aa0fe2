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

-- 8. Roles that can leave row-level security behind (roles named audit_sec_*; rows about other
--    roles are left out). A login role with CREATEROLE and DML on every table: in PostgreSQL 15
--    it grants itself the cross-workspace (BYPASSRLS) role and reads every workspace, unlogged.
CREATE ROLE audit_sec_creator LOGIN NOINHERIT CREATEROLE CREATEDB REPLICATION;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO audit_sec_creator;
CREATE FUNCTION pg_temp.audit_sec()
RETURNS TABLE (severity text, "check" text, object text, detail text, fix text)
LANGUAGE sql AS $$
    SELECT a.* FROM tenancy.audit() AS a
     WHERE (a.object LIKE 'role "audit\_sec\_%' OR a.object = 'role "tenancy_regress_audit_cross"')
       AND a."check" <> 'registry_writable'
$$;
\x on
SELECT * FROM pg_temp.audit_sec();
\x off
SET SESSION AUTHORIZATION audit_sec_creator;
SELECT count(*) AS visible_without_context FROM "Segment";
GRANT tenancy_regress_audit_cross TO audit_sec_creator;
SET ROLE tenancy_regress_audit_cross;
SELECT current_user, count(DISTINCT "workspaceId") > 3 AS sees_every_workspace FROM "Segment";
RESET ROLE;
RESET SESSION AUTHORIZATION;
-- audit: still a fail, and now a member of the cross-workspace role
SELECT severity, "check", object, detail FROM pg_temp.audit_sec() WHERE "check" IN ('createrole_login', 'bypassrls_role');
-- create_app_role takes CREATEROLE, CREATEDB and REPLICATION away (and INHERIT, as before)
REVOKE tenancy_regress_audit_cross FROM audit_sec_creator;
ALTER ROLE audit_sec_creator INHERIT;
SELECT tenancy.create_app_role('audit_sec_creator');
SELECT rolcanlogin, rolinherit, rolcreaterole, rolcreatedb, rolreplication, rolsuper, rolbypassrls
  FROM pg_roles WHERE rolname = 'audit_sec_creator';
SELECT severity, "check", object FROM pg_temp.audit_sec();
SET SESSION AUTHORIZATION audit_sec_creator;
GRANT tenancy_regress_audit_cross TO audit_sec_creator;
\echo :LAST_ERROR_SQLSTATE
RESET SESSION AUTHORIZATION;
-- the same power reached by SET ROLE: a member of a role with CREATEROLE or of a superuser role,
-- a member of a group holding ADMIN OPTION on the cross-workspace role; REPLICATION (warn)
CREATE ROLE audit_sec_admins NOLOGIN CREATEROLE;
CREATE ROLE audit_sec_supers NOLOGIN SUPERUSER;
CREATE ROLE audit_sec_ops NOLOGIN;
CREATE ROLE audit_sec_member LOGIN NOINHERIT IN ROLE audit_sec_admins, audit_sec_supers;
CREATE ROLE audit_sec_granter LOGIN NOINHERIT IN ROLE audit_sec_ops;
CREATE ROLE audit_sec_replica LOGIN REPLICATION;
GRANT tenancy_regress_audit_cross TO audit_sec_ops WITH ADMIN OPTION;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO audit_sec_member, audit_sec_granter, audit_sec_replica;
\x on
SELECT * FROM pg_temp.audit_sec() WHERE severity <> 'info';
\x off
SELECT fix FROM pg_temp.audit_sec() WHERE fix IS NOT NULL \gexec
SELECT severity, "check", object, detail FROM pg_temp.audit_sec();

-- 9. SECURITY DEFINER functions: a SQL-standard body (BEGIN ATOMIC: no source text) found through
--    its dependencies, also through a view; dynamic SQL naming the table in a string; a function
--    reading only "SegmentAssignment" is not reported for "Segment".
CREATE FUNCTION audit_sec_atomic() RETURNS bigint LANGUAGE sql SECURITY DEFINER
BEGIN ATOMIC SELECT count(*) FROM "Segment"; END;
CREATE FUNCTION audit_sec_atomic_view() RETURNS bigint LANGUAGE sql SECURITY DEFINER
BEGIN ATOMIC SELECT count(*) FROM audit_view_invoker; END;
CREATE FUNCTION audit_sec_assignments() RETURNS bigint LANGUAGE sql SECURITY DEFINER
AS $$ SELECT count(*) FROM "SegmentAssignment" $$;
CREATE FUNCTION audit_sec_dynamic() RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER
AS $$ DECLARE n bigint; BEGIN EXECUTE format('SELECT count(*) FROM %I', 'Journey') INTO n; RETURN n; END $$;
SELECT severity, object, detail FROM pg_temp.audit() WHERE "check" = 'security_definer_function';
SELECT fix FROM pg_temp.audit() WHERE "check" = 'security_definer_function' \gexec
SELECT count(*) AS still_reported FROM pg_temp.audit() WHERE "check" = 'security_definer_function';

-- 10. begin_cross_workspace writes one log line whatever the reason and application_name hold:
--     each value as a JSON string (line breaks and other control characters escaped), so a
--     newline cannot start a forged log line. The LOG line is shown here through
--     client_min_messages (the server log gets the same line).
SET SESSION AUTHORIZATION tenancy_regress_audit_app;
BEGIN;
SET LOCAL application_name = 'app", reason: "forged';
SET LOCAL client_min_messages = log;
SELECT tenancy.begin_cross_workspace(E'nightly export\n2026-01-01 00:00:00.000 UTC [1] postgres LOG:  forged line',
                                     'tenancy_regress_audit_cross');
ROLLBACK;
BEGIN;
SET LOCAL application_name = 'nightly worker';
SET LOCAL client_min_messages = log;
SELECT tenancy.begin_cross_workspace(E'tab\there, "quotes" and \\ backslash, CR\rNEL\u0085LS\u2028end',
                                     'tenancy_regress_audit_cross');
ROLLBACK;
RESET SESSION AUTHORIZATION;

-- 11. Clean up.
DROP FUNCTION audit_sec_atomic(), audit_sec_atomic_view(), audit_sec_assignments(), audit_sec_dynamic();
DROP OWNED BY audit_sec_creator, audit_sec_member, audit_sec_granter, audit_sec_replica, audit_sec_ops;
DROP ROLE audit_sec_creator, audit_sec_member, audit_sec_granter, audit_sec_replica, audit_sec_ops,
          audit_sec_admins, audit_sec_supers;
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

-- 12. A login default of the context. ALTER ROLE / DATABASE ... SET tenancy.workspace_id is
--     refused for everyone, superusers included (0A000); RESET and SET ... TO DEFAULT stay
--     allowed. A default stored anyway (before the extension was loaded, or written into the
--     catalog by a superuser as here) is reported as context_default (fail) with the RESET
--     that removes it, and is ignored at connection start: a WARNING, and no context.
CREATE ROLE tenancy_regress_audit_ctx LOGIN;
ALTER ROLE tenancy_regress_audit_ctx SET tenancy.workspace_id = '00000000-0000-0000-0000-0000000000d1';
\echo :LAST_ERROR_SQLSTATE
ALTER USER tenancy_regress_audit_ctx SET "Tenancy.Workspace_Id" FROM CURRENT;
\echo :LAST_ERROR_SQLSTATE
ALTER ROLE ALL SET tenancy.workspace_id = '00000000-0000-0000-0000-0000000000d1';
\echo :LAST_ERROR_SQLSTATE
DO $$ BEGIN EXECUTE format('ALTER ROLE tenancy_regress_audit_ctx IN DATABASE %I SET tenancy.workspace_id = %L',
                            current_database(), '00000000-0000-0000-0000-0000000000d1'); END $$;
\echo :LAST_ERROR_SQLSTATE
DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET tenancy.workspace_id = %L',
                            current_database(), '00000000-0000-0000-0000-0000000000d1'); END $$;
\echo :LAST_ERROR_SQLSTATE
ALTER ROLE tenancy_regress_audit_ctx RESET tenancy.workspace_id;
ALTER ROLE tenancy_regress_audit_ctx SET tenancy.workspace_id TO DEFAULT;
ALTER ROLE tenancy_regress_audit_ctx SET work_mem = '8MB';
ALTER ROLE tenancy_regress_audit_ctx RESET work_mem;
SELECT count(*) AS stored FROM pg_db_role_setting
 WHERE setrole = 'tenancy_regress_audit_ctx'::regrole OR array_to_string(setconfig, ',') ILIKE '%tenancy.workspace_id%';
INSERT INTO pg_db_role_setting
SELECT d.oid, 'tenancy_regress_audit_ctx'::regrole, ARRAY['tenancy.workspace_id=00000000-0000-0000-0000-0000000000d1']
  FROM pg_database d WHERE d.datname = current_database();
INSERT INTO pg_db_role_setting
VALUES (0, 'tenancy_regress_audit_ctx'::regrole, ARRAY['work_mem=8MB', 'tenancy.workspace_id=00000000-0000-0000-0000-0000000000d2']);
INSERT INTO pg_db_role_setting
SELECT d.oid, 0, ARRAY['Tenancy.Workspace_Id=00000000-0000-0000-0000-0000000000d3']
  FROM pg_database d WHERE d.datname = current_database();
\x on
SELECT severity, "check", replace(object, '"' || current_database() || '"', '"(current)"') AS object, detail,
       replace(fix, '"' || current_database() || '"', '"(current)"') AS fix
  FROM tenancy.audit() WHERE "check" = 'context_default';
\x off
-- a new session of that role: three WARNINGs (role in database, role, database), no context
\c - tenancy_regress_audit_ctx
SELECT tenancy.current_workspace_id(), current_setting('tenancy.workspace_id') AS raw_setting,
       current_setting('work_mem') AS work_mem;
\c - postgres
DO $$
DECLARE f text;
BEGIN
    FOR f IN SELECT fix FROM tenancy.audit() WHERE "check" = 'context_default' LOOP
        EXECUTE f;
    END LOOP;
END $$;
SELECT count(*) AS reported FROM tenancy.audit() WHERE "check" = 'context_default';
SELECT setconfig FROM pg_db_role_setting
 WHERE setrole = 'tenancy_regress_audit_ctx'::regrole OR array_to_string(setconfig, ',') ILIKE '%tenancy.workspace_id%';
DROP ROLE tenancy_regress_audit_ctx;
