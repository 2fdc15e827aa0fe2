-- Hash-partitioned tenant tables (issue 19, item 2; isolation): a partition queried directly is
-- a table of its own, so the policies go on every partition, on those created or attached
-- later too; audit() fails a partition without them; a workspace's query scans one partition.
\set SHOW_CONTEXT never
\pset null (null)
\set r1 '''b094544e-e377-7a92-7abe-70ec1195aff9'''
\set r2 '''9fe8677b-8f7e-820a-1d36-85897f5546b1'''
\set r3 '''4456ae7f-86e6-02df-47dd-6bade7304f3e'''

CREATE TABLE part_events ("workspaceId" uuid NOT NULL, n int NOT NULL, PRIMARY KEY ("workspaceId", n))
    PARTITION BY HASH ("workspaceId");
CREATE TABLE part_events_0 PARTITION OF part_events FOR VALUES WITH (MODULUS 4, REMAINDER 0);
CREATE TABLE part_events_1 PARTITION OF part_events FOR VALUES WITH (MODULUS 4, REMAINDER 1);
CREATE TABLE part_events_2 PARTITION OF part_events FOR VALUES WITH (MODULUS 4, REMAINDER 2);

-- 1. enable_rls on the partitioned table: the same policies on every partition, also on one
-- created afterwards
SELECT tenancy.enable_rls('part_events');
CREATE TABLE part_events_3 PARTITION OF part_events FOR VALUES WITH (MODULUS 4, REMAINDER 3);
INSERT INTO part_events SELECT w, g FROM unnest(ARRAY[:r1, :r2, :r3]::uuid[]) w, generate_series(1, 5) g;
SELECT t.relid::regclass AS rel, c.relrowsecurity, c.relforcerowsecurity,
       (SELECT count(*) FROM pg_policy p WHERE p.polrelid = t.relid AND p.polname = 'tenancy_isolation') AS policy
  FROM pg_partition_tree('part_events') t JOIN pg_class c ON c.oid = t.relid ORDER BY 1;
SELECT tenancy.rls_policy_sql('part_events') ~ 'CREATE POLICY "tenancy_isolation" ON "public"."part_events_3"' AS partitions_in_the_ddl;

-- 2. a table attached later gets them too, in the root's form (here: hierarchy)
SELECT tenancy.enable_rls('part_events', hierarchy => true);
ALTER TABLE part_events DETACH PARTITION part_events_2;
CREATE TABLE part_events_2b (LIKE part_events INCLUDING ALL);
INSERT INTO part_events_2b SELECT * FROM part_events_2;
ALTER TABLE part_events ATTACH PARTITION part_events_2b FOR VALUES WITH (MODULUS 4, REMAINDER 2);
SELECT p.polname, p.polpermissive FROM pg_policy p WHERE p.polrelid = 'part_events_2b'::regclass ORDER BY 1;
SELECT tenancy._policy_state('part_events_2b'::regclass, 'workspaceId');
DROP TABLE part_events_2;
SELECT tenancy.enable_rls('part_events');

-- a table owner who is not a superuser (and may not call enable_rls) creating a partition of its
-- own table: the policies come all the same, made as that owner
CREATE ROLE tenancy_regress_owner;
GRANT CREATE ON SCHEMA public TO tenancy_regress_owner;
SET ROLE tenancy_regress_owner;
CREATE TABLE own_parted ("workspaceId" uuid NOT NULL) PARTITION BY HASH ("workspaceId");
RESET ROLE;
SELECT tenancy.enable_rls('own_parted');
SET ROLE tenancy_regress_owner;
CREATE TABLE own_parted_0 PARTITION OF own_parted FOR VALUES WITH (MODULUS 1, REMAINDER 0);
RESET ROLE;
SELECT count(*) AS policies, bool_and(c.relforcerowsecurity) AS forced
  FROM pg_class c JOIN pg_policy p ON p.polrelid = c.oid WHERE c.oid = 'own_parted_0'::regclass;
DROP TABLE own_parted;
REVOKE CREATE ON SCHEMA public FROM tenancy_regress_owner;
DROP ROLE tenancy_regress_owner;

-- 3. as an application role: each partition queried directly shows only the context's rows
SELECT tableoid::regclass AS r2_part FROM part_events WHERE "workspaceId" = :r2 LIMIT 1 \gset
CREATE ROLE tenancy_regress_part LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO tenancy_regress_part;
SET ROLE tenancy_regress_part;
BEGIN;
SELECT tenancy.set_workspace(:r1) IS NOT NULL AS context_set;
SELECT (SELECT count(*) FROM part_events_0) + (SELECT count(*) FROM part_events_1)
     + (SELECT count(*) FROM part_events_2b) + (SELECT count(*) FROM part_events_3) AS rows_through_partitions,
       (SELECT count(*) FROM part_events) AS rows_through_parent;
SELECT count(*) AS foreign_rows FROM (
    SELECT "workspaceId" FROM part_events_0 UNION ALL SELECT "workspaceId" FROM part_events_1
    UNION ALL SELECT "workspaceId" FROM part_events_2b UNION ALL SELECT "workspaceId" FROM part_events_3) x
 WHERE "workspaceId" <> :r1;
