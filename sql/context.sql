-- Workspace context: documentation of the functions generated from src/context.rs.

COMMENT ON FUNCTION @extschema@.current_workspace_id() IS
'The current workspace (tenancy.workspace_id) as uuid, NULL when unset. STABLE and cheap: use it in row-level-security policies as (SELECT tenancy.current_workspace_id()).';

COMMENT ON FUNCTION @extschema@.require_workspace_id() IS
'The current workspace as uuid; raises SQLSTATE 55000 when tenancy.workspace_id is unset.';

COMMENT ON FUNCTION @extschema@.set_workspace(uuid, boolean) IS
'Checks that the workspace exists in the registry (tenancy.registry_table) and is not soft-deleted, then sets tenancy.workspace_id; transaction-local (pooler-safe) unless is_local is false. Errors: 22004 NULL argument, 42704 unknown or soft-deleted workspace. Returns the workspace id.';
