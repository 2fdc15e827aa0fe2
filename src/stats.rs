//! Per-workspace usage counters in shared memory (needs `shared_preload_libraries`).
//!
//! # Locking protocol
//! One LWLock (tranche "tenancy") protects the *membership* of the hash table `HASH`
//! (a dynahash in shared memory, `tenancy.max_workspaces` entries, keyed by database and
//! workspace). The counters inside an entry are atomics and need no lock beyond the one that
//! keeps the entry alive:
//! - hot path ([`record`]): take the lock SHARED, look the key up, bump the entry's atomics,
//!   release. Only a key not yet in the table takes the lock EXCLUSIVE, to insert it (evicting
//!   the least recently active 5% first when the table is full: never blocks or fails a query);
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
//!   workspaces not yet in the table go untracked and are counted in `refused_statements`.
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

use std::ffi::{c_char, c_int, c_long, c_void};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, Ordering::Relaxed};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::error::TenancyError;
use crate::pg::ffi::{self as raw, raw_standard_executor_end, raw_standard_executor_finish, raw_standard_executor_run, raw_standard_executor_start, raw_standard_planner, raw_standard_process_utility};
use crate::pg::local::BackendLocal;
use crate::pg::shmem::{addin_shmem_init_lock, each_entry, shmem_hash, LwLockGuard};

const TRANCHE: &std::ffi::CStr = c"tenancy";

static MAX_WORKSPACES: GucSetting<i32> = GucSetting::<i32>::new(5000);
static TRACK: GucSetting<bool> = GucSetting::<bool>::new(true);
static SAVE: GucSetting<bool> = GucSetting::<bool>::new(true);
/// New entries one backend may create per minute (burst of as many); -1: no limit.
static NEW_ENTRY_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_NEW_ENTRY_LIMIT);
const DEFAULT_NEW_ENTRY_LIMIT: i32 = 100;

/// Saved at clean shutdown, read (then removed) at start, as pg_stat_statements does: a crash
/// leaves no file behind, so statistics restart empty after one.
const STATS_FILE: &str = "pg_stat/tenancy_stats.json";
const STATS_TMP: &str = "pg_stat/tenancy_stats.json.tmp";
const FILE_MAGIC: &str = "tenancy workspace statistics";
const FILE_VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct StatsFile {
    magic: String,
    version: u32,
    saved_at_us: i64,
    reset_at_us: i64,
    evictions: u64,
    /// Absent from files written before it existed.
    #[serde(default)]
    refused: u64,
    entries: Vec<SavedEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedEntry {
    dbid: u32,
    workspace: String,
    /// queries, nested, rows, exec_ns, plan_ns, cpu_ns, rows_added, rows_removed, rejections
    counters: [u64; 9],
    last_activity_us: i64,
}

/// Hash key. `_pad` is always zero: HASH_BLOBS hashes and compares all 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    dbid: pg_sys::Oid,
    _pad: u32,
    ws: [u8; 16],
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
    last_activity: AtomicI64,
}

