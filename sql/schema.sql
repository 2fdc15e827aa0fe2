-- The extension's schema. Every role may use the context functions (row-level-security
-- policies call tenancy.current_workspace_id() as the querying role); administrative functions
-- revoke EXECUTE from PUBLIC where they are defined.
COMMENT ON SCHEMA @extschema@ IS 'tenancy: workspace context, quotas, usage counters and row-level-security helpers';
GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;
