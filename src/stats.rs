//! Per-workspace usage counters in shared memory (needs `shared_preload_libraries`).
//!
//! # Locking protocol
//! One LWLock (tranche "tenancy") protects the *membership* of the hash table `HASH`
//! (a dynahash in shared memory, `tenancy.max_workspaces` entries, keyed by database and
//! workspace). The counters inside an entry are atomics and need no lock beyond the one that
//! keeps the entry alive:
//! - hot path ([`record`]): take the lock SHARED, look the key up, bump the entry's atomics,
//!   release. Only a key not yet in the table takes the lock EXCLUSIVE, to insert it; the insert
//!   that fills the table makes room (`table::make_room`: the least recently active 5% chosen
//!   under the lock SHARED, then removed by key under EXCLUSIVE; their figures go to their
//!   database's "other" entry). While another backend makes room, a new workspace's statement
//!   is added to the other entry: never blocks or fails a query, never loses a count;
//! - readers ([`stats_rows`]): take the lock SHARED just long enough to copy every entry into
//!   backend-local memory, then build result rows without any lock;
//! - [`reset_stats`] and eviction take it EXCLUSIVE to remove entries.
//! Counter updates are Relaxed: each counter is exact on its own; a reader may see one counter of
//! a statement before another (as with pg_stat_statements' per-entry spinlock, no snapshot
//! across counters is promised).
//!
//! The per-backend "current workspace" slots (for the sessions column) are written only by
//! their own backend (from the `tenancy.workspace_id` assign hook) with atomics, and read by
//! anyone: no lock.
//!
//! What is counted, per (database, workspace of the context current when the statement ran):
//! statements (top-level and nested separately), rows returned or affected (`es_processed`),
//! execution time, planning time, CPU time of top-level statements (user + system, planning
//! included, and that of their parallel workers), and from the quota trigger (attributed to the
//! workspace of the rows): rows added, rows removed, rejections.
//!
//! # Trust
//! The context is self-asserted (any role can `SET tenancy.workspace_id`), so:
//! - statements are tracked only in databases where the extension is installed: a backend caches
//!   the answer ([`installed_here`]) and drops it on relcache invalidations (CREATE / DROP
//!   EXTENSION create or drop the extension's relations, which invalidates them everywhere);
//! - one backend creates at most `tenancy.stats_new_entry_limit` new entries per minute (a token
//!   bucket kept in its shared slot, so reconnecting does not refill it); beyond it, statements of
//!   workspaces not yet in the table go to the database's other entry and are counted in
//!   `refused_statements`.
//!   Entries that already exist are always updated. The quota trigger's attribution (to the
//!   workspace of rows actually written) is not limited;
//! - rows are visible only to roles with the privileges of `pg_read_all_stats` (superusers
//!   included) or of the extension's owner: the claimed context grants nothing.
//!
//! # Parallel queries
//! A parallel query is one statement of the leader: parallel workers run the executor hooks too
//! (with the leader's context, restored from its settings), but add no statement, rows or
//! execution time (the leader's `es_processed` and total time already cover the workers' part).
//! A worker adds only its own CPU time, read at its ExecutorStart and ExecutorEnd, to an entry that
//! already exists (a worker never creates one): process CPU clocks are per process, so nothing
//! is counted twice.

use std::ffi::{c_int, c_long, c_void};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, Ordering::Relaxed};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::error::TenancyError;
use crate::pg::ffi as raw;
use crate::pg::local::BackendLocal;
use crate::pg::shmem::{each_entry, LwLockGuard};

mod cpu;
mod evict;
mod hooks;
mod metrics;
mod persist;
mod sql;
mod table;

use cpu::*;
use evict::*;
use hooks::*;
use persist::*;
use sql::*;
use table::*;

// what the other capabilities use
pub(crate) use table::{note_context, record};

const TRANCHE: &std::ffi::CStr = c"tenancy";

static MAX_WORKSPACES: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_MAX_WORKSPACES);
static TRACK: GucSetting<bool> = GucSetting::<bool>::new(true);
static SAVE: GucSetting<bool> = GucSetting::<bool>::new(true);
/// New entries one backend may create per minute (burst of as many); -1: no limit.
static NEW_ENTRY_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_NEW_ENTRY_LIMIT);
/// Workspaces with their own label in the Prometheus metrics functions (sql/metrics.sql).
static METRICS_WORKSPACES: GucSetting<i32> = GucSetting::<i32>::new(50);
const DEFAULT_NEW_ENTRY_LIMIT: i32 = 1000;
/// Sized for a deployment's active workspaces (20,000 active fit with room to spare), about
/// 9 MB of shared memory; see docs/statistics.md.
const DEFAULT_MAX_WORKSPACES: i32 = 50_000;
/// Entries beyond `tenancy.max_workspaces` for the per-database "other" entries (evicted
/// workspaces' and refused statements' figures): one per database that has statistics.
const OTHER_ENTRIES: c_long = 100;