#[repr(C)]
struct Shared {
    lock: *mut pg_sys::LWLock,
    evictions: AtomicU64,
    /// Statements left untracked because their backend had used up its new-entry allowance.
    refused: AtomicU64,
    reset_at: AtomicI64,
    max: i64,
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

// Previous hook values, chained. Written once in _PG_init (postmaster), read afterwards.
static mut PREV_SHMEM_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP: pg_sys::shmem_startup_hook_type = None;
static mut PREV_PLANNER: pg_sys::planner_hook_type = None;
static mut PREV_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;
static mut PREV_EXECUTOR_RUN: pg_sys::ExecutorRun_hook_type = None;
static mut PREV_EXECUTOR_FINISH: pg_sys::ExecutorFinish_hook_type = None;
static mut PREV_EXECUTOR_END: pg_sys::ExecutorEnd_hook_type = None;
static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

// Backend-local statement state.
static NESTING: AtomicI64 = AtomicI64::new(0);
/// Depth of tenancy's own SPI work (quota trigger, set_workspace): not counted as user activity.
static INTERNAL: AtomicI64 = AtomicI64::new(0);

/// Workspace current when each running statement started, keyed by its QueryDesc: a
/// statement is attributed to the context it started under (so `SELECT
/// tenancy.set_workspace(x)` belongs to the context before it).
static STARTED: BackendLocal<Vec<(usize, [u8; 16])>> = BackendLocal::new(Vec::new());

/// Run tenancy's own SQL without counting it as the workspace's activity.
pub(crate) fn internal<R>(f: impl FnOnce() -> R) -> R {
    INTERNAL.fetch_add(1, Relaxed);
    let r = f();
    INTERNAL.fetch_sub(1, Relaxed);
    r
}

/// Per open subtransaction: (id, NESTING, INTERNAL, STARTED length, UTILITY_FRAMES length) at
/// its start, restored when it aborts (an ERROR caught by a PL/pgSQL exception block or a
/// ROLLBACK TO).
static SUBXACTS: BackendLocal<Vec<(pg_sys::SubTransactionId, i64, i64, usize, usize)>> = BackendLocal::new(Vec::new());

/// NESTING before each utility statement still running (innermost last). A procedure (`CALL`)
/// or `DO` block that runs `COMMIT` or `ROLLBACK` ends the transaction in the middle of the
/// statement: the abort of a `ROLLBACK` must put NESTING back to the depth inside the innermost
/// running utility statement, not to 0 (which would count the rest of the procedure as
/// top-level statements and leave NESTING at -1 once the `CALL` returns: every later statement
/// of the session nested, CPU time no longer read). Each utility statement restores the NESTING
/// it started with when it returns.
static UTILITY_FRAMES: BackendLocal<Vec<i64>> = BackendLocal::new(Vec::new());
static SLOT_EXIT_REGISTERED: BackendLocal<bool> = BackendLocal::new(false);

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    if matches!(event, XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT) {
        // An abort with a portal still active is a ROLLBACK run by a procedure or DO block
        // (SPI_rollback, inside the CALL's portal) or the cleanup of a failed COMMIT there: the
        // utility statements around it keep running. After an ERROR, PortalRun has restored
        // ActivePortal (to NULL at top level) before the transaction is aborted, and nothing of
        // the statement runs any more.
        // SAFETY: reading a backend-local PostgreSQL global.
        let in_statement = unsafe { !pg_sys::ActivePortal.is_null() };
        let depth = UTILITY_FRAMES.with(|f| {
            let mut f = f.borrow_mut();
            match f.last() {
                Some(&outer) if in_statement => outer + 1,
                _ => {
                    f.clear();
                    0
                }
            }
        });
        NESTING.store(depth, Relaxed);
        INTERNAL.store(0, Relaxed);
        STARTED.with(|s| s.borrow_mut().clear());
    }
    if matches!(event, XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PREPARE) {
        SUBXACTS.with(|s| s.borrow_mut().clear());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    use pg_sys::SubXactEvent::*;
    SUBXACTS.with(|s| {
        let mut s = s.borrow_mut();
        match event {
            SUBXACT_EVENT_START_SUB => s.push((
                my_subid,
                NESTING.load(Relaxed),
                INTERNAL.load(Relaxed),
                STARTED.with(|st| st.borrow().len()),
                UTILITY_FRAMES.with(|f| f.borrow().len()),
            )),
            SUBXACT_EVENT_COMMIT_SUB | SUBXACT_EVENT_ABORT_SUB => {
                if let Some(i) = s.iter().rposition(|(id, ..)| *id == my_subid) {
                    let (_, nesting, internal, started, frames) = s[i];
                    s.truncate(i);
                    if event == SUBXACT_EVENT_ABORT_SUB {
                        NESTING.store(nesting, Relaxed);
                        INTERNAL.store(internal, Relaxed);
                        STARTED.with(|st| st.borrow_mut().truncate(started));
                        UTILITY_FRAMES.with(|f| f.borrow_mut().truncate(frames));
                    }
                }
            }
            _ => {}
        }
    });
}

/// Backend exit: this backend no longer holds a workspace.
#[pg_guard]
unsafe extern "C-unwind" fn clear_slot(_code: c_int, _arg: pg_sys::Datum) {
    note_context(None);
}

/// At a top-level start nothing can still be running: forget state an ERROR left behind.
fn reset_if_top() {
    if NESTING.load(Relaxed) == 0 {
        INTERNAL.store(0, Relaxed);
        STARTED.with(|s| s.borrow_mut().clear());
    }
}
// CPU time of top-level statements. A getrusage() call costs ~0.85 us here (a system call; CPU
// clocks have no vDSO fast path), as much as the rest of the hooks together, so the clock is read
// at transitions only, not per statement: CPU accrues to a *pending* workspace, the one whose
// statements run at top level, and is added to its entry when another workspace (or none: no
// context, a utility statement) takes over, at most CPU_FLUSH_US after the last reading at the end
// of a statement, and when the backend exits. A backend that keeps running statements for one
// workspace thus reads the clock ten times a second, not per statement, and the totals stay exact:
// all CPU between two readings belongs to the pending workspace (receiving, parsing and binding
// its statements included; idle time costs no CPU). What a backend spent in its last
// CPU_FLUSH_US shows once it runs its next statement or exits.
const CPU_FLUSH_US: i64 = 100_000;

#[derive(Default)]
struct Cpu {
    /// getrusage() total (ns) at the last reading.
    last_ns: u64,
    /// Wall clock (us) of the last reading.
    last_at_us: i64,
    /// The workspace the CPU since the last reading belongs to; None: untracked.
    pending: Option<[u8; 16]>,
    exit_registered: bool,
}

static CPU: BackendLocal<Cpu> =
    BackendLocal::new(Cpu { last_ns: 0, last_at_us: 0, pending: None, exit_registered: false });

/// Read the clock, add what was used since the last reading to the pending workspace.
fn cpu_read(cpu: &mut Cpu) {
    let now = now_ns();
    // SAFETY: plain clock read (vDSO).
    let now_us = unsafe { raw::now() };
    if let Some(ws) = cpu.pending {
        let used = now.saturating_sub(cpu.last_ns);
        record_at(ws, now_us, Create::Limited, |e| {
            e.cpu_ns.fetch_add(used, Relaxed);
        });
    }
    cpu.last_ns = now;
    cpu.last_at_us = now_us;
}

/// A top-level statement starts for `ws` (None: untracked, or a utility statement).
fn cpu_enter(ws: Option<&[u8; 16]>) {
    CPU.with(|c| {
        let mut cpu = c.borrow_mut();
        if cpu.pending.as_ref() == ws {
            return; // same workspace, or still none: nothing to read
        }
        cpu_read(&mut cpu);
        cpu.pending = ws.copied();
        if ws.is_some() && !std::mem::replace(&mut cpu.exit_registered, true) {
            // SAFETY: registering a 'static callback for this backend's exit.
            unsafe { pg_sys::before_shmem_exit(Some(cpu_at_exit), pg_sys::Datum::from(0)) };
        }
    })
}

/// A tracked top-level statement ended at `now_us`: read the clock if the last reading is old.
fn cpu_tick(now_us: i64) {
    CPU.with(|c| {
        let mut cpu = c.borrow_mut();
        if now_us - cpu.last_at_us >= CPU_FLUSH_US {
            cpu_read(&mut cpu);
        }
    })
}

/// Backend exit: account what the pending workspace used since the last reading.
#[pg_guard]
unsafe extern "C-unwind" fn cpu_at_exit(_code: c_int, _arg: pg_sys::Datum) {
    CPU.with(|c| {
        let mut cpu = c.borrow_mut();
        if cpu.pending.is_some() {
            cpu_read(&mut cpu);
            cpu.pending = None;
        }
    })
}

static PLANNED_AT_TOP: AtomicBool = AtomicBool::new(false);

pub(crate) fn init() {
    // SAFETY: reading a PostgreSQL global flag in _PG_init.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    // SAFETY: registering 'static callbacks, once per process that loads the library.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
    if preloading {
        // a server-start setting can only be defined while preloading
        GucRegistry::define_int_guc(
        c"tenancy.max_workspaces",
        c"Number of (database, workspace) entries kept in shared memory for usage statistics.",
        c"Server start only. About 130 bytes each (see tenancy.stats_info.bytes_per_entry); the least recently active are evicted when full.",
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
        c"A burst of as many, refilled continuously. Beyond it, statements of workspaces not yet in the table are not tracked (counted in tenancy.stats_info.refused_statements); entries that exist are always updated.",
        &NEW_ENTRY_LIMIT,
        -1,
        1_000_000,
        GucContext::Suset,
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
    if !preloading {
        return;
    }
    // SAFETY: installing hooks from _PG_init in the postmaster, chaining the previous ones;
    // every hook function below has the exact signature PostgreSQL expects.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0));
        PREV_SHMEM_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
        PREV_PLANNER = pg_sys::planner_hook;
        pg_sys::planner_hook = Some(planner);
        PREV_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
        PREV_EXECUTOR_RUN = pg_sys::ExecutorRun_hook;
        pg_sys::ExecutorRun_hook = Some(executor_run);
        PREV_EXECUTOR_FINISH = pg_sys::ExecutorFinish_hook;
        pg_sys::ExecutorFinish_hook = Some(executor_finish);
        PREV_EXECUTOR_END = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(executor_end);
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

fn slot_count() -> i64 {
    // SAFETY: MaxBackends is set before shmem_request_hook runs (PostgreSQL 15).
    unsafe { pg_sys::MaxBackends as i64 + 1 }
}

fn shared_size() -> usize {
    let max = MAX_WORKSPACES.get() as c_long;
    // SAFETY: pure size computation.
    let hash = unsafe { pg_sys::hash_estimate_size(max, std::mem::size_of::<Entry>()) };
    hash + std::mem::size_of::<Shared>() + slot_count() as usize * std::mem::size_of::<Slot>()
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    // SAFETY: called by PostgreSQL in the postmaster during shmem sizing.
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(shared_size());
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), 1);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    // SAFETY: the standard ShmemInitStruct / ShmemInitHash protocol under AddinShmemInitLock,
    // as pg_stat_statements does it.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP {
            prev();
        }
        let addin_lock = LwLockGuard::exclusive(addin_shmem_init_lock());
        let mut found = false;
        let shared = pg_sys::ShmemInitStruct(c"tenancy stats".as_ptr(), std::mem::size_of::<Shared>(), &mut found)
            .cast::<Shared>();
        if !found {
            shared.write(Shared {
                lock: &mut (*pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr())).lock,
                evictions: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                reset_at: AtomicI64::new(pg_sys::GetCurrentTimestamp()),
                max: MAX_WORKSPACES.get() as i64,
            });
        }
        let n = slot_count();
        let slots = pg_sys::ShmemInitStruct(
            c"tenancy stats sessions".as_ptr(),
            n as usize * std::mem::size_of::<Slot>(),
            &mut found,
        )
        .cast::<Slot>();
        if !found {
            std::ptr::write_bytes(slots, 0, n as usize);
        }
        let hash = shmem_hash::<Key, Entry>(c"tenancy stats hash", MAX_WORKSPACES.get() as c_long);
        drop(addin_lock);
        SHARED.store(shared, Relaxed);
        HASH.store(hash, Relaxed);
        SLOTS.store(slots, Relaxed);
        SLOT_COUNT.store(n, Relaxed);
        if !pg_sys::IsUnderPostmaster {
            // the postmaster: load what a clean shutdown saved, and save again at exit
            load_file(&*shared, hash);
            pg_sys::on_shmem_exit(Some(shmem_shutdown), pg_sys::Datum::from(0));
        }
    }
}

