//! `tenancy`: multi-tenant safety, fairness and observability inside PostgreSQL.
//!
//! Table of contents (one module per capability, above the PostgreSQL layer):
//! - [`pg`]: the layer over PostgreSQL's C API (unguarded calls and their contract, shared
//!   memory and LWLock guards, backend-local state, role and search-path scopes, read-only SPI).
//! - [`hooks`]: every setting, hook and callback tenancy installs, in one documented order.
//! - [`admission`]: per-workspace admission control and statement timeouts (fair sharing;
//!   SQL in `sql/admission.sql`).
//! - [`advice`]: index advice from the observed workload (pg_qualstats, hypopg), behind
//!   `index_advice()` (SQL in `sql/audit.sql`).
//! - [`compat`]: a database whose SQL is older than the library (kept C symbols, the version
//!   WARNING).
//! - [`error`]: the domain error type; every user-facing error and its SQLSTATE.
//! - [`uuid_text`]: PostgreSQL-compatible uuid parsing and the canonical text form.
//! - [`context`]: the `tenancy.workspace_id` setting, `current_workspace_id()`,
//!   `require_workspace_id()`, `set_workspace()` and the workspace registry settings.
//! - [`crypto`]: per-workspace encryption: master keys outside the database, wrapped data keys
//!   per workspace, rotation and crypto-shredding (SQL in `sql/crypto.sql`).
//! - [`hierarchy`]: `readable_workspace_ids()`, a parent workspace's read scope over its
//!   active children (the hierarchy option of the isolation policy).
//! - [`quota`]: exact per-workspace row quotas (the trigger and its caches; counters in shared
//!   memory when preloaded, `quota::shared`, fed by `quota::transition`; who may put code in
//!   `counted_when`, `quota::vet`; SQL in `sql/quota.sql`).
//! - [`rls`]: row-level security helpers (SQL in `sql/rls.sql`).
//! - [`shard`]: readiness for sharding with Citus, `shard_readiness()` and `shard_plan()` (SQL in
//!   `sql/shard.sql`).
//! - [`stats`]: per-workspace usage counters in shared memory and their hooks (SQL in
//!   `sql/stats.sql`).
//!
//! SQL that is not generated from Rust lives in `sql/*.sql` and is included below.

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

pub mod admission;
pub mod advice;
pub mod compat;
pub mod context;
pub mod crypto;
pub mod error;
pub mod hierarchy;
pub mod hooks;
pub mod pg;
pub mod quota;
pub mod rls;
pub mod shard;
pub mod stamps;
pub mod stats;
pub mod uuid_text;

pgrx::extension_sql_file!("../sql/schema.sql", name = "schema_sql", bootstrap);

/// Called once per process that loads the library: the postmaster when the library is in
/// `shared_preload_libraries`, otherwise each backend at first use.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    hooks::install(); // every setting, hook and callback, in one documented order
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    // The #[pg_test]s live beside the code they test, in each module's `tests` submodule.
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries='tenancy'"]
    }
}