/// Hash key (HASH_BLOBS hashes and compares all 24 bytes). `kind`: [`WORKSPACE`], or [`OTHER`]
/// for the entry of a database that sums what its evicted workspaces had counted and the
/// statements that got no entry of their own (`ws` all zero), so that the workspaces' figures
/// plus the "other" entry are every statement tracked since the reset.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    dbid: pg_sys::Oid,
    kind: u32,
    ws: [u8; 16],
}

const WORKSPACE: u32 = 0;
const OTHER: u32 = 1;

impl Key {
    fn workspace(dbid: pg_sys::Oid, ws: [u8; 16]) -> Key {
        Key {
            dbid,
            kind: WORKSPACE,
            ws,
        }
    }
    fn other(dbid: pg_sys::Oid) -> Key {
        Key {
            dbid,
            kind: OTHER,
            ws: [0; 16],
        }
    }
}

/// One shared-memory entry. `key` must come first (dynahash layout).
#[repr(C)]
pub(crate) struct Entry {
    key: Key,
    queries_top: AtomicU64,
    queries_nested: AtomicU64,
    rows: AtomicU64,
    exec_ns: AtomicU64,
    plan_ns: AtomicU64,
    cpu_ns: AtomicU64,
    pub(crate) rows_added: AtomicU64,
    pub(crate) rows_removed: AtomicU64,
    pub(crate) quota_rejections: AtomicU64,
    /// admission control (crate::admission): statements that took a slot, that waited for one,
    /// refused after max_wait (53000), cancelled by the workspace statement timeout; wait time
    pub(crate) admitted: AtomicU64,
    pub(crate) waited: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) wait_ns: AtomicU64,
    last_activity: AtomicI64,
}

impl Entry {
    /// Every counter, in the order of the statistics file and `sql::Snapshot` (queries, nested,
    /// rows, exec_ns, plan_ns, cpu_ns, rows_added, rows_removed, quota_rejections, admitted,
    /// waited, rejected, timed_out, wait_ns).
    fn counters(&self) -> [&AtomicU64; 14] {
        [
            &self.queries_top,
            &self.queries_nested,
            &self.rows,
            &self.exec_ns,
            &self.plan_ns,
            &self.cpu_ns,
            &self.rows_added,
            &self.rows_removed,
            &self.quota_rejections,
            &self.admitted,
            &self.waited,
            &self.rejected,
            &self.timed_out,
            &self.wait_ns,
        ]
    }
}

#[repr(C)]
struct Shared {
    lock: *mut pg_sys::LWLock,
    evictions: AtomicU64,
    /// Statements left untracked because their backend had used up its new-entry allowance.
    refused: AtomicU64,
    reset_at: AtomicI64,
    /// Workspace entries the table keeps (`tenancy.max_workspaces`); the hash has room for
    /// [`OTHER_ENTRIES`] more.
    max: i64,
    /// "Other" entries in the hash (changed under the lock EXCLUSIVE).
    others: AtomicI64,
    /// A backend is choosing entries to evict (one at a time; see `table::make_room`).
    evicting: AtomicBool,
}

/// A backend's current workspace, for the sessions column, and its new-entry token bucket
/// (`tokens`: f64 bits; `tokens_at`: when last refilled, 0 = never: a full bucket). The bucket
/// outlives the backend, so that the next backend with the same id inherits it: reconnecting
/// gives no fresh allowance.
#[repr(C)]
struct Slot {
    set: AtomicBool,
    dbid: AtomicU64,
    hi: AtomicU64,
    lo: AtomicU64,
    tokens: AtomicU64,
    tokens_at: AtomicI64,
}

static SHARED: AtomicPtr<Shared> = AtomicPtr::new(std::ptr::null_mut());
static HASH: AtomicPtr<pg_sys::HTAB> = AtomicPtr::new(std::ptr::null_mut());
static SLOTS: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());
static SLOT_COUNT: AtomicI64 = AtomicI64::new(0);