/// Read pg_stat/tenancy_stats.json into the empty table, then remove it. Anything wrong with
/// the file is logged and ignored: it never stops the server from starting.
unsafe fn load_file(shared: &Shared, hash: *mut pg_sys::HTAB) {
    if !SAVE.get() {
        let _ = std::fs::remove_file(STATS_FILE);
        return;
    }
    let text = match std::fs::read(STATS_FILE) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            pgrx::log!("tenancy: could not read {STATS_FILE}: {e}; starting with empty workspace statistics");
            return;
        }
    };
    let _ = std::fs::remove_file(STATS_FILE);
    let file: StatsFile = match serde_json::from_slice(&text) {
        Ok(f) => f,
        Err(e) => {
            pgrx::log!("tenancy: ignoring corrupt {STATS_FILE} ({e}); starting with empty workspace statistics");
            return;
        }
    };
    if file.magic != FILE_MAGIC || file.version != FILE_VERSION {
        pgrx::log!(
            "tenancy: ignoring {STATS_FILE}: not a tenancy statistics file of version {FILE_VERSION}; starting with empty workspace statistics"
        );
        return;
    }
    let mut loaded = 0;
    for saved in file.entries.iter().take(shared.max as usize) {
        let Some(ws) = crate::uuid_text::parse(saved.workspace.as_bytes()) else { continue };
        let key = Key { dbid: pg_sys::Oid::from(saved.dbid), _pad: 0, ws };
        let mut found = false;
        // SAFETY: single-threaded postmaster startup; nobody else uses the table yet.
        let e = unsafe {
            pg_sys::hash_search(hash, (&key as *const Key).cast(), pg_sys::HASHACTION::HASH_ENTER_NULL, &mut found)
                .cast::<Entry>()
        };
        // SAFETY: e points to an entry of our table (key in place).
        let Some(e) = (unsafe { e.as_mut() }) else { break };
        let c = saved.counters;
        e.queries_top = AtomicU64::new(c[0]);
        e.queries_nested = AtomicU64::new(c[1]);
        e.rows = AtomicU64::new(c[2]);
        e.exec_ns = AtomicU64::new(c[3]);
        e.plan_ns = AtomicU64::new(c[4]);
        e.cpu_ns = AtomicU64::new(c[5]);
        e.rows_added = AtomicU64::new(c[6]);
        e.rows_removed = AtomicU64::new(c[7]);
        e.quota_rejections = AtomicU64::new(c[8]);
        e.last_activity = AtomicI64::new(saved.last_activity_us);
        loaded += 1;
    }
    shared.evictions.store(file.evictions, Relaxed);
    shared.refused.store(file.refused, Relaxed);
    shared.reset_at.store(file.reset_at_us, Relaxed);
    pgrx::log!("tenancy: loaded statistics of {loaded} workspaces from {STATS_FILE}");
}

