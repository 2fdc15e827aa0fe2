-- Per-workspace row quotas on Dittofeed's Segment, Journey and MessageTemplate.
-- Each error is followed by its SQLSTATE (\echo :LAST_ERROR_SQLSTATE).
\set SHOW_CONTEXT never
\pset null (null)
\set r1 '''b094544e-e377-7a92-7abe-70ec1195aff9'''
\set r2 '''9fe8677b-8f7e-820a-1d36-85897f5546b1'''
SELECT fixture.ws_id('root', 1) = :r1 AND fixture.ws_id('root', 2) = :r2 AS fixture_ids_as_expected;

-- 1. Enforcement: Declarative rows count; Dittofeed's own Internal rows never do.
SELECT tenancy.enforce_quota('"Segment"', counted_when => '"resourceType" = ''Declarative''');
SELECT tenancy.enforce_quota('"Journey"');
SELECT tenancy.enforce_quota('"MessageTemplate"', 'workspaceId', '"resourceType" = ''Declarative''');
-- idempotent: a second call changes nothing and recounts
SELECT tenancy.enforce_quota('"Segment"', counted_when => '"resourceType" = ''Declarative''');
SELECT tbl, workspace_column, counted_when FROM tenancy.quota_table ORDER BY tbl::text;
SELECT table_name, used, max_rows, source FROM tenancy.quota_usage WHERE workspace_id = :r1 ORDER BY 1;

-- 2. Limits: a default for all workspaces, and one workspace's own value.
SELECT tenancy.set_quota('"Segment"', 12);
SELECT tenancy.set_quota('"Segment"', 11, :r1);
SELECT workspace_id = :r1 AS is_r1, used, max_rows, source, pct
  FROM tenancy.quota_usage WHERE table_name = '"Segment"'::regclass AND workspace_id IN (:r1, :r2) ORDER BY 1;