/// The statement state's transaction callbacks (see `crate::hooks` for the order).
pub(crate) fn register_xact_callbacks() {
    // SAFETY: registering 'static callbacks, once per process that loads the library.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}

/// The statistics' settings; `tenancy.max_workspaces` only while preloading (server start).
pub(crate) fn define_settings(preloading: bool) {
    if preloading {
        // a server-start setting can only be defined while preloading
        GucRegistry::define_int_guc(
        c"tenancy.max_workspaces",
        c"Number of (database, workspace) entries kept in shared memory for usage statistics.",
        c"Server start only. About 170 bytes each (see tenancy.stats_info.bytes_per_entry); when full, the least recently active 5% are evicted and their figures added to their database's other row (tenancy.workspace_stats_other).",
        &MAX_WORKSPACES,
        100,
        1_000_000,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    }
    GucRegistry::define_bool_guc(
        c"tenancy.save_stats",
        c"Save the usage statistics at clean shutdown and load them at start.",
        c"The file is pg_stat/tenancy_stats.json; it is ignored (with a LOG line) when corrupt or foreign.",
        &SAVE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"tenancy.stats_new_entry_limit",
        c"New usage-statistics entries one backend may create per minute (-1: no limit).",
        c"A burst of as many, refilled continuously. Beyond it, statements of workspaces not yet in the table are counted in their database's other row (tenancy.workspace_stats_other) and in tenancy.stats_info.refused_statements; entries that exist are always updated.",
        &NEW_ENTRY_LIMIT,
        -1,
        1_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"tenancy.metrics_workspaces",
        c"Workspaces with their own label in tenancy.workspace_metrics() and quota_metrics() (Prometheus).",
        c"The most active ones; the others are summed into workspace '_other'. Bounds the series count at (this + 1) per metric and database.",
        &METRICS_WORKSPACES,
        0,
        100_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"tenancy.track",
        c"Collect per-workspace usage statistics.",
        c"",
        &TRACK,
        GucContext::Suset,
        GucFlags::default(),
    );
}

/// "Is the extension installed here": its part of tenancy's one relcache callback
/// (`crate::hooks`; preload only).
pub(crate) fn on_relcache(relid: pg_sys::Oid) {
    // SAFETY: called from tenancy's relcache callback with PostgreSQL's arguments.
    unsafe { relcache_callback(pg_sys::Datum::from(0), relid) }
}

/// The planner, executor and utility hooks (preload only): C trampolines around the bodies in
/// `hooks.rs`, chained to the previous hooks.
pub(crate) fn install_hooks() {
    // SAFETY: installing hooks from _PG_init in the postmaster.
    unsafe { raw::install_statement_hooks() };
}

pub(crate) use table::{shmem_request, shmem_startup};

fn slot_count() -> i64 {
    // SAFETY: MaxBackends is set before shmem_request_hook runs (PostgreSQL 15).
    unsafe { pg_sys::MaxBackends as i64 + 1 }
}

fn shared_size() -> usize {
    let max = MAX_WORKSPACES.get() as c_long;
    // SAFETY: pure size computation.
    let hash =
        unsafe { pg_sys::hash_estimate_size(max + OTHER_ENTRIES, std::mem::size_of::<Entry>()) };
    hash + std::mem::size_of::<Shared>() + slot_count() as usize * std::mem::size_of::<Slot>()
}

fn shared() -> Option<&'static Shared> {
    // SAFETY: set once at shmem startup; shared memory lives as long as the process.
    unsafe { SHARED.load(Relaxed).as_ref() }
}

/// 55000 unless the library was preloaded (the statistics need shared memory).
fn require_preloaded() -> Result<&'static Shared, TenancyError> {
    shared().ok_or_else(|| {
        TenancyError::new(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "tenancy must be loaded via shared_preload_libraries to use workspace statistics",
        )
        .detail("The usage counters live in shared memory, which is only reserved at server start.")
        .hint(
            "Add 'tenancy' to shared_preload_libraries in postgresql.conf and restart the server.",
        )
    })
}

pgrx::extension_sql_file!(
    "../sql/stats.sql",
    name = "stats_sql",
    requires = [
        "quota_sql",
        sql::stats_rows_v2,
        sql::stats_other,
        sql::stats_info_v2,
        sql::reset_stats
    ]
);
pgrx::extension_sql_file!(
    "../sql/metrics.sql",
    name = "metrics_sql",
    requires = [
        "stats_sql",
        "admission_sql",
        metrics::workspace_metrics_rows
    ]
);
