//! Row-level security helpers: emitting and applying the tenant isolation policy
//! (`rls_policy_sql`, `enable_rls`, `enable_rls_all`, `disable_rls`). All SQL, in `sql/rls.sql`:
//! the policy itself calls `tenancy.current_workspace_id()` from `context`.

pgrx::extension_sql_file!("../sql/rls.sql", name = "rls_sql", requires = ["context_sql"]);
