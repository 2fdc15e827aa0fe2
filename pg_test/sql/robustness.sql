-- Robustness: what the second outside review broke, each now refused or handled with a
-- documented SQLSTATE. Each error is followed by its SQLSTATE.
\set SHOW_CONTEXT never
\pset null (null)
\set r1 '''b094544e-e377-7a92-7abe-70ec1195aff9'''
\set r2 '''9fe8677b-8f7e-820a-1d36-85897f5546b1'''
SELECT fixture.ws_id('parent', 2) AS p1 \gset

-- 1. Reads take no transaction id; quota administration in a read-only transaction is
--    refused as PostgreSQL refuses any write there (25006). (A streaming standby and a
--    parallel plan: tests/replica.rs.)
BEGIN READ ONLY;
SELECT tenancy.set_workspace(:r1) IS NOT NULL AS context_set;
SELECT count(*) > 0 AS reads FROM "Segment";
SELECT pg_current_xact_id_if_assigned() AS xid;
SELECT tenancy.set_quota('"Segment"', 10);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- 2. Only tables whose writes the statement triggers all see: a partition alone, inheritance
--    parents and children, and temporary tables are refused (0A000), and so is attaching or
--    inheriting an enforced table later. (A partitioned table is enforced as a whole, with the
--    triggers on every partition: pg_test/sql/partitions.sql.)
CREATE TABLE rb_parted ("workspaceId" uuid NOT NULL) PARTITION BY LIST ("workspaceId");
CREATE TABLE rb_part1 PARTITION OF rb_parted FOR VALUES IN ('b094544e-e377-7a92-7abe-70ec1195aff9');
SELECT tenancy.enforce_quota('rb_part1');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.enforce_quota('rb_parted');
\echo :LAST_ERROR_SQLSTATE
CREATE TABLE rb_inh_parent ("workspaceId" uuid NOT NULL);
CREATE TABLE rb_inh_child () INHERITS (rb_inh_parent);
SELECT tenancy.enforce_quota('rb_inh_parent');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.enforce_quota('rb_inh_child');
\echo :LAST_ERROR_SQLSTATE
CREATE TEMP TABLE rb_temp ("workspaceId" uuid NOT NULL);
SELECT tenancy.enforce_quota('rb_temp');
\echo :LAST_ERROR_SQLSTATE
CREATE TABLE rb_plain ("workspaceId" uuid NOT NULL);
SELECT tenancy.enforce_quota('rb_plain');
SELECT tenancy.set_quota('rb_plain', 1);
ALTER TABLE rb_parted ATTACH PARTITION rb_plain FOR VALUES IN ('9fe8677b-8f7e-820a-1d36-85897f5546b1');
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE rb_plain INHERIT rb_inh_parent;
\echo :LAST_ERROR_SQLSTATE
CREATE TABLE rb_plain_child () INHERITS (rb_plain);
\echo :LAST_ERROR_SQLSTATE
-- other DDL on an enforced table and elsewhere is untouched
ALTER TABLE rb_plain ADD COLUMN note text;
CREATE TABLE rb_other_child () INHERITS (rb_inh_parent);
INSERT INTO rb_plain VALUES (:r1);
INSERT INTO rb_plain VALUES (:r1);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS rows_in_rb_plain FROM rb_plain;