-- writing another workspace's row into its partition directly: refused
SAVEPOINT s;
INSERT INTO :r2_part VALUES (:r2, 100);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
-- 4. one workspace's query scans one partition (the others are pruned when the initplan's value
-- is known)
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT count(*) FROM part_events;
COMMIT;
RESET ROLE;

-- 5. audit(): a partition without its policies fails, with the fix
-- (an ALTER TABLE of the tree would give the policies back at once: see 2)
DROP POLICY tenancy_isolation ON part_events_1;
SELECT severity, "check", object, fix FROM tenancy.audit() WHERE "check" = 'partition_unprotected';
SELECT tenancy.enable_rls('part_events');
SELECT count(*) AS unprotected FROM tenancy.audit() WHERE "check" = 'partition_unprotected';

-- 6. disable_rls on the partitioned table: off everywhere
SELECT tenancy.disable_rls('part_events');
SELECT count(p.polname) AS policies, bool_or(c.relrowsecurity) AS any_rls
  FROM pg_partition_tree('part_events') t JOIN pg_class c ON c.oid = t.relid
  LEFT JOIN pg_policy p ON p.polrelid = t.relid;
DROP TABLE part_events;

-- 7. Quotas: the partitioned table is the unit; its triggers go on every partition, so rows
-- written through it or into a partition directly are counted alike
CREATE TABLE part_q ("workspaceId" uuid NOT NULL, kind text NOT NULL DEFAULT 'counted')
    PARTITION BY HASH ("workspaceId");
CREATE TABLE part_q_0 PARTITION OF part_q FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE part_q_1 PARTITION OF part_q FOR VALUES WITH (MODULUS 2, REMAINDER 1);
INSERT INTO part_q SELECT :r1 FROM generate_series(1, 2);
SELECT tenancy.enforce_quota('part_q', counted_when => 'kind = ''counted''');
SELECT tenancy.set_quota('part_q', 4);
SELECT tgrelid::regclass AS rel, count(*) AS quota_triggers FROM pg_trigger
 WHERE tgname LIKE 'tenancy\_quota\_%' AND tgrelid IN (SELECT relid FROM pg_partition_tree('part_q')) GROUP BY 1 ORDER BY 1;
SELECT tableoid::regclass AS r1_part FROM part_q WHERE "workspaceId" = :r1 LIMIT 1 \gset
SELECT coalesce((SELECT quota_rows_added FROM tenancy.workspace_stats
                  WHERE workspace_id = :r1 AND database = current_database()), 0) AS added_before \gset
INSERT INTO :r1_part VALUES (:r1);
INSERT INTO part_q VALUES (:r1);
INSERT INTO :r1_part VALUES (:r1);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO part_q VALUES (:r1), (:r1);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO part_q VALUES (:r1, 'not counted');
SELECT used, max_rows FROM tenancy.quota_usage WHERE table_name = 'part_q'::regclass AND workspace_id = :r1;
-- usage statistics: the counted rows of both paths, attributed to the rows' workspace
SELECT quota_rows_added - :added_before AS quota_rows_added, quota_rejections > 0 AS rejections_counted
  FROM tenancy.workspace_stats WHERE workspace_id = :r1 AND database = current_database();
-- index advice: the index on the partitioned table (not CONCURRENTLY, which PostgreSQL refuses there)
SELECT ddl FROM tenancy.index_advice() WHERE table_name = 'part_q'::regclass;
-- a partition alone cannot have a quota of its own
SELECT tenancy.enforce_quota(:'r1_part');
\echo :LAST_ERROR_SQLSTATE
-- a partition added later gets the triggers
CREATE TABLE part_q_2 (LIKE part_q);
ALTER TABLE part_q DETACH PARTITION part_q_1;
ALTER TABLE part_q ATTACH PARTITION part_q_2 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
SELECT count(*) AS quota_triggers_on_new_partition FROM pg_trigger WHERE tgrelid = 'part_q_2'::regclass AND tgname LIKE 'tenancy\_quota\_%';
SELECT * FROM tenancy.quota_drift('part_q');
-- an enforced table cannot join another tree
CREATE TABLE part_q_other (LIKE part_q);
SELECT tenancy.enforce_quota('part_q_other');
ALTER TABLE part_q DETACH PARTITION part_q_2;
ALTER TABLE part_q ATTACH PARTITION part_q_other FOR VALUES WITH (MODULUS 2, REMAINDER 1);
\echo :LAST_ERROR_SQLSTATE
-- release_quota takes the triggers off every partition
SELECT tenancy.release_quota('part_q');
SELECT count(*) AS quota_triggers_left FROM pg_trigger
 WHERE tgname LIKE 'tenancy\_quota\_%' AND tgrelid IN (SELECT relid FROM pg_partition_tree('part_q'));
SELECT tenancy.release_quota('part_q_other');
DROP TABLE part_q, part_q_1, part_q_2, part_q_other;
DROP OWNED BY tenancy_regress_part;
DROP ROLE tenancy_regress_part;