/// Postmaster exit: save the table unless this is a crash or saving is off.
#[pg_guard]
unsafe extern "C-unwind" fn shmem_shutdown(code: c_int, _arg: pg_sys::Datum) {
    if code != 0 || !SAVE.get() {
        return;
    }
    let Some(shared) = shared() else { return };
    let file = StatsFile {
        magic: FILE_MAGIC.to_string(),
        version: FILE_VERSION,
        // SAFETY: plain clock read.
        saved_at_us: unsafe { pg_sys::GetCurrentTimestamp() },
        reset_at_us: shared.reset_at.load(Relaxed),
        evictions: shared.evictions.load(Relaxed),
        refused: shared.refused.load(Relaxed),
        entries: copy_entries(shared, false)
            .into_iter()
            .map(|s| SavedEntry {
                dbid: u32::from(s.key.dbid),
                workspace: crate::uuid_text::canonical(&s.key.ws),
                counters: s.v,
                last_activity_us: s.last,
            })
            .collect(),
    };
    let result = serde_json::to_vec(&file)
        .map_err(|e| e.to_string())
        .and_then(|bytes| std::fs::write(STATS_TMP, bytes).map_err(|e| e.to_string()))
        .and_then(|()| std::fs::rename(STATS_TMP, STATS_FILE).map_err(|e| e.to_string()));
    if let Err(e) = result {
        pgrx::log!("tenancy: could not save workspace statistics to {STATS_FILE}: {e}");
        let _ = std::fs::remove_file(STATS_TMP);
    }
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
        .hint("Add 'tenancy' to shared_preload_libraries in postgresql.conf and restart the server.")
    })
}

fn now_ns() -> u64 {
    // SAFETY: getrusage of the calling process into a zeroed struct.
    let mut ru: libc_rusage = unsafe { std::mem::zeroed() };
    unsafe { getrusage(0, &mut ru) };
    let tv = |s: i64, us: i64| (s as u64) * 1_000_000_000 + (us as u64) * 1_000;
    tv(ru.utime_s, ru.utime_us) + tv(ru.stime_s, ru.stime_us)
}

#[repr(C)]
struct libc_rusage {
    utime_s: i64,
    utime_us: i64,
    stime_s: i64,
    stime_us: i64,
    _rest: [i64; 14],
}
extern "C" {
    fn getrusage(who: c_int, usage: *mut libc_rusage) -> c_int;
}

fn tracking() -> Option<[u8; 16]> {
    if SHARED.load(Relaxed).is_null() || INTERNAL.load(Relaxed) > 0 || !TRACK.get() {
        return None;
    }
    let ws = crate::context::current()?;
    installed_here().then_some(ws)
}

/// Whether the extension is installed in this backend's database, cached per backend:
/// `EXT_UNKNOWN`, `EXT_ABSENT`, or the oid of the relation `tenancy.workspace_stats` (the marker
/// whose invalidation means the extension may have been dropped or replaced).
static EXT_STATE: AtomicU64 = AtomicU64::new(EXT_UNKNOWN);
const EXT_UNKNOWN: u64 = u64::MAX;
const EXT_ABSENT: u64 = u64::MAX - 1;
/// Bumped by every invalidation that clears [`EXT_STATE`]: a lookup during which one arrived is
/// not cached.
static EXT_GEN: AtomicU64 = AtomicU64::new(0);

/// Relcache invalidation (this database's or a shared relation's; `relid` 0: all of them, e.g.
/// after a sinval queue overflow). While the extension is known to be absent, any invalidation
/// may be its CREATE EXTENSION (which creates relations: their pg_class rows invalidate them
/// everywhere); while it is installed, only one of the marker relation (dropped with the
/// extension) or a full reset. Invalidations are rare next to statements (DDL, ANALYZE), so the
/// hot path only reads `EXT_STATE`.
#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let state = EXT_STATE.load(Relaxed);
    let relid = u64::from(u32::from(relid));
    if state == EXT_UNKNOWN {
        return;
    }
    if state == EXT_ABSENT || relid == 0 || relid == state {
        EXT_GEN.fetch_add(1, Relaxed);
        EXT_STATE.store(EXT_UNKNOWN, Relaxed);
    }
}

/// Is the extension installed in this database (with its statistics view)? A catalog lookup once
/// per invalidation (see [`relcache_callback`]), else one atomic load. Callers are in a
/// transaction (planner, executor).
fn installed_here() -> bool {
    match EXT_STATE.load(Relaxed) {
        EXT_ABSENT => false,
        EXT_UNKNOWN => {
            // SAFETY: called from the planner and executor hooks, in a valid transaction.
            if !unsafe { pg_sys::IsTransactionState() } {
                return false;
            }
            let gen = EXT_GEN.load(Relaxed);
            // SAFETY: catalog lookups in a transaction (errors become Rust panics through the
            // guarded pg_sys calls, as anywhere in the hooks).
            let marker = unsafe {
                let ext = pg_sys::get_extension_oid(c"tenancy".as_ptr(), true);
                if ext == pg_sys::InvalidOid {
                    None
                } else {
                    // the control file fixes the schema (schema = tenancy, not relocatable)
                    let nsp = pg_sys::get_namespace_oid(c"tenancy".as_ptr(), true);
                    let rel = if nsp == pg_sys::InvalidOid {
                        pg_sys::InvalidOid
                    } else {
                        pg_sys::get_relname_relid(c"workspace_stats".as_ptr(), nsp)
                    };
                    (rel != pg_sys::InvalidOid).then_some(u64::from(u32::from(rel)))
                }
            };
            if EXT_GEN.load(Relaxed) == gen {
                EXT_STATE.store(marker.unwrap_or(EXT_ABSENT), Relaxed);
            }
            marker.is_some()
        }
        _ => true,
    }
}

/// Whether [`record_at`] may create the entry when it does not exist.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Create {
    /// Yes (the quota trigger: the workspace of rows actually written).
    Always,
    /// Within the backend's `tenancy.stats_new_entry_limit` (statements under a claimed context).
    Limited,
    /// No (parallel workers: the leader creates the entry).
    Never,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Recorded {
    Yes,
    /// No entry, and the backend's allowance of new entries is used up.
    Refused,
    /// Not tracking, or no entry and `Create::Never`.
    No,
}

