//! Row-level security helpers, all SQL:
//! - `sql/rls.sql`: emitting and applying the tenant isolation policy (`rls_policy_sql`,
//!   `enable_rls`, `enable_rls_all`, `disable_rls`); the policy calls
//!   `tenancy.current_workspace_id()` from `context`, and under the hierarchy option
//!   `tenancy.readable_workspace_ids()` from `hierarchy`;
//! - `sql/roles.sql`: the application role and the audited cross-workspace path
//!   (`create_app_role`, `create_cross_workspace_role`, `begin_cross_workspace`);
//! - `sql/audit.sql`: `audit()`, the tenant-isolation audit, and `index_advice()`.

pgrx::extension_sql_file!(
    "../sql/rls.sql",
    name = "rls_sql",
    requires = ["context_sql", "hierarchy_sql"]
);
pgrx::extension_sql_file!(
    "../sql/roles.sql",
    name = "roles_sql",
    requires = ["rls_sql"]
);
pgrx::extension_sql_file!(
    "../sql/audit.sql",
    name = "audit_sql",
    requires = ["rls_sql", "roles_sql"]
);
