-- Security: the privilege paths of the first outside review, each attacked as a role that is
-- neither superuser nor owner of the extension. Each error is followed by its SQLSTATE.
\set SHOW_CONTEXT never
\pset null (null)
\set r1 '''b094544e-e377-7a92-7abe-70ec1195aff9'''
\set r2 '''9fe8677b-8f7e-820a-1d36-85897f5546b1'''
SELECT fixture.ws_id('parent', 2) AS p1, fixture.ws_id('child', 2001) AS c1 \gset

-- A migration role that owns tables and functions, and may administer quotas (delegated).
CREATE ROLE tenancy_sec_mig LOGIN;
CREATE ROLE tenancy_sec_other LOGIN;
CREATE SCHEMA sec AUTHORIZATION tenancy_sec_mig;
GRANT USAGE, CREATE ON SCHEMA sec TO tenancy_sec_other;
GRANT USAGE ON SCHEMA tenancy TO tenancy_sec_mig, tenancy_sec_other;
SET ROLE tenancy_sec_mig;
CREATE TABLE sec.log (who name, outcome text);
-- what every probe does: try to make its role a superuser, and record as whom it ran
CREATE FUNCTION sec.escalate() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        EXECUTE 'ALTER ROLE tenancy_sec_mig SUPERUSER';
        INSERT INTO sec.log VALUES (current_user, 'escalated');
    EXCEPTION WHEN insufficient_privilege THEN
        INSERT INTO sec.log VALUES (current_user, 'refused');
    END;
