//! Per-workspace row quotas: the trigger that keeps counters exact, and the backend-local
//! caches that keep it cheap. The SQL surface (tables, `enforce_quota`, `set_quota`,
//! `release_quota`, `quota_usage`, `quota_counters`) is in `sql/quota.sql`.
//!
//! # How it stays exact
//! `enforce_quota(tbl)` installs four statement-level AFTER triggers on `tbl` (INSERT and
//! DELETE and UPDATE with transition tables, TRUNCATE) that all call [`quota_trigger`]. Each
//! firing computes, from the transition tables, one delta per workspace (rows counted after
//! minus rows counted before, with `counted_when` applied): transition tables hold only the
//! rows really inserted, deleted or updated, so `ON CONFLICT DO NOTHING` on an existing row
//! counts nothing and COPY counts every row. The deltas are then applied on one of two paths:
//! - **shared memory** (tenancy preloaded; [`shared`], with the transition tables read
//!   directly by [`transition`]): compare-and-swap reservations settled at commit or abort; no
//!   row is written or locked, no limit overshot at any isolation level;
//! - **counter rows** (not preloaded): one `INSERT ... ON CONFLICT DO UPDATE SET used = used +
//!   delta` on `tenancy.quota_counter`, ordered by workspace. The counter row's lock is held to
//!   the end of the transaction: concurrent writers of one workspace serialize on it, and under
//!   READ COMMITTED the second re-reads the committed count before checking the limit (no
//!   overshoot); under REPEATABLE READ / SERIALIZABLE it gets a serialization failure (40001)
//!   instead. Locks are taken in workspace order, so writers of one table do not deadlock;
//!   rollbacks and savepoints undo the counters with the data.
//!
//! A delta that grows a workspace past its effective limit raises 53400 and the whole statement
//! is undone. Everything the trigger runs through SPI runs as a security-restricted operation
//! under `search_path = pg_catalog` ([`as_user`]): what reads the bookkeeping tables (settings,
//! limits, counter rows) as their owner; what evaluates `counted_when` (the delta statements,
//! the counts, the compiled reader) as the enforced table's owner, read from the relation at
//! every firing, so that code a table owner can redefine never runs with more rights than that
//! owner's ([`vet`] checks who owns the code `counted_when` calls). The administrative
//! functions reach the bookkeeping only through [`quota_admin`], which checks the caller's
//! EXECUTE privilege and table ownership first.
//!
//! # Caches (per backend)
//! Limits and table settings are read once per table (with a fresh snapshot) and kept; the
//! plans of the delta statements and counts, and the compiled transition readers, are prepared
//! once per table and kept. Any change to `tenancy.quota_limit` or `tenancy.quota_table` fires
//! a statement trigger that queues a relcache invalidation; PostgreSQL delivers it to this
//! backend at the next command and to every other backend at its next transaction start, where
//! [`relcache_callback`] drops the caches (an invalidation of an enforced table itself drops
//! that table's entries).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, OwnedPreparedStatement};
use pgrx::PgSqlErrorCode as Code;
use pgrx::WhoAllocated;
use pgrx::{PgBuiltInOids, PgOid};

use crate::error::TenancyError;
use crate::pg::scope::{as_user, with_catalog_path};
use crate::uuid_text;

mod admin;
mod cache;
mod citus;
mod plans;
mod shared;
mod sql;
mod transition;
mod trigger;
mod vet;

use admin::*;
use cache::*;
use plans::*;
use sql::*;
use trigger::*;

/// Names the transition tables get in the triggers `enforce_quota` creates.
pub(super) const NEW_TABLE: &str = "tenancy_new";
pub(super) const OLD_TABLE: &str = "tenancy_old";

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Event {
    Insert,
    Delete,
    Update,
    Truncate,
}

/// One enforced table's settings and limits (from tenancy.quota_table and tenancy.quota_limit).
pub(super) struct TableQuota {
    workspace_column: String,
    counted_when: Option<String>,
    /// The default limit (NULL workspace row); `None`: unlimited.
    default_limit: Option<i64>,
    /// Per-workspace overrides; `Some(None)`: explicitly unlimited.
    overrides: HashMap<[u8; 16], Option<i64>>,
    /// A tenancy.quota_shared_mark row exists: the counters in tenancy.quota_counter are stale
    /// because the table has been counted in shared memory since its last recount.
    shared_counts: bool,
    /// The relation is a shard of a Citus distributed table: errors name the distributed table.
    citus_shard: bool,
}

impl TableQuota {
    /// Take the limits from rows of `(workspace_id uuid, max_rows bigint)`: NULL workspace is
    /// the table's default, others override it (a NULL max_rows: unlimited).
    pub(super) fn add_limits(&mut self, rows: Vec<Vec<Option<pg_sys::Datum>>>) {
        for row in rows {
            let max = row[1].map(|d| d.value() as i64);
            match row[0] {
                None => self.default_limit = max,
                Some(d) => {
                    // SAFETY: the datum of a uuid column of a row just read.
                    let ws = unsafe { *d.cast_mut_ptr::<[u8; 16]>() };
                    self.overrides.insert(ws, max);
                }
            }
        }
    }

    pub(super) fn limit_for(&self, ws: &[u8; 16]) -> Option<i64> {
        match self.overrides.get(ws) {
            Some(over) => *over,
            None => self.default_limit,
        }
    }
}

pub(crate) use shared::{define_settings, install_hooks, on_utility, shmem_request, shmem_startup};

/// The quota caches' part of tenancy's one relcache callback (`crate::hooks`).
pub(crate) fn on_relcache(relid: pg_sys::Oid) {
    // SAFETY: called from tenancy's relcache callback with PostgreSQL's arguments.
    unsafe { relcache_callback(pg_sys::Datum::from(0), relid) }
}

/// The caches' syscache invalidation callbacks (see `crate::hooks` for the order).
pub(crate) fn register_cache_callbacks() {
    // SAFETY: registers a callback with a 'static function; at most once per process (this
    // runs from _PG_init, which PostgreSQL calls once per process that loads the library).
    unsafe {
        // a compiled counted_when has SQL functions inlined, and who owns the code it calls is
        // checked when it is compiled (quota::vet): any change of a function or a type (a
        // redefinition, a new owner) drops the compiled readers and plans
        for cache in [
            pg_sys::SysCacheIdentifier::PROCOID,
            pg_sys::SysCacheIdentifier::TYPEOID,
        ] {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as i32,
                Some(syscache_callback),
                pg_sys::Datum::from(0),
            );
        }
    }
}

pgrx::extension_sql_file!(
    "../sql/quota.sql",
    name = "quota_sql",
    requires = [
        "context_sql",
        trigger::quota_trigger,
        trigger::quota_config_changed,
        admin::assert_expression,
        admin::quota_count,
        admin::quota_admin,
        shared::quota_entries,
        shared::quota_shared,
        shared::quota_forget
    ]
);