/// Add to the entry of (current database, `ws`), creating it if needed. Never fails. For the
/// quota trigger: the rows' workspace, not limited by `tenancy.stats_new_entry_limit`.
pub(crate) fn record(ws: [u8; 16], f: impl Fn(&Entry)) {
    // SAFETY: plain clock read (vDSO).
    record_at(ws, unsafe { raw::now() }, Create::Always, f);
}

/// Backend-local bucket for a process without a slot of its own.
static LOCAL_BUCKET: BackendLocal<(f64, i64)> = BackendLocal::new((0.0, 0));

/// This backend's shared slot, if it has one.
fn my_slot() -> Option<&'static Slot> {
    let slots = SLOTS.load(Relaxed);
    // SAFETY: MyBackendId indexes this backend's own slot (1..=MaxBackends), shared memory that
    // lives as long as the process.
    unsafe {
        let id = pg_sys::MyBackendId as i64;
        if slots.is_null() || id <= 0 || id >= SLOT_COUNT.load(Relaxed) {
            return None;
        }
        Some(&*slots.add(id as usize))
    }
}

/// Take one token of this backend's new-entry allowance at `now` (us); false when none is left.
/// `give_back`: return a token taken for an entry another backend created meanwhile.
fn take_token(now: i64, give_back: bool) -> bool {
    let limit = NEW_ENTRY_LIMIT.get();
    if limit <= 0 {
        // 0: no new entry, and the allowance is left as it is; -1 (superuser-only, as every
        // value of the setting): no limit, and the allowance is full again once it applies
        if limit < 0 {
            if let Some(slot) = my_slot() {
                slot.tokens_at.store(0, Relaxed);
            }
            LOCAL_BUCKET.with(|b| b.borrow_mut().1 = 0);
        }
        return limit < 0;
    }
    let limit = f64::from(limit);
    let update = |tokens: f64, at: i64| -> (bool, f64) {
        let tokens = if give_back {
            return (true, (tokens + 1.0).min(limit));
        } else if at == 0 {
            limit
        } else {
            (tokens + (now - at).max(0) as f64 * limit / 60e6).min(limit)
        };
        if tokens >= 1.0 {
            (true, tokens - 1.0)
        } else {
            (false, tokens)
        }
    };
    match my_slot() {
        // only this backend writes its slot
        Some(slot) => {
            let (ok, tokens) = update(f64::from_bits(slot.tokens.load(Relaxed)), slot.tokens_at.load(Relaxed));
            slot.tokens.store(tokens.to_bits(), Relaxed);
            slot.tokens_at.store(now, Relaxed);
            ok
        }
        None => LOCAL_BUCKET.with(|b| {
            let mut b = b.borrow_mut();
            let (ok, tokens) = update(b.0, b.1);
            *b = (tokens, now);
            ok
        }),
    }
}

/// Add to the entry of (current database, `ws`), with its last activity set to `now` (us) the
/// caller already read; `create` says whether a missing entry may be created.
fn record_at(ws: [u8; 16], now: i64, create: Create, f: impl Fn(&Entry)) -> Recorded {
    let (Some(shared), hash) = (shared(), HASH.load(Relaxed)) else { return Recorded::No };
    if !TRACK.get() {
        return Recorded::No;
    }
    // SAFETY: MyDatabaseId is the backend's database; the hash is valid shared memory; every
    // entry pointer is used only while the lock keeping it alive is held.
    unsafe {
        let key = Key { dbid: pg_sys::MyDatabaseId, _pad: 0, ws };
        let keyp = (&key as *const Key).cast::<c_void>();
        {
            let _lock = LwLockGuard::shared(shared.lock);
            let e = raw::hash_search(hash, keyp, pg_sys::HASHACTION::HASH_FIND, std::ptr::null_mut()).cast::<Entry>();
            if let Some(e) = e.as_ref() {
                f(e);
                e.last_activity.store(now, Relaxed);
                return Recorded::Yes;
            }
        }
        match create {
            Create::Never => return Recorded::No,
            // refused without taking the lock EXCLUSIVE: a loop over new ids costs others nothing
            Create::Limited if !take_token(now, false) => return Recorded::Refused,
            _ => {}
        }
        let lock = LwLockGuard::exclusive(shared.lock);
        let mut e = raw::hash_search(hash, keyp, pg_sys::HASHACTION::HASH_FIND, std::ptr::null_mut()).cast::<Entry>();
        if e.is_null() {
            if pg_sys::hash_get_num_entries(hash) >= shared.max {
                evict(shared, hash);
            }
            let mut found = false;
            e = pg_sys::hash_search(hash, keyp, pg_sys::HASHACTION::HASH_ENTER_NULL, &mut found).cast::<Entry>();
            if !e.is_null() && !found {
                // zero every counter (the key is already in place)
                let counters = (e as *mut u8).add(std::mem::size_of::<Key>());
                std::ptr::write_bytes(counters, 0, std::mem::size_of::<Entry>() - std::mem::size_of::<Key>());
            }
        } else if create == Create::Limited {
            take_token(now, true); // another backend created it meanwhile
        }
        if !e.is_null() {
            f(&*e);
            (*e).last_activity.store(now, Relaxed);
        }
        drop(lock);
        if e.is_null() {
            Recorded::No
        } else {
            Recorded::Yes
        }
    }
}

/// Remove the least recently active 5% (at least one). Caller holds the lock EXCLUSIVE.
unsafe fn evict(shared: &Shared, hash: *mut pg_sys::HTAB) {
    // SAFETY: caller holds the lock exclusively, so entries cannot change membership.
    unsafe {
        let mut all: Vec<(i64, Key)> = Vec::with_capacity(pg_sys::hash_get_num_entries(hash) as usize);
        each_entry(hash, |e: &Entry| all.push((e.last_activity.load(Relaxed), e.key)));
        all.sort_by_key(|(t, _)| *t);
        let n = (all.len() / 20).max(1);
        for (_, key) in all.iter().take(n) {
            pg_sys::hash_search(hash, (key as *const Key).cast(), pg_sys::HASHACTION::HASH_REMOVE, std::ptr::null_mut());
        }
        shared.evictions.fetch_add(n as u64, Relaxed);
    }
}