-- 3. Inserts up to the limit pass; one more fails with 53400, naming workspace, table, limit.
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (:r1, 'new-1', '{}');
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (:r1, 'new-2', '{}');
\echo :LAST_ERROR_SQLSTATE
-- nothing of a failing multi-row statement is kept
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (:r2, 'a', '{}'), (:r2, 'b', '{}'), (:r2, 'c', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS r2_rows_named_abc FROM "Segment" WHERE "workspaceId" = :r2 AND name IN ('a', 'b', 'c');
-- Internal rows (the application's own bootstrap) are not counted and never blocked
INSERT INTO "Segment" ("workspaceId", name, definition, "resourceType") VALUES (:r1, 'internal-x', '{}', 'Internal');

-- 4. Dittofeed's upsert shapes on an existing row count nothing.
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (:r1, 'new-1', '{}') ON CONFLICT DO NOTHING;
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (:r1, 'new-1', '{"v": 2}')
    ON CONFLICT ("workspaceId", name) DO UPDATE SET definition = excluded.definition RETURNING name, definition;
SELECT used FROM tenancy.quota_usage WHERE table_name = '"Segment"'::regclass AND workspace_id = :r1;

-- 5. Rollbacks and savepoints leave no trace.
BEGIN;
DELETE FROM "Segment" WHERE "workspaceId" = :r1 AND name = 'new-1';
SAVEPOINT s;
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (:r1, 'sp-1', '{}');
SELECT used FROM tenancy.quota_usage WHERE table_name = '"Segment"'::regclass AND workspace_id = :r1;
ROLLBACK TO SAVEPOINT s;
SELECT used FROM tenancy.quota_usage WHERE table_name = '"Segment"'::regclass AND workspace_id = :r1;
ROLLBACK;
SELECT used FROM tenancy.quota_usage WHERE table_name = '"Segment"'::regclass AND workspace_id = :r1;

-- 6. UPDATE: moving a row moves its count; a move into a full workspace is refused; a row
--    that stops matching counted_when stops counting.
UPDATE "Segment" SET "workspaceId" = :r2 WHERE "workspaceId" = :r1 AND name = 'new-1';
SELECT workspace_id = :r1 AS is_r1, used FROM tenancy.quota_usage
 WHERE table_name = '"Segment"'::regclass AND workspace_id IN (:r1, :r2) ORDER BY 1;
SELECT tenancy.set_quota('"Segment"', 11, :r2);
UPDATE "Segment" SET "workspaceId" = :r2, name = 'moved-segment-1' WHERE "workspaceId" = :r1 AND name = 'segment-1';
\echo :LAST_ERROR_SQLSTATE
UPDATE "Segment" SET "resourceType" = 'Internal' WHERE "workspaceId" = :r2 AND name = 'new-1';
SELECT used FROM tenancy.quota_usage WHERE table_name = '"Segment"'::regclass AND workspace_id = :r2;

-- 7. Lowering a limit below usage blocks new rows and deletes none.
SELECT tenancy.set_quota('"Segment"', 5, :r2);
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (:r2, 'blocked', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT used, max_rows, pct FROM tenancy.quota_usage WHERE table_name = '"Segment"'::regclass AND workspace_id = :r2;
-- NULL max_rows for a workspace: unlimited; clear_quota: back to the default
SELECT tenancy.set_quota('"Segment"', NULL, :r2);
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (:r2, 'unblocked', '{}');
SELECT used, max_rows, source FROM tenancy.quota_usage WHERE table_name = '"Segment"'::regclass AND workspace_id = :r2;
SELECT tenancy.clear_quota('"Segment"', :r2);
SELECT used, max_rows, source FROM tenancy.quota_usage WHERE table_name = '"Segment"'::regclass AND workspace_id = :r2;

-- 8. Bad input.
SELECT tenancy.set_quota('"Segment"', -1);
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.set_quota('"Broadcast"', 10);
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.set_quota(NULL, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.enforce_quota('"Segment"', 'no_such_column');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.enforce_quota('"Segment"', 'name');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.enforce_quota('"Segment"', counted_when => 'true); DROP TABLE "Journey"; SELECT (1');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.enforce_quota('"Segment"', counted_when => 'no_such_column = 1');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.enforce_quota('no_such_table');
\echo :LAST_ERROR_SQLSTATE
-- the failed calls changed nothing
SELECT tbl, workspace_column, counted_when FROM tenancy.quota_table ORDER BY tbl::text;

-- 9. A workspace delete cascades: its counters fall to zero.
SELECT tenancy.set_quota('"Journey"', 100);
DELETE FROM "Workspace" WHERE id = fixture.ws_id('child', 1001);
SELECT count(*) AS rows_left_for_deleted_workspace
  FROM tenancy.quota_usage WHERE workspace_id = fixture.ws_id('child', 1001);
SELECT used AS deleted_workspace_counter FROM tenancy.quota_counters('"Journey"')
 WHERE workspace_id = fixture.ws_id('child', 1001);
SELECT * FROM tenancy.quota_drift('"Journey"');

-- 10. Application roles cannot administer quotas, and need no privilege on the counters.
CREATE ROLE tenancy_regress_quota LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON "Segment" TO tenancy_regress_quota;
GRANT USAGE ON SCHEMA fixture TO tenancy_regress_quota;
-- changing a limit drops every cached limit: the app role's insert below reloads them
SELECT tenancy.set_quota('"Segment"', 12);
SET ROLE tenancy_regress_quota;
SELECT tenancy.set_quota('"Segment"', 1000);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (fixture.ws_id('root', 3), 'by-app-role', '{}');
SELECT count(*) FROM tenancy.quota_counter;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT used FROM tenancy.quota_usage WHERE table_name = '"Segment"'::regclass AND workspace_id = fixture.ws_id('root', 3);
DROP OWNED BY tenancy_regress_quota;
DROP ROLE tenancy_regress_quota;

-- 11. TRUNCATE resets the table's counters; release_quota removes everything. Both idempotent.
TRUNCATE "Journey" CASCADE;
SELECT count(*) AS journey_counters FROM tenancy.quota_counters('"Journey"') WHERE used <> 0;
SELECT tenancy.release_quota('"Journey"');
SELECT tenancy.release_quota('"Journey"');
SELECT tbl FROM tenancy.quota_table ORDER BY tbl::text;
SELECT tgname FROM pg_trigger WHERE tgrelid = '"Journey"'::regclass AND tgname LIKE 'tenancy%';

-- 12. Every counter equals the true count (quota_drift lists the differences: none).
SELECT * FROM tenancy.quota_drift();
-- rows written while the trigger is disabled are not counted: drift (in shared memory, while
-- the workspace's counter is there: the probe makes sure it is)
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (:r1, 'drift-probe', '{}');
ALTER TABLE "Segment" DISABLE TRIGGER tenancy_quota_insert;
INSERT INTO "Segment" ("workspaceId", name, definition) VALUES (:r1, 'uncounted', '{}');
ALTER TABLE "Segment" ENABLE TRIGGER tenancy_quota_insert;
SELECT table_name, workspace_id = :r1 AS is_r1, counted - actual AS off_by FROM tenancy.quota_drift();
SELECT tenancy.enforce_quota('"Segment"', counted_when => '"resourceType" = ''Declarative''');
SELECT * FROM tenancy.quota_drift();
DELETE FROM "Segment" WHERE "workspaceId" = :r1 AND name IN ('drift-probe', 'uncounted');
SELECT * FROM tenancy.quota_drift();

-- 13. Hostile identifiers (quotes, spaces, semicolons, mixed case, non-ASCII) are quoted everywhere.
CREATE TABLE "Tenant ""Data""; DROP TABLE x" ("Wörk ""space""; id" uuid NOT NULL, v int, "Kind" text);
SELECT tenancy.enforce_quota('"Tenant ""Data""; DROP TABLE x"', 'Wörk "space"; id', '"Kind" = ''it''''s; counted''');
SELECT tenancy.set_quota('"Tenant ""Data""; DROP TABLE x"', 2);
INSERT INTO "Tenant ""Data""; DROP TABLE x" VALUES (:r1, 1, 'it''s; counted'), (:r1, 2, 'it''s; counted'), (:r1, 3, 'other');
INSERT INTO "Tenant ""Data""; DROP TABLE x" VALUES (:r1, 4, 'it''s; counted');
\echo :LAST_ERROR_SQLSTATE
UPDATE "Tenant ""Data""; DROP TABLE x" SET "Wörk ""space""; id" = :r2 WHERE v = 1;
DELETE FROM "Tenant ""Data""; DROP TABLE x" WHERE v = 3;
SELECT workspace_id = :r1 AS is_r1, used, max_rows FROM tenancy.quota_usage
 WHERE table_name = '"Tenant ""Data""; DROP TABLE x"'::regclass ORDER BY 1;
SELECT * FROM tenancy.quota_drift('"Tenant ""Data""; DROP TABLE x"');
SELECT tenancy.release_quota('"Tenant ""Data""; DROP TABLE x"');
DROP TABLE "Tenant ""Data""; DROP TABLE x";

-- 14. Dropping an enforced table removes its bookkeeping, also when its owner is no superuser.
CREATE ROLE tenancy_regress_quota_owner LOGIN;
GRANT CREATE ON SCHEMA public TO tenancy_regress_quota_owner;
SET ROLE tenancy_regress_quota_owner;
CREATE TABLE quota_dropped ("workspaceId" uuid NOT NULL);
RESET ROLE;
SELECT tenancy.enforce_quota('quota_dropped');
SELECT tenancy.set_quota('quota_dropped', 5);
SELECT tenancy.set_quota('quota_dropped', 7, :r1);
INSERT INTO quota_dropped VALUES (:r1), (:r2);
SELECT (SELECT count(*) FROM tenancy.quota_table WHERE tbl = 'quota_dropped'::regclass) AS settings,
       (SELECT count(*) FROM tenancy.quota_limit WHERE tbl = 'quota_dropped'::regclass) AS limits,
       (SELECT count(*) FROM tenancy.quota_counters('quota_dropped')) AS counters;
SELECT 'quota_dropped'::regclass::oid AS dropped_oid \gset
SET ROLE tenancy_regress_quota_owner;
DROP TABLE quota_dropped;
RESET ROLE;
SELECT (SELECT count(*) FROM tenancy.quota_table WHERE tbl::oid = :dropped_oid) AS settings,
       (SELECT count(*) FROM tenancy.quota_limit WHERE tbl::oid = :dropped_oid) AS limits,
       (SELECT count(*) FROM tenancy.quota_counters() WHERE table_name::oid = :dropped_oid) AS counters;
REVOKE CREATE ON SCHEMA public FROM tenancy_regress_quota_owner;
DROP ROLE tenancy_regress_quota_owner;

-- 15. Transactions. With tenancy preloaded (this suite) counters live in shared memory and a
--     transaction's changes are settled at commit or rollback; the results are the same as with
--     counter rows.
CREATE TABLE quota_tx ("workspaceId" uuid NOT NULL, kind text NOT NULL DEFAULT 'counted');
SELECT tenancy.enforce_quota('quota_tx', counted_when => 'kind = ''counted''');
SELECT tenancy.set_quota('quota_tx', 3);
INSERT INTO quota_tx SELECT :r1 FROM generate_series(1, 3);
-- at the limit: delete one and insert its replacement in one transaction
BEGIN;
DELETE FROM quota_tx WHERE ctid = (SELECT min(ctid) FROM quota_tx);
INSERT INTO quota_tx VALUES (:r1);
INSERT INTO quota_tx VALUES (:r1);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
DELETE FROM quota_tx WHERE ctid = (SELECT min(ctid) FROM quota_tx);
INSERT INTO quota_tx VALUES (:r1);
COMMIT;
-- the replacement must not outlive the delete: a delete rolled back to a savepoint takes the
-- room it made with it
BEGIN;
SAVEPOINT a;
DELETE FROM quota_tx WHERE ctid = (SELECT min(ctid) FROM quota_tx);
ROLLBACK TO SAVEPOINT a;
INSERT INTO quota_tx VALUES (:r1);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- savepoints: released work stays, rolled-back work goes
DELETE FROM quota_tx;
BEGIN;
INSERT INTO quota_tx VALUES (:r2);
SAVEPOINT a;
INSERT INTO quota_tx VALUES (:r2);
RELEASE SAVEPOINT a;
SAVEPOINT b;
INSERT INTO quota_tx VALUES (:r2);
ROLLBACK TO SAVEPOINT b;
INSERT INTO quota_tx VALUES (:r2), (:r2);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
INSERT INTO quota_tx VALUES (:r2);
SAVEPOINT a;
INSERT INTO quota_tx VALUES (:r2);
RELEASE SAVEPOINT a;
SAVEPOINT b;
INSERT INTO quota_tx VALUES (:r2);
ROLLBACK TO SAVEPOINT b;
COMMIT;
SELECT used, max_rows FROM tenancy.quota_usage WHERE table_name = 'quota_tx'::regclass AND workspace_id = :r2;
-- TRUNCATE, then inserts in the same transaction: counted against the truncated table
BEGIN;
TRUNCATE quota_tx;
INSERT INTO quota_tx SELECT :r2 FROM generate_series(1, 3);
INSERT INTO quota_tx VALUES (:r2);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT used FROM tenancy.quota_usage WHERE table_name = 'quota_tx'::regclass AND workspace_id = :r2;
INSERT INTO quota_tx VALUES (:r2);
INSERT INTO quota_tx VALUES (:r2);
\echo :LAST_ERROR_SQLSTATE
-- a TRUNCATE rolled back to a savepoint: the old rows are back, and count again
BEGIN;
SAVEPOINT t;
TRUNCATE quota_tx;
ROLLBACK TO SAVEPOINT t;
INSERT INTO quota_tx VALUES (:r2);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- a recount with another counted_when, then inserts in the same transaction
BEGIN;
SELECT tenancy.enforce_quota('quota_tx', counted_when => 'kind = ''other''');
INSERT INTO quota_tx SELECT :r2, 'other' FROM generate_series(1, 3);
INSERT INTO quota_tx VALUES (:r2, 'other');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT * FROM tenancy.quota_drift('quota_tx');
-- two-phase commit (Citus commits multi-shard writes with it): while a transaction is prepared
-- its rows count and its removals do not (counts can only be too high); COMMIT PREPARED and
-- ROLLBACK PREPARED in the same session settle them exactly
DELETE FROM quota_tx WHERE "workspaceId" = :r1;
BEGIN;
INSERT INTO quota_tx SELECT :r1 FROM generate_series(1, 2);
PREPARE TRANSACTION 'tenancy_quota';
SELECT used, in_flight FROM tenancy.quota_counters('quota_tx') WHERE workspace_id = :r1;
INSERT INTO quota_tx VALUES (:r1), (:r1);
\echo :LAST_ERROR_SQLSTATE
COMMIT PREPARED 'tenancy_quota';
SELECT used, in_flight FROM tenancy.quota_counters('quota_tx') WHERE workspace_id = :r1;
BEGIN;
DELETE FROM quota_tx WHERE ctid = (SELECT min(ctid) FROM quota_tx WHERE "workspaceId" = :r1);
PREPARE TRANSACTION 'tenancy_quota_delete';
SELECT used, in_flight FROM tenancy.quota_counters('quota_tx') WHERE workspace_id = :r1;
ROLLBACK PREPARED 'tenancy_quota_delete';
SELECT used, in_flight FROM tenancy.quota_counters('quota_tx') WHERE workspace_id = :r1;
BEGIN;
DELETE FROM quota_tx WHERE ctid = (SELECT min(ctid) FROM quota_tx WHERE "workspaceId" = :r1);
INSERT INTO quota_tx VALUES (:r1);
PREPARE TRANSACTION 'tenancy_quota_both';
SELECT used, in_flight FROM tenancy.quota_counters('quota_tx') WHERE workspace_id = :r1;
ROLLBACK PREPARED 'tenancy_quota_both';
SELECT used, in_flight FROM tenancy.quota_counters('quota_tx') WHERE workspace_id = :r1;
BEGIN;
DELETE FROM quota_tx WHERE ctid = (SELECT min(ctid) FROM quota_tx WHERE "workspaceId" = :r1);
PREPARE TRANSACTION 'tenancy_quota_delete';
COMMIT PREPARED 'tenancy_quota_delete';
SELECT used, in_flight FROM tenancy.quota_counters('quota_tx') WHERE workspace_id = :r1;
-- a prepared transaction finished by another session: counted high (never low) until then
BEGIN;
INSERT INTO quota_tx VALUES (:r1);
PREPARE TRANSACTION 'tenancy_quota_elsewhere';
\c
SELECT used, in_flight FROM tenancy.quota_counters('quota_tx') WHERE workspace_id = :r1;
ROLLBACK PREPARED 'tenancy_quota_elsewhere';
SELECT used, in_flight FROM tenancy.quota_counters('quota_tx') WHERE workspace_id = :r1;
SELECT count(*) AS prepared FROM pg_prepared_xacts WHERE gid LIKE 'tenancy_quota%';
SELECT * FROM tenancy.quota_drift('quota_tx');
DROP TABLE quota_tx;

-- 16. A partition alone is refused: the quota of a partitioned table covers all its partitions
--     (partitioned tables themselves: pg_test/sql/partitions.sql).
CREATE TABLE quota_parted ("workspaceId" uuid NOT NULL) PARTITION BY HASH ("workspaceId");
CREATE TABLE quota_parted_0 PARTITION OF quota_parted FOR VALUES WITH (MODULUS 1, REMAINDER 0);
SELECT tenancy.enforce_quota('quota_parted_0');
\echo :LAST_ERROR_SQLSTATE
DROP TABLE quota_parted;

-- 17. The bookkeeping runs with the counter owner's rights under a fixed search_path: an
--     operator planted in a schema of the session's search path is never used by it.
CREATE ROLE tenancy_regress_planter LOGIN;
CREATE SCHEMA planted AUTHORIZATION tenancy_regress_planter;
CREATE TABLE quota_sp ("workspaceId" uuid NOT NULL, kind text NOT NULL DEFAULT 'counted');
GRANT SELECT, INSERT ON quota_sp TO tenancy_regress_planter;
SELECT tenancy.enforce_quota('quota_sp', counted_when => 'kind = ''counted''');
SELECT tenancy.set_quota('quota_sp', 2);
SET ROLE tenancy_regress_planter;
CREATE FUNCTION planted.eq(uuid, uuid) RETURNS boolean LANGUAGE plpgsql AS
$$ BEGIN RAISE EXCEPTION 'planted operator ran as %', current_user; END $$;
CREATE OPERATOR planted.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = planted.eq);
CREATE FUNCTION planted.texteq(text, text) RETURNS boolean LANGUAGE plpgsql AS
$$ BEGIN RAISE EXCEPTION 'planted operator ran as %', current_user; END $$;
CREATE OPERATOR planted.= (LEFTARG = text, RIGHTARG = text, FUNCTION = planted.texteq);
SET search_path = planted, public, pg_catalog;
INSERT INTO quota_sp VALUES (:r1), (:r1);
INSERT INTO quota_sp VALUES (:r1);
\echo :LAST_ERROR_SQLSTATE
RESET search_path;
RESET ROLE;
SELECT used, max_rows FROM tenancy.quota_usage WHERE table_name = 'quota_sp'::regclass;
DROP TABLE quota_sp;
DROP SCHEMA planted CASCADE;
DROP ROLE tenancy_regress_planter;

-- 18. counted_when's parentheses must balance on their own; strings and quoted names may hold any.
SELECT tenancy.enforce_quota('"Segment"', counted_when => '"resourceType" = ''Declarative'') OR (true');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy._assert_expression('name <> '')('' AND "resourceType" = ''Declarative''');
SELECT tenancy._assert_expression('(name = ''a'') AND (("resourceType") = ''Declarative'')');

-- 19. A table rewritten in this transaction is counted directly: COPY FREEZE writes frozen
--     rows, which a count blind to this transaction's own rows would still see.
CREATE TABLE quota_new ("workspaceId" uuid NOT NULL, extra int);
SELECT tenancy.enforce_quota('quota_new');
SELECT tenancy.set_quota('quota_new', 2);
INSERT INTO quota_new VALUES (:r2, 1);
BEGIN;
ALTER TABLE quota_new ALTER COLUMN extra TYPE bigint;
COPY quota_new FROM STDIN WITH (FREEZE);
b094544e-e377-7a92-7abe-70ec1195aff9	1
b094544e-e377-7a92-7abe-70ec1195aff9	2
\.
SAVEPOINT at_limit;
INSERT INTO quota_new VALUES (:r1, 3);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT at_limit;
COMMIT;
INSERT INTO quota_new VALUES (:r1, 4);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO quota_new VALUES (:r2, 5);
INSERT INTO quota_new VALUES (:r2, 6);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS rows_in_quota_new FROM quota_new;
SELECT * FROM tenancy.quota_drift('quota_new');
DROP TABLE quota_new;

-- 20. counted_when is compiled once per table and backend, with SQL functions inlined: redefining
--     a function it calls is seen by the next statement. (Rows already there count by the old
--     definition until enforce_quota() recounts: only r2, written afterwards, is checked.)
CREATE FUNCTION quota_counts_kind(k text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT k = 'a' $$;
CREATE TABLE quota_fn ("workspaceId" uuid NOT NULL, k text NOT NULL);
SELECT tenancy.enforce_quota('quota_fn', counted_when => 'public.quota_counts_kind(k)');
INSERT INTO quota_fn VALUES (:r1, 'a');
INSERT INTO quota_fn VALUES (:r1, 'b');
CREATE OR REPLACE FUNCTION quota_counts_kind(k text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT k = 'b' $$;
INSERT INTO quota_fn VALUES (:r2, 'b');
SELECT counted, actual FROM tenancy.quota_drift('quota_fn') WHERE workspace_id = :r2;
SELECT used FROM tenancy.quota_counters('quota_fn') WHERE workspace_id = :r2;
DROP TABLE quota_fn;
DROP FUNCTION quota_counts_kind(text);
