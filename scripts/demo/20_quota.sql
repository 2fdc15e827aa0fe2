\set SHOW_CONTEXT never
\set QUIET on
\pset null (null)
\set QUIET off
\echo '== 2. Quotas: exact per-workspace row limits'
\echo '-- enforce on Segment, Journey and MessageTemplate; only Declarative rows count (Dittofeed creates its own Internal rows)'
SELECT tenancy.enforce_quota('"Segment"', counted_when => '"resourceType" = ''Declarative''');
SELECT tenancy.enforce_quota('"Journey"');
SELECT tenancy.enforce_quota('"MessageTemplate"', counted_when => '"resourceType" = ''Declarative''');
\echo '-- a default of 25 segments per workspace, and 22 for "Root 1"'
SELECT tenancy.set_quota('"Segment"', 25);
SELECT tenancy.set_quota('"Segment"', 22, (SELECT id FROM "Workspace" WHERE name = 'Root 1'));
SELECT w.name AS workspace, u.table_name, u.used, u.max_rows, u.source, u.pct
  FROM tenancy.quota_usage u JOIN "Workspace" w ON w.id = u.workspace_id
 WHERE w.name IN ('Root 1', 'Root 2') ORDER BY 1, 2;
\echo '-- "Root 1" creates segments until the quota says no (SQLSTATE 53400: map it to HTTP 429)'
INSERT INTO "Segment" ("workspaceId", name, definition)
SELECT id, 'campaign-' || g, '{}' FROM "Workspace", generate_series(1, 2) g WHERE name = 'Root 1';
INSERT INTO "Segment" ("workspaceId", name, definition)
SELECT id, 'one-too-many', '{}' FROM "Workspace" WHERE name = 'Root 1';
\echo '-- an upsert of an existing segment counts nothing and still works at the limit'
INSERT INTO "Segment" ("workspaceId", name, definition)
SELECT id, 'campaign-1', '{"v": 2}' FROM "Workspace" WHERE name = 'Root 1'
ON CONFLICT ("workspaceId", name) DO UPDATE SET definition = excluded.definition;
\echo '-- the operator raises the limit, and the insert goes through'
SELECT tenancy.set_quota('"Segment"', 30, (SELECT id FROM "Workspace" WHERE name = 'Root 1'));
INSERT INTO "Segment" ("workspaceId", name, definition)
SELECT id, 'one-too-many', '{}' FROM "Workspace" WHERE name = 'Root 1';
SELECT w.name AS workspace, u.table_name, u.used, u.max_rows, u.source, u.pct
  FROM tenancy.quota_usage u JOIN "Workspace" w ON w.id = u.workspace_id
 WHERE w.name = 'Root 1' ORDER BY 2;
\echo '-- and the counters never drift from the real counts'
SELECT count(*) AS drifting_counters FROM tenancy.quota_drift();
\echo '-- the counters the trigger checks: in shared memory (tenancy is preloaded), no row locked'
SELECT w.name AS workspace, c.table_name, c.used, c.in_flight, c.location
  FROM tenancy.quota_counters() c JOIN "Workspace" w ON w.id = c.workspace_id
 WHERE w.name = 'Root 1' ORDER BY 2;
