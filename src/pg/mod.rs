//! The layer between tenancy and PostgreSQL's C API: what the domain modules use instead of
//! calling `pg_sys` for infrastructure.
//! - [`catalog`]: catalog-cache lookups (qualified relation names, column and type names, roles);
//! - [`citus`]: whether Citus is loaded and installed; tenancy's own reads inside a shard query;
//! - [`ffi`]: PostgreSQL functions called without pgrx's FFI guard, with their safety contract;
//! - [`shmem`]: shared-memory hash tables, the creation lock, LWLock guards that release on drop;
//! - [`local`]: backend-local state without thread-local storage;
//! - [`scope`]: running code as another role in a security-restricted operation, and under a
//!   `pg_catalog`-only search path;
//! - [`spi`]: read-only SQL (never assigns a transaction id).

pub(crate) mod catalog;
pub(crate) mod citus;
pub(crate) mod ffi;
pub(crate) mod local;
pub(crate) mod scope;
pub(crate) mod shmem;
pub(crate) mod spi;
pub(crate) mod trigger;