-- 4. One bad entry never fails the views for the whole database: a table whose counted_when
--    column was renamed is skipped with a WARNING (and its writes fail closed until repaired),
--    and the leftovers of a table that is gone are removed by a superuser by oid.
CREATE TABLE rb_bad ("workspaceId" uuid NOT NULL, k text);
SELECT tenancy.enforce_quota('rb_bad', counted_when => 'k = ''a''');
INSERT INTO rb_bad VALUES (:r1, 'a');
ALTER TABLE rb_bad RENAME COLUMN k TO kind;
SELECT count(*) > 0 AS usage_still_readable FROM tenancy.quota_usage;
SELECT count(*) AS drift_rows FROM tenancy.quota_drift();
INSERT INTO rb_bad VALUES (:r1, 'a');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.enforce_quota('rb_bad', counted_when => 'kind = ''a''');
SELECT used FROM tenancy.quota_usage WHERE table_name = 'rb_bad'::regclass;
-- a workspace column retyped: writes refused (42804), the views skip it
CREATE TABLE rb_retyped ("workspaceId" uuid NOT NULL);
SELECT tenancy.enforce_quota('rb_retyped');
INSERT INTO rb_retyped VALUES (:r1);
ALTER TABLE rb_retyped ALTER COLUMN "workspaceId" TYPE text;
INSERT INTO rb_retyped VALUES ('x');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) > 0 AS usage_still_readable FROM tenancy.quota_usage;
SELECT tenancy.release_quota('rb_retyped');
DROP TABLE rb_retyped;
INSERT INTO tenancy.quota_table (tbl, workspace_column) VALUES (999999, 'workspaceId');
SELECT count(*) > 0 AS usage_still_readable FROM tenancy.quota_usage;
SELECT tenancy.release_quota(999999);
SELECT count(*) AS leftovers FROM tenancy.quota_table WHERE tbl = 999999;

-- 5. No internal errors: the trigger functions called directly (39P01), a registry id column
--    that is not uuid (42804), a policy on the registry that recurses into
--    readable_workspace_ids() (42P17), a counted_when that writes to an enforced table (0A000).
SELECT tenancy.quota_trigger();
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.quota_config_changed();
\echo :LAST_ERROR_SQLSTATE
BEGIN;
SET LOCAL tenancy.registry_id_column = 'name';
SELECT tenancy.set_workspace(:r1);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
CREATE ROLE tenancy_rb_reader LOGIN;
GRANT SELECT ON "Workspace" TO tenancy_rb_reader;
BEGIN;
ALTER TABLE "Workspace" ENABLE ROW LEVEL SECURITY;
CREATE POLICY rb_recursive ON "Workspace" USING (id = ANY (tenancy.readable_workspace_ids()));
SET LOCAL tenancy.workspace_id = :'p1';
SET LOCAL ROLE tenancy_rb_reader;
SELECT tenancy.readable_workspace_ids();
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
DROP OWNED BY tenancy_rb_reader;
DROP ROLE tenancy_rb_reader;
CREATE TABLE rb_w2 ("workspaceId" uuid NOT NULL);
SELECT tenancy.enforce_quota('rb_w2');
CREATE FUNCTION rb_writer(ws uuid) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.rb_w2 VALUES (ws); RETURN true; END $$;
CREATE TABLE rb_w1 ("workspaceId" uuid NOT NULL);
SELECT tenancy.enforce_quota('rb_w1', counted_when => 'public.rb_writer("workspaceId")');
INSERT INTO rb_w1 VALUES (:r1);
\echo :LAST_ERROR_SQLSTATE
SELECT (SELECT count(*) FROM rb_w1) AS w1_rows, (SELECT count(*) FROM rb_w2) AS w2_rows;

-- 7. counted_when is checked against what the trigger sees: the transition tables have no
--    system columns and no whole-row value of the table (0A000 at enforce_quota).
CREATE TABLE rb_sys ("workspaceId" uuid NOT NULL, k text);
SELECT tenancy.enforce_quota('rb_sys', counted_when => 'xmin IS NOT NULL');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.enforce_quota('rb_sys', counted_when => 'ctid IS NOT NULL');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.enforce_quota('rb_sys', counted_when => 'rb_sys IS NOT NULL');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.enforce_quota('rb_sys', counted_when => 'EXISTS (SELECT 1 WHERE rb_sys.tableoid <> 0)');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS enforced FROM tenancy.quota_table WHERE tbl = 'rb_sys'::regclass;

DROP TABLE rb_parted, rb_inh_parent, rb_inh_child, rb_other_child, rb_plain, rb_bad, rb_w1, rb_w2, rb_sys CASCADE;
DROP FUNCTION rb_writer(uuid);