/// Called by the `tenancy.workspace_id` assign hook: publish this backend's workspace.
/// Parallel workers skip: they restore the leader's settings, but are not sessions.
pub(crate) fn note_context(ws: Option<[u8; 16]>) {
    if is_parallel_worker() {
        return;
    }
    // Only this backend writes its slot. Processes without a backend id (postmaster, auxiliary)
    // skip.
    let Some(slot) = my_slot() else { return };
    // SAFETY: registering a 'static callback for this backend's exit; reading its database id.
    unsafe {
        if ws.is_some() && !SLOT_EXIT_REGISTERED.with(|r| r.replace(true)) {
            pg_sys::before_shmem_exit(Some(clear_slot), pg_sys::Datum::from(0));
        }
        match ws {
            None => slot.set.store(false, Relaxed),
            Some(b) => {
                slot.dbid.store(u32::from(pg_sys::MyDatabaseId) as u64, Relaxed);
                slot.hi.store(u64::from_be_bytes(b[..8].try_into().unwrap()), Relaxed);
                slot.lo.store(u64::from_be_bytes(b[8..].try_into().unwrap()), Relaxed);
                slot.set.store(true, Relaxed);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hooks
//
// The chained calls (previous hook or standard_*) are made without pgrx's error conversion, as
// a C hook makes them: an ERROR raised inside them propagates unchanged (position, internal
// query and context included) instead of being caught and re-raised by pgrx, which loses
// those fields. No value with a destructor is alive in these frames at those calls; the
// (sub)transaction abort callbacks repair NESTING and the other statement state.
// ---------------------------------------------------------------------------------------------

/// Refuse `ALTER ROLE ... SET tenancy.workspace_id` and `ALTER DATABASE ... SET
/// tenancy.workspace_id` (any role, database, `ALL`, `IN DATABASE`; `= value`, `TO value` and
/// `FROM CURRENT`), for every role, superusers included: a login default would start every new
/// connection inside a workspace (see `context::check_workspace_id`, which ignores such a value
/// at connection start). `RESET` and `SET ... TO DEFAULT` remove a default and stay allowed.
/// 0A000 feature_not_supported.
unsafe fn refuse_context_default(pstmt: *mut pg_sys::PlannedStmt) {
    // SAFETY: PostgreSQL hands the hook a valid planned utility statement; the node is read
    // according to its tag.
    let (setstmt, kind) = unsafe {
        let node = (*pstmt).utilityStmt;
        if node.is_null() {
            return;
        }
        match (*node).type_ {
            pg_sys::NodeTag::T_AlterRoleSetStmt => ((*node.cast::<pg_sys::AlterRoleSetStmt>()).setstmt, "ROLE"),
            pg_sys::NodeTag::T_AlterDatabaseSetStmt => {
                ((*node.cast::<pg_sys::AlterDatabaseSetStmt>()).setstmt, "DATABASE")
            }
            _ => return,
        }
    };
    // SAFETY: a VariableSetStmt with a NUL-terminated name (NULL only for RESET ALL).
    let name = unsafe {
        let Some(set) = setstmt.as_ref() else { return };
        use pg_sys::VariableSetKind::*;
        if !matches!(set.kind, VAR_SET_VALUE | VAR_SET_CURRENT) || set.name.is_null() {
            return;
        }
        std::ffi::CStr::from_ptr(set.name).to_bytes()
    };
    if !name.eq_ignore_ascii_case(crate::context::WORKSPACE_ID_GUC.to_bytes()) {
        return;
    }
    TenancyError::new(
        Code::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!("tenancy.workspace_id cannot have a default: ALTER {kind} ... SET tenancy.workspace_id is refused"),
    )
    .detail(
        "A role or database default would start every new connection inside that workspace, so that a \
         request that forgot its context would no longer see nothing. Such a default is ignored at \
         connection start (with a WARNING) and reported by tenancy.audit() as context_default.",
    )
    .hint(
        "Set the context per request: SELECT tenancy.set_workspace(id, true) or SET LOCAL \
         tenancy.workspace_id inside the transaction. RESET tenancy.workspace_id removes an existing default.",
    )
    .raise()
}

/// Utility statements (DO, CALL, EXPLAIN ANALYZE, CREATE TABLE AS, ...) are not counted
/// themselves; the statements they run are counted as nested ones. Each one restores the
/// NESTING it started with when it returns (see [`UTILITY_FRAMES`]).
#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: pstmt is the statement PostgreSQL is about to run.
    unsafe { refuse_context_default(pstmt) };
    reset_if_top();
    let outer = NESTING.load(Relaxed);
    if outer == 0 {
        cpu_enter(None);
    }
    let frame = UTILITY_FRAMES.with(|f| {
        let mut f = f.borrow_mut();
        f.push(outer);
        f.len() - 1
    });
    NESTING.store(outer + 1, Relaxed);
    // SAFETY: chaining with the same arguments (see the note above on raw calls). An ERROR
    // skips what follows: the (sub)transaction abort callbacks repair NESTING and the frames.
    unsafe {
        match PREV_PROCESS_UTILITY {
            Some(prev) => prev(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
            None => raw_standard_process_utility(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
        }
    }
    UTILITY_FRAMES.with(|f| f.borrow_mut().truncate(frame));
    NESTING.store(outer, Relaxed);
}

#[pg_guard]
unsafe extern "C-unwind" fn planner(
    parse: *mut pg_sys::Query,
    query_string: *const c_char,
    cursor_options: c_int,
    bound_params: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    reset_if_top();
    let ws = tracking();
    let top = NESTING.load(Relaxed) == 0;
    if top {
        cpu_enter(ws.as_ref());
        PLANNED_AT_TOP.store(ws.is_some(), Relaxed);
    }
    let start = ws.map(|_| std::time::Instant::now());
    // SAFETY: chaining to the previous planner or the standard one with the same arguments.
    let result = unsafe {
        match PREV_PLANNER {
            Some(prev) => prev(parse, query_string, cursor_options, bound_params),
            None => raw_standard_planner(parse, query_string, cursor_options, bound_params),
        }
    };
    if let (Some(ws), Some(start)) = (ws, start) {
        let ns = start.elapsed().as_nanos() as u64;
        // SAFETY: plain clock read (vDSO).
        record_at(ws, unsafe { raw::now() }, Create::Limited, |e| {
            e.plan_ns.fetch_add(ns, Relaxed);
        });
    }
    result
}

/// Whether this process is a parallel worker (PostgreSQL's `IsParallelWorker()`).
fn is_parallel_worker() -> bool {
    // SAFETY: reading a plain global int of this process.
    unsafe { pg_sys::ParallelWorkerNumber >= 0 }
}

/// In a parallel worker: the workspace and the CPU clock at its ExecutorStart.
static WORKER_CPU: BackendLocal<Option<([u8; 16], u64)>> = BackendLocal::new(None);

#[pg_guard]
unsafe extern "C-unwind" fn executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: c_int) {
    if is_parallel_worker() {
        // the leader counts the statement; a worker only reads its CPU clock (see the header)
        let ws = if shared().is_some() && TRACK.get() { crate::context::current() } else { None };
        WORKER_CPU.with(|w| *w.borrow_mut() = ws.map(|ws| (ws, now_ns())));
        // SAFETY: chaining with the same arguments.
        unsafe {
            match PREV_EXECUTOR_START {
                Some(prev) => prev(query_desc, eflags),
                None => raw_standard_executor_start(query_desc, eflags),
            }
        }
        return;
    }
    // SAFETY: chaining; then, as pg_stat_statements does, ask for total-time instrumentation
    // allocated in the query's own memory context.
    unsafe {
        let top = NESTING.load(Relaxed) == 0;
        let planned = top && PLANNED_AT_TOP.swap(false, Relaxed);
        if top && !planned {
            reset_if_top();
        }
        let ws = tracking();
        if top && !planned {
            cpu_enter(ws.as_ref());
        }
        match PREV_EXECUTOR_START {
            Some(prev) => prev(query_desc, eflags),
            None => raw_standard_executor_start(query_desc, eflags),
        }
        if let Some(ws) = ws {
            STARTED.with(|s| s.borrow_mut().push((query_desc as usize, ws)));
            if (*query_desc).totaltime.is_null() {
                let old = pg_sys::MemoryContextSwitchTo((*(*query_desc).estate).es_query_cxt);
                (*query_desc).totaltime =
                    raw::instr_alloc(1, pg_sys::InstrumentOption::INSTRUMENT_TIMER as c_int, false);
                pg_sys::MemoryContextSwitchTo(old);
            }
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_run(
    query_desc: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
    execute_once: bool,
) {
    // An ERROR skips the decrement: the (sub)transaction abort callbacks restore NESTING.
    NESTING.fetch_add(1, Relaxed);
    // SAFETY: chaining with the same arguments.
    unsafe {
        match PREV_EXECUTOR_RUN {
            Some(prev) => prev(query_desc, direction, count, execute_once),
            None => raw_standard_executor_run(query_desc, direction, count, execute_once),
        }
    }
    NESTING.fetch_sub(1, Relaxed);
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_finish(query_desc: *mut pg_sys::QueryDesc) {
    NESTING.fetch_add(1, Relaxed);
    // SAFETY: chaining with the same argument.
    unsafe {
        match PREV_EXECUTOR_FINISH {
            Some(prev) => prev(query_desc),
            None => raw_standard_executor_finish(query_desc),
        }
    }
    NESTING.fetch_sub(1, Relaxed);
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_end(query_desc: *mut pg_sys::QueryDesc) {
    if is_parallel_worker() {
        if let Some((ws, start)) = WORKER_CPU.with(|w| w.borrow_mut().take()) {
            let used = now_ns().saturating_sub(start);
            // SAFETY: plain clock read (vDSO).
            record_at(ws, unsafe { raw::now() }, Create::Never, |e| {
                e.cpu_ns.fetch_add(used, Relaxed);
            });
        }
        // SAFETY: chaining with the same argument.
        unsafe {
            match PREV_EXECUTOR_END {
                Some(prev) => prev(query_desc),
                None => raw_standard_executor_end(query_desc),
            }
        }
        return;
    }
    // SAFETY: totaltime was allocated by executor_start (or by another extension) in the
    // query's memory context, still alive here.
    unsafe {
        let started = STARTED.with(|s| {
            let mut s = s.borrow_mut();
            let i = s.iter().rposition(|(q, _)| *q == query_desc as usize)?;
            Some(s.remove(i).1)
        });
        let still_tracking = INTERNAL.load(Relaxed) == 0 && TRACK.get();
        if let (Some(ws), true, Some(total)) = (started, still_tracking, (*query_desc).totaltime.as_mut()) {
            raw::instr_end_loop(total);
            let exec_ns = (total.total * 1e9) as u64;
            let rows = (*(*query_desc).estate).es_processed;
            let top = NESTING.load(Relaxed) == 0;
            // one clock read serves the entry's last activity and the CPU reading's age
            let now = raw::now();
            let recorded = record_at(ws, now, Create::Limited, |e| {
                if top {
                    e.queries_top.fetch_add(1, Relaxed);
                } else {
                    e.queries_nested.fetch_add(1, Relaxed);
                }
                e.rows.fetch_add(rows, Relaxed);
                e.exec_ns.fetch_add(exec_ns, Relaxed);
            });
            if recorded == Recorded::Refused {
                if let Some(shared) = shared() {
                    shared.refused.fetch_add(1, Relaxed);
                }
            }
            if top {
                cpu_tick(now);
            }
        }
        match PREV_EXECUTOR_END {
            Some(prev) => prev(query_desc),
            None => raw_standard_executor_end(query_desc),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SQL API
// ---------------------------------------------------------------------------------------------

struct Snapshot {
    key: Key,
    v: [u64; 9],
    last: i64,
}

/// Copy every entry out. `lock`: take the lock SHARED (false only at postmaster exit, where
/// no backend is left and the postmaster cannot take LWLocks).
fn copy_entries(shared: &Shared, lock: bool) -> Vec<Snapshot> {
    let hash = HASH.load(Relaxed);
    let mut out = Vec::new();
    // SAFETY: shared lock held while iterating; entries are copied out before release.
    unsafe {
        let guard = lock.then(|| LwLockGuard::shared(shared.lock));
        out.reserve(pg_sys::hash_get_num_entries(hash) as usize);
        each_entry(hash, |e: &Entry| {
            out.push(Snapshot {
                key: e.key,
                v: [
                    e.queries_top.load(Relaxed),
                    e.queries_nested.load(Relaxed),
                    e.rows.load(Relaxed),
                    e.exec_ns.load(Relaxed),
                    e.plan_ns.load(Relaxed),
                    e.cpu_ns.load(Relaxed),
                    e.rows_added.load(Relaxed),
                    e.rows_removed.load(Relaxed),
                    e.quota_rejections.load(Relaxed),
                ],
                last: e.last_activity.load(Relaxed),
            })
        });
        drop(guard);
    }
    out
}

fn sessions_by_key() -> std::collections::HashMap<(u32, [u8; 16]), i64> {
    let mut m = std::collections::HashMap::new();
    let slots = SLOTS.load(Relaxed);
    for i in 0..SLOT_COUNT.load(Relaxed) {
        // SAFETY: i < SLOT_COUNT; atomics read without lock (see the module header).
        let s = unsafe { &*slots.add(i as usize) };
        if s.set.load(Relaxed) {
            let mut ws = [0u8; 16];
            ws[..8].copy_from_slice(&s.hi.load(Relaxed).to_be_bytes());
            ws[8..].copy_from_slice(&s.lo.load(Relaxed).to_be_bytes());
            *m.entry((s.dbid.load(Relaxed) as u32, ws)).or_default() += 1;
        }
    }
    m
}

/// Who may read the rows of `workspace_stats`: roles with the privileges of `pg_read_all_stats`
/// (superusers have every role's) or of the extension's owner. The claimed context counts for
/// nothing: anyone can claim any workspace.
fn can_read_stats() -> bool {
    // SAFETY: catalog lookups on the current user.
    let user = unsafe { pg_sys::GetUserId() };
    // SAFETY: as above.
    if unsafe { pg_sys::has_privs_of_role(user, pg_sys::Oid::from(pg_sys::ROLE_PG_READ_ALL_STATS)) } {
        return true;
    }
    let owner = internal(|| crate::pg::spi::one::<pg_sys::Oid>("SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'tenancy'", &[]));
    // SAFETY: as above.
    matches!(owner, Ok(Some(owner)) if unsafe { pg_sys::has_privs_of_role(user, owner) })
}

#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_restricted, name = "_workspace_stats")]
fn stats_rows() -> Result<
    TableIterator<
        'static,
        (
            name!(workspace_id, pgrx::Uuid),
            name!(dbid, pg_sys::Oid),
            name!(queries, i64),
            name!(nested_queries, i64),
            name!(rows, i64),
            name!(exec_time_ms, f64),
            name!(plan_time_ms, f64),
            name!(cpu_time_ms, f64),
            name!(quota_rows_added, i64),
            name!(quota_rows_removed, i64),
            name!(quota_rejections, i64),
            name!(sessions, i64),
            name!(last_activity_us, i64),
        ),
    >,
    pgrx::pg_sys::panic::ErrorReport,
> {
    let shared = require_preloaded()?;
    if !can_read_stats() {
        return Ok(TableIterator::new(Vec::new()));
    }
    let sessions = sessions_by_key();
    let rows: Vec<_> = copy_entries(shared, true)
        .into_iter()
        .map(|s| {
            let ms = |ns: u64| ns as f64 / 1e6;
            (
                pgrx::Uuid::from_bytes(s.key.ws),
                s.key.dbid,
                s.v[0] as i64,
                s.v[1] as i64,
                s.v[2] as i64,
                ms(s.v[3]),
                ms(s.v[4]),
                ms(s.v[5]),
                s.v[6] as i64,
                s.v[7] as i64,
                s.v[8] as i64,
                sessions.get(&(u32::from(s.key.dbid), s.key.ws)).copied().unwrap_or(0),
                s.last,
            )
        })
        .collect();
    Ok(TableIterator::new(rows))
}

#[pg_extern(volatile, parallel_restricted, name = "_stats_info")]
fn stats_info() -> Result<
    TableIterator<
        'static,
        (
            name!(capacity, i64),
            name!(entries, i64),
            name!(evictions, i64),
            name!(refused_statements, i64),
            name!(shared_memory_bytes, i64),
            name!(bytes_per_entry, i64),
            name!(last_reset_us, i64),
        ),
    >,
    pgrx::pg_sys::panic::ErrorReport,
> {
    let shared = require_preloaded()?;
    let hash = HASH.load(Relaxed);
    // SAFETY: shared lock for a consistent entry count.
    let entries = unsafe {
        let _lock = LwLockGuard::shared(shared.lock);
        pg_sys::hash_get_num_entries(hash) as i64
    };
    let per_entry = {
        // SAFETY: pure size computations.
        let big = unsafe { pg_sys::hash_estimate_size(100_000, std::mem::size_of::<Entry>()) };
        (big / 100_000) as i64
    };
    let reset = shared.reset_at.load(Relaxed);
    Ok(TableIterator::once((
        shared.max,
        entries,
        shared.evictions.load(Relaxed) as i64,
        shared.refused.load(Relaxed) as i64,
        shared_size() as i64,
        per_entry,
        reset,
    )))
}

/// Remove the statistics of one workspace (all databases), or of everything when NULL.
#[pg_extern(volatile, parallel_unsafe)]
fn reset_stats(workspace: default!(Option<pgrx::Uuid>, "NULL")) -> Result<(), pgrx::pg_sys::panic::ErrorReport> {
    let shared = require_preloaded()?;
    let hash = HASH.load(Relaxed);
    let target = workspace.map(|w| *w.as_bytes());
    // SAFETY: exclusive lock while removing entries.
    unsafe {
        let _lock = LwLockGuard::exclusive(shared.lock);
        let mut keys = Vec::new();
        each_entry(hash, |e: &Entry| {
            if target.is_none() || target == Some(e.key.ws) {
                keys.push(e.key);
            }
        });
        for key in &keys {
            pg_sys::hash_search(hash, (key as *const Key).cast(), pg_sys::HASHACTION::HASH_REMOVE, std::ptr::null_mut());
        }
        if target.is_none() {
            shared.reset_at.store(pg_sys::GetCurrentTimestamp(), Relaxed);
        }
    }
    Ok(())
}

pgrx::extension_sql_file!(
    "../sql/stats.sql",
    name = "stats_sql",
    requires = ["quota_sql", stats_rows, stats_info, reset_stats]
);