END $$;
-- harmless at first: the function named in counted_when
CREATE FUNCTION sec.counts(k text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT k = 'a' $$;
CREATE TABLE sec.t ("workspaceId" uuid NOT NULL, k text NOT NULL);
GRANT SELECT, INSERT, DELETE ON sec.t TO tenancy_sec_other;
RESET ROLE;

-- 1. counted_when runs with the rights of the enforced table's owner, never the bookkeeping
--    owner's (a superuser). The superuser enforces the quota; the migration role then
--    redefines the function and writes: every evaluation site runs the probe as the table owner.
SELECT tenancy.enforce_quota('sec.t', counted_when => 'sec.counts(k)');
SELECT tenancy.set_quota('sec.t', 10);
SET ROLE tenancy_sec_mig;
CREATE OR REPLACE FUNCTION sec.counts(k text) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN PERFORM sec.escalate(); RETURN k = 'a'; END $$;
RESET ROLE;
-- the trigger (as an application role inserting)
SET ROLE tenancy_sec_other;
INSERT INTO sec.t VALUES (:r1, 'a'), (:r1, 'b');
DELETE FROM sec.t WHERE k = 'b';
RESET ROLE;
-- the superuser's own calls: quota_usage, quota_drift, a recount
SELECT used FROM tenancy.quota_usage WHERE table_name = 'sec.t'::regclass;
SELECT * FROM tenancy.quota_drift('sec.t');
SELECT tenancy.enforce_quota('sec.t', counted_when => 'sec.counts(k)');
-- the trigger's SQL path (a counted_when with a sub-query)
SELECT tenancy.enforce_quota('sec.t', counted_when => 'EXISTS (SELECT 1 WHERE sec.counts(k))');
INSERT INTO sec.t VALUES (:r1, 'a');
SELECT who, outcome, count(*) > 0 AS ran FROM sec.log GROUP BY 1, 2 ORDER BY 1, 2;
SELECT rolsuper AS mig_is_superuser FROM pg_roles WHERE rolname = 'tenancy_sec_mig';
TRUNCATE sec.log;

-- 1b. Other routes to code in counted_when: an operator, a cast and a domain check, each of
--     the migration role's own making; they run as the table owner too.
SET ROLE tenancy_sec_mig;
CREATE FUNCTION sec.op(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM sec.escalate(); RETURN a = b; END $$;
CREATE OPERATOR sec.=== (LEFTARG = text, RIGHTARG = text, FUNCTION = sec.op);
CREATE TYPE sec.boxed AS (v text);
CREATE FUNCTION sec.to_boxed(text) RETURNS sec.boxed LANGUAGE plpgsql AS $$
BEGIN PERFORM sec.escalate(); RETURN ROW($1)::sec.boxed; END $$;
CREATE CAST (text AS sec.boxed) WITH FUNCTION sec.to_boxed(text);
CREATE FUNCTION sec.check_kind(v text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM sec.escalate(); RETURN true; END $$;
CREATE DOMAIN sec.kind AS text CHECK (sec.check_kind(VALUE));
RESET ROLE;
SELECT tenancy.enforce_quota('sec.t', counted_when => 'k OPERATOR(sec.===) ''a''');
INSERT INTO sec.t VALUES (:r2, 'a');
SELECT tenancy.enforce_quota('sec.t', counted_when => '(k::sec.boxed).v = ''a''');
INSERT INTO sec.t VALUES (:r2, 'a');
SELECT tenancy.enforce_quota('sec.t', counted_when => 'k::sec.kind = ''a''');
INSERT INTO sec.t VALUES (:r2, 'a');
SELECT who, outcome, count(*) > 0 AS ran FROM sec.log GROUP BY 1, 2 ORDER BY 1, 2;
SELECT rolsuper AS mig_is_superuser FROM pg_roles WHERE rolname = 'tenancy_sec_mig';
TRUNCATE sec.log;

-- 1c. A table owner's rights are all counted_when ever gets: on a superuser's table, a function
--     whose owner lacks the table owner's privileges is refused (42501) when the quota is
--     enforced, and when its ownership changes afterwards (checked at the next statement:
--     writes fail closed until it is fixed). Redefinition by an owner who has the table
--     owner's privileges takes effect at the next statement (1, above).
CREATE TABLE sec_super_t ("workspaceId" uuid NOT NULL, k text NOT NULL);
SELECT tenancy.enforce_quota('sec_super_t', counted_when => 'sec.counts(k)');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.enforce_quota('sec_super_t', counted_when => 'k OPERATOR(sec.===) ''a''');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.enforce_quota('sec_super_t', counted_when => 'k::sec.kind = ''a''');
\echo :LAST_ERROR_SQLSTATE
CREATE FUNCTION public.sec_super_counts(k text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT k = 'a' $$;
SELECT tenancy.enforce_quota('sec_super_t', counted_when => 'public.sec_super_counts(k)');
INSERT INTO sec_super_t VALUES (:r1, 'a');
ALTER FUNCTION public.sec_super_counts(text) OWNER TO tenancy_sec_mig;
INSERT INTO sec_super_t VALUES (:r1, 'a');
\echo :LAST_ERROR_SQLSTATE
ALTER FUNCTION public.sec_super_counts(text) OWNER TO postgres;
INSERT INTO sec_super_t VALUES (:r1, 'a');
SELECT used FROM tenancy.quota_counters('sec_super_t');
-- the table's owner changes: counted_when runs as the new owner from the next statement on
ALTER TABLE sec.t OWNER TO tenancy_sec_other;
SELECT tenancy.enforce_quota('sec.t', counted_when => 'public.sec_super_counts(k) AND sec.counts(k)');
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE sec.t OWNER TO tenancy_sec_mig;
DROP TABLE sec_super_t;
DROP FUNCTION public.sec_super_counts(text);

-- 2. Delegated quota administration: EXECUTE on the public functions, for tables one owns.
SET ROLE tenancy_sec_mig;
SELECT tenancy.set_quota('sec.t', 5);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT EXECUTE ON FUNCTION tenancy.enforce_quota(regclass, name, text), tenancy.set_quota(regclass, bigint, uuid),
    tenancy.clear_quota(regclass, uuid), tenancy.release_quota(regclass) TO tenancy_sec_mig;
SET ROLE tenancy_sec_mig;
SELECT tenancy.enforce_quota('sec.t', counted_when => 'sec.counts(k)');
SELECT tenancy.set_quota('sec.t', 5);
SELECT tenancy.set_quota('sec.t', 1, :r2);
SELECT tenancy.clear_quota('sec.t', :r2);
SELECT tenancy.set_quota('sec.t', 0, :r2);
INSERT INTO sec.t VALUES (:r2, 'a');
\echo :LAST_ERROR_SQLSTATE
-- not the owner of "Segment": no quota of it can be set, recounted, cleared or released
SELECT tenancy.set_quota('"Segment"', 100000);
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.enforce_quota('"Segment"', counted_when => 'sec.counts(name)');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.clear_quota('"Segment"', :r1);
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.release_quota('"Segment"');
\echo :LAST_ERROR_SQLSTATE
-- the internal functions are no way around it
SELECT tenancy._quota_admin('set', '"Segment"'::regclass, NULL, NULL, 100000, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy._set_quota('"Segment"', 100000, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM tenancy._quota_count('"Segment"'::regclass, 'workspaceId', 'sec.counts(name)');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO tenancy.quota_table (tbl, workspace_column, counted_when) VALUES ('sec.t', 'workspaceId', 'true');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- without EXECUTE, owning a table is not enough (the internal entry point checks it too)
SET ROLE tenancy_sec_other;
CREATE TABLE sec.other_t ("workspaceId" uuid NOT NULL);
SELECT tenancy.enforce_quota('sec.other_t');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy._quota_admin('enforce', 'sec.other_t'::regclass, 'workspaceId', NULL, NULL, NULL);
\echo :LAST_ERROR_SQLSTATE
DROP TABLE sec.other_t;
RESET ROLE;
SELECT max_rows FROM tenancy.quota_limit WHERE tbl = '"Segment"'::regclass AND workspace_id IS NULL;
SELECT (SELECT count(*) FROM sec.log) AS probes_ran, rolsuper AS mig_is_superuser FROM pg_roles WHERE rolname = 'tenancy_sec_mig';
SET ROLE tenancy_sec_mig;
SELECT tenancy.release_quota('sec.t');
RESET ROLE;

-- 3. The registry is resolved from the catalog, never on the session's search path: a
--    temporary table or a schema of the session's own named like it changes nothing, and
--    neither does an operator planted before pg_catalog.
BEGIN;
SELECT tenancy.set_workspace(:'p1') IS NOT NULL AS context_set;
SELECT tenancy.readable_workspace_ids()::text AS readable_before \gset
SET LOCAL tenancy.registry_table = '"Workspace"';
CREATE TEMP TABLE "Workspace" (id uuid, status text, "parentWorkspaceId" uuid) ON COMMIT DROP;
INSERT INTO pg_temp."Workspace" VALUES (:r1, 'Active', :'p1'), ('00000000-0000-4000-8000-00000000dead', 'Active', NULL);
SELECT tenancy.set_workspace(:'p1') IS NOT NULL AS context_set;
SELECT tenancy.readable_workspace_ids()::text = :'readable_before' AS same_as_before,
       strpos(tenancy.readable_workspace_ids()::text, :r1) > 0 AS reads_planted_workspace;
SAVEPOINT s;
SELECT tenancy.set_workspace('00000000-0000-4000-8000-00000000dead');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
CREATE SCHEMA sec_shadow;
CREATE TABLE sec_shadow."Workspace" (LIKE pg_temp."Workspace");
INSERT INTO sec_shadow."Workspace" SELECT * FROM pg_temp."Workspace";
CREATE FUNCTION sec_shadow.always(uuid, uuid) RETURNS boolean LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR sec_shadow.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = sec_shadow.always);
SET LOCAL search_path = sec_shadow, pg_catalog, public;
SELECT tenancy.set_workspace(:'p1') IS NOT NULL AS context_set;
SELECT tenancy.readable_workspace_ids()::text = :'readable_before' AS same_as_before,
       strpos(tenancy.readable_workspace_ids()::text, :r1) > 0 AS reads_planted_workspace;
SAVEPOINT s;
SELECT tenancy.set_workspace('00000000-0000-4000-8000-00000000dead');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
ROLLBACK;
-- an unqualified setting means schema public; a malformed or missing one is refused
BEGIN;
SET LOCAL tenancy.registry_table = 'no_such_schema.x';
SELECT tenancy.set_workspace(:'p1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SET LOCAL tenancy.registry_table = 'a.b.c';
SELECT tenancy.set_workspace(:'p1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- 8a. Dropping a table that has no quota does not touch the quota bookkeeping (whose statement
--     triggers would invalidate every backend's quota caches).
BEGIN;
SET LOCAL track_functions = 'all';
CREATE TABLE sec_plain (id int);
DROP TABLE sec_plain;
SELECT funcname, calls FROM pg_stat_xact_user_functions
 WHERE schemaname = 'tenancy' AND funcname IN ('quota_config_changed', '_quota_forget') ORDER BY 1;
CREATE TABLE sec_enforced ("workspaceId" uuid);
SELECT tenancy.enforce_quota('sec_enforced');
SELECT pg_stat_clear_snapshot();
DROP TABLE sec_enforced;
SELECT funcname, calls > 0 AS called FROM pg_stat_xact_user_functions
 WHERE schemaname = 'tenancy' AND funcname IN ('_quota_forget') ORDER BY 1;
ROLLBACK;

-- 8d. RESET ALL (and DISCARD ALL, a session pooler's reset) clears the context, also inside a
--     SECURITY DEFINER function: the rest of the transaction has none (fail closed).
CREATE FUNCTION sec_reset_all() RETURNS text LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN RESET ALL; RETURN coalesce(tenancy.current_workspace_id()::text, 'no context'); END $$;
BEGIN;
SELECT tenancy.set_workspace(:r1) IS NOT NULL AS context_set;
SELECT sec_reset_all() AS inside;
SELECT tenancy.current_workspace_id() AS after;
ROLLBACK;
DROP FUNCTION sec_reset_all();

-- 8e. A quota is checked at each modifying statement's own trigger: in a writable CTE that
--     deletes 2 rows and inserts 2 at the limit, PostgreSQL fires the INSERT's trigger first,
--     with the new rows counted and the deleted ones not yet subtracted, so the statement is
--     refused even though its net change (0) would fit. Delete first, in its own statement, in one transaction.
CREATE TABLE sec_cte ("workspaceId" uuid NOT NULL, n int);
SELECT tenancy.enforce_quota('sec_cte');
SELECT tenancy.set_quota('sec_cte', 4);
INSERT INTO sec_cte SELECT :r1, g FROM generate_series(1, 4) g;
WITH gone AS (DELETE FROM sec_cte WHERE n <= 2 RETURNING n)
INSERT INTO sec_cte SELECT :r1, 10 + g FROM generate_series(1, 2) g;
\echo :LAST_ERROR_SQLSTATE
BEGIN;
DELETE FROM sec_cte WHERE n <= 2;
INSERT INTO sec_cte SELECT :r1, 10 + g FROM generate_series(1, 2) g;
COMMIT;
SELECT used FROM tenancy.quota_counters('sec_cte');
DROP TABLE sec_cte;

-- clean up the cluster-wide roles
DROP SCHEMA sec CASCADE;
REVOKE ALL ON SCHEMA tenancy FROM tenancy_sec_mig, tenancy_sec_other;
REVOKE EXECUTE ON FUNCTION tenancy.enforce_quota(regclass, name, text), tenancy.set_quota(regclass, bigint, uuid),
    tenancy.clear_quota(regclass, uuid), tenancy.release_quota(regclass) FROM tenancy_sec_mig;
DROP ROLE tenancy_sec_mig;
DROP ROLE tenancy_sec_other;
