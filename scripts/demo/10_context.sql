\set SHOW_CONTEXT never
\set QUIET on
\pset null (null)
\set QUIET off
\echo '== 1. Workspace context: tenancy.workspace_id'
\echo '-- no context yet: NULL, so row-level security policies match nothing (fail closed)'
SELECT tenancy.current_workspace_id();
\echo '-- any uuid spelling is accepted and stored in canonical form'
SET tenancy.workspace_id = '{A0EEBC99-9C0B4EF8-BB6D6BB9-BD380A11}';
SHOW tenancy.workspace_id;
\echo '-- a bad value is refused when it is set (SQLSTATE 22023) and the old value stays'
SET tenancy.workspace_id = 'workspace-42';
SHOW tenancy.workspace_id;
RESET tenancy.workspace_id;
\echo '-- a misspelled setting is an error, not a silent placeholder'
SET tenancy.workspaceid = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11';
\echo '-- the pooler-safe way: tenancy.set_workspace(id, true) inside the transaction'
BEGIN;
SELECT tenancy.set_workspace(id) AS context, name, type, status
  FROM "Workspace" WHERE name = 'Root 1';
SELECT count(*) AS "segments of the current workspace"
  FROM "Segment" WHERE "workspaceId" = tenancy.current_workspace_id();
COMMIT;
\echo '-- after COMMIT the transaction-local context is gone'
SELECT tenancy.current_workspace_id();
\echo '-- a Tombstoned workspace is refused (SQLSTATE 42704)'
SELECT tenancy.set_workspace(id) FROM "Workspace" WHERE status = 'Tombstoned';
