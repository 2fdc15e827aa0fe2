//! Fair sharing: per-workspace admission control and statement timeouts (needs
//! `shared_preload_libraries`; docs/admission.md).
//!
//! What is admitted: each **top-level** statement a backend starts under a workspace context
//! (`tenancy.workspace_id`) whose workspace has limits (`tenancy.set_limits`): executor
//! statements at `ExecutorStart`, and the utility statements that run queries (`DO`, `CALL`,
//! `EXPLAIN`, `CREATE TABLE AS`, `COPY`, `REFRESH MATERIALIZED VIEW`) when they start. Not
//! admitted: statements without a context, a superuser's statements, tenancy's own queries,
//! parallel workers (part of their leader's statement), and any statement of a backend that
//! already holds a slot of the same workspace: nested statements (functions, `DO` bodies), a
//! second portal while a cursor is open, a suspended portal of the extended protocol — so a
//! backend never waits for a slot it holds itself.
//!
//! A slot is taken at the start ([`slots::acquire`]: shared memory, a bounded wait on a
//! condition variable, in arrival order) and given back at `ExecutorEnd` / the end of the
//! utility statement; when a statement fails or is cancelled, by the (sub)transaction abort
//! callbacks; when the backend exits, by a `before_shmem_exit` callback. A crash-restart
//! reinitialises shared memory (no slot survives it).
//!
//! The workspace's `statement_timeout`, when smaller than what remains of the session's, re-arms
//! PostgreSQL's own statement timeout at the start of the statement (before any wait), so the
//! statement is cancelled with 57014 like any other statement timeout.
//!
//! Backend-local state: the slots this backend holds ([`HELD`]), each with the key of what took
//! it (a QueryDesc, or a utility statement's token) and the transaction nesting level it was
//! taken at.

mod limits;
mod slots;

use std::ffi::c_void;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering::Relaxed};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::error::TenancyError;
use crate::pg::local::BackendLocal;

pub(crate) use slots::{shmem_request, shmem_startup};

struct Held {
    key: usize,
    slot: slots::Key,
    level: i32,
}

/// The slots this backend holds now.
static HELD: BackendLocal<Vec<Held>> = BackendLocal::new(Vec::new());
/// Executor statements started with a workspace statement timeout to arm (QueryDesc, ms): armed
/// at ExecutorRun, because with the extended protocol PostgreSQL's Execute message re-applies
/// the session's statement timeout (disarming ours when the session has none) after the Bind
/// message started the executor.
static TIMEOUTS: BackendLocal<Vec<(usize, u64)>> = BackendLocal::new(Vec::new());
/// Workspace statement timeouts armed in this transaction: (workspace, deadline in PostgreSQL
/// microseconds). An abort at or after a deadline is counted as that workspace's timeout.
static ARMED: BackendLocal<Vec<([u8; 16], i64)>> = BackendLocal::new(Vec::new());
static EXIT_REGISTERED: BackendLocal<bool> = BackendLocal::new(false);
/// Read by the C trampolines (src/pg/hooks.c) so that a backend with nothing to admit pays no
/// call into Rust per statement: the number of slots and armed timeouts this backend holds
/// (ExecutorRun and ExecutorEnd have work only when it is not 0)...
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static tenancy_admission_busy: AtomicU32 = AtomicU32::new(0);
/// ...and 1 once this backend has found no limits at all in its database (statement starts then
/// skip admission until the limits change: see `limits::invalidate`).
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static tenancy_admission_none: AtomicU32 = AtomicU32::new(0);

/// Keep [`tenancy_admission_busy`] equal to what HELD and TIMEOUTS hold.
fn sync_busy() {
    let n = HELD.with(|h| h.borrow().len()) + TIMEOUTS.with(|t| t.borrow().len());
    tenancy_admission_busy.store(n as u32, Relaxed);
}

/// Tokens of utility statements (distinct from QueryDesc addresses: odd, and counting up).
static NEXT_TOKEN: AtomicI64 = AtomicI64::new(1);

/// The callbacks: slots given back at abort and at backend exit (preload only); the limit cache
/// is dropped when the limits change by [`on_relcache`].
pub(crate) fn register_callbacks() {
    // SAFETY: registering 'static callbacks in _PG_init.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}

/// The limit cache's part of tenancy's one relcache callback (`crate::hooks`; preload only).
pub(crate) fn on_relcache(relid: pg_sys::Oid) {
    // SAFETY: called from tenancy's relcache callback with PostgreSQL's arguments.
    unsafe { relcache_callback(pg_sys::Datum::from(0), relid) }
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    limits::invalidate(relid);
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    // nothing held, nothing armed: the common case costs two loads
    if tenancy_admission_busy.load(Relaxed) == 0 && ARMED.with(|a| a.borrow().is_empty()) {
        return;
    }
    if matches!(
        event,
        XACT_EVENT_ABORT
            | XACT_EVENT_PARALLEL_ABORT
            | XACT_EVENT_COMMIT
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PREPARE
    ) {
        // at commit nothing should be left (holdable cursors have been run to completion)
        release_where(|_| true);
        TIMEOUTS.with(|t| t.borrow_mut().clear());
        sync_busy();
        let armed = ARMED.with(|a| std::mem::take(&mut *a.borrow_mut()));
        if matches!(event, XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT) && !armed.is_empty() {
            // SAFETY: plain clock read.
            let now = unsafe { pg_sys::GetCurrentTimestamp() };
            let mut counted: Vec<[u8; 16]> = Vec::new();
            for (ws, deadline) in armed {
                if now >= deadline && !counted.contains(&ws) {
                    counted.push(ws);
                    crate::stats::record(ws, |e| {
                        e.timed_out.fetch_add(1, Relaxed);
                    });
                }
            }
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB
        && tenancy_admission_busy.load(Relaxed) != 0
    {
        // SAFETY: reading the current nesting level (the subtransaction being aborted).
        let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
        release_where(|h| h.level >= level);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn at_exit(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    release_where(|_| true);
}

fn release_where(pred: impl Fn(&Held) -> bool) {
    let gone: Vec<slots::Key> = HELD.with(|h| {
        let mut h = h.borrow_mut();
        let (gone, kept): (Vec<Held>, Vec<Held>) = h.drain(..).partition(|x| pred(x));
        *h = kept;
        gone.into_iter().map(|x| x.slot).collect()
    });
    sync_busy();
    for key in gone {
        slots::release(&key);
    }
}

/// Admit the statement `key` (see the module documentation); raises 53000 when it waited
/// `max_wait` without getting a slot. Returns the workspace statement timeout to arm, if any.
fn admit(key: usize) -> Option<u64> {
    if !slots::enabled() || crate::pg::local::INTERNAL.load(Relaxed) > 0 {
        return None;
    }
    // SAFETY: plain read of a backend global.
    if unsafe { pg_sys::ParallelWorkerNumber >= 0 } {
        return None;
    }
    let ws = crate::context::current()?;
    // SAFETY: plain read of a backend global.
    let dbid = u32::from(unsafe { pg_sys::MyDatabaseId });
    let slot = slots::Key { dbid, ws };
    if HELD.with(|h| h.borrow().iter().any(|x| x.slot == slot)) {
        return None; // nested, or a second portal: never wait for a slot this backend holds
    }
    // SAFETY: the limits are read in a transaction (executor or utility start).
    if !unsafe { pg_sys::IsTransactionState() } {
        return None;
    }
    // the limits first (cached; a database without any sets tenancy_admission_none, and the
    // trampolines stop calling), then the role (a catalog lookup)
    let lim = limits::of(&ws)?;
    // SAFETY: a syscache lookup on the current user, in a transaction.
    if unsafe { pg_sys::superuser() } {
        return None;
    }
    // the clock starts before any wait for a slot, as the session's statement timeout does
    if let Some(ms) = lim.statement_timeout_ms {
        arm_statement_timeout(ms);
        note_armed(ws, ms);
    }
    let Some(max) = lim.max_active else {
        return lim.statement_timeout_ms;
    };
    if !EXIT_REGISTERED.with(|r| std::mem::replace(&mut *r.borrow_mut(), true)) {
        // SAFETY: registering a 'static callback for this backend's exit.
        unsafe { pg_sys::before_shmem_exit(Some(at_exit), pg_sys::Datum::from(0)) };
    }
    match slots::acquire(&slot, max, lim.max_wait_ms) {
        slots::Admitted::Slot { waited_ns } => {
            // SAFETY: reading the current nesting level.
            let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
            HELD.with(|h| h.borrow_mut().push(Held { key, slot, level }));
            sync_busy();
            crate::stats::record(ws, |e| {
                e.admitted.fetch_add(1, Relaxed);
                if waited_ns > 0 {
                    e.waited.fetch_add(1, Relaxed);
                    e.wait_ns.fetch_add(waited_ns, Relaxed);
                }
            });
            lim.statement_timeout_ms
        }
        slots::Admitted::Untracked => lim.statement_timeout_ms,
        slots::Admitted::TimedOut { waited_ns } => {
            crate::stats::record(ws, |e| {
                e.rejected.fetch_add(1, Relaxed);
                e.waited.fetch_add(1, Relaxed);
                e.wait_ns.fetch_add(waited_ns, Relaxed);
            });
            let ws_text = crate::uuid_text::canonical(&ws);
            TenancyError::new(
                Code::ERRCODE_INSUFFICIENT_RESOURCES,
                format!("workspace {ws_text} is at its limit of {max} active statements"),
            )
            .detail(format!(
                "The statement waited {} ms for one of the workspace's {max} slots (max_wait {} ms) while its other statements ran.",
                waited_ns / 1_000_000,
                lim.max_wait_ms.unwrap_or(0)
            ))
            .hint("Retry later (HTTP 429 or 503); the limits are in tenancy.workspace_limits, set with tenancy.set_limits().")
            .raise()
        }
    }
}

/// Remember that `ws`'s statement timeout of `ms` runs from now (for the timeout counter).
fn note_armed(ws: [u8; 16], ms: u64) {
    // SAFETY: plain clock read.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    ARMED.with(|a| a.borrow_mut().push((ws, now + (ms as i64) * 1000)));
}

/// Re-arm PostgreSQL's statement timeout to `ms` from now, unless the session's own ends sooner.
fn arm_statement_timeout(ms: u64) {
    // SAFETY: a backend in a statement; the C helper only reads and arms the timeout.
    unsafe { crate::pg::ffi::arm_statement_timeout(ms.min(i32::MAX as u64) as std::ffi::c_int) };
}

/// Give back the slot `key` took, if it took one.
fn release(key: usize) {
    let slot = HELD.with(|h| {
        let mut h = h.borrow_mut();
        let i = h.iter().rposition(|x| x.key == key)?;
        Some(h.remove(i).slot)
    });
    sync_busy();
    if let Some(slot) = slot {
        slots::release(&slot);
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points of the C trampolines (src/pg/hooks.c)
// ---------------------------------------------------------------------------------------------

/// Before ExecutorStart: admit a top-level statement.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn tenancy_admission_start(query_desc: *mut pg_sys::QueryDesc) {
    if let Some(ms) = admit(query_desc as usize) {
        TIMEOUTS.with(|t| t.borrow_mut().push((query_desc as usize, ms)));
        sync_busy();
    }
}

/// Before ExecutorRun: (re-)arm the workspace statement timeout of the statement, if it has one.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn tenancy_admission_run(query_desc: *mut pg_sys::QueryDesc) {
    let ms = TIMEOUTS.with(|t| {
        t.borrow()
            .iter()
            .rev()
            .find(|(q, _)| *q == query_desc as usize)
            .map(|(_, ms)| *ms)
    });
    if let Some(ms) = ms {
        arm_statement_timeout(ms);
        if let Some(ws) = crate::context::current() {
            note_armed(ws, ms);
        }
    }
}

/// After ExecutorEnd: give its slot back.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn tenancy_admission_end(query_desc: *mut pg_sys::QueryDesc) {
    TIMEOUTS.with(|t| {
        let mut t = t.borrow_mut();
        if let Some(i) = t.iter().rposition(|(q, _)| *q == query_desc as usize) {
            t.remove(i);
        }
    });
    release(query_desc as usize);
}

/// Before a utility statement: admit it if it runs queries. Returns the token to pass to
/// [`tenancy_admission_utility_end`] (0: nothing to give back).
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn tenancy_admission_utility_start(
    pstmt: *mut pg_sys::PlannedStmt,
) -> i64 {
    // SAFETY: PostgreSQL passes the statement about to run.
    let runs_queries = unsafe {
        let node = (*pstmt).utilityStmt;
        !node.is_null()
            && matches!(
                (*node).type_,
                pg_sys::NodeTag::T_DoStmt
                    | pg_sys::NodeTag::T_CallStmt
                    | pg_sys::NodeTag::T_ExplainStmt
                    | pg_sys::NodeTag::T_CreateTableAsStmt
                    | pg_sys::NodeTag::T_CopyStmt
                    | pg_sys::NodeTag::T_RefreshMatViewStmt
            )
    };
    if !runs_queries {
        return 0;
    }
    let token = NEXT_TOKEN.fetch_add(2, Relaxed) | 1;
    admit(token as usize);
    token
}

/// After a utility statement (also when it failed): give its slot back.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn tenancy_admission_utility_end(token: i64) {
    if token != 0 {
        release(token as usize);
    }
}

/// (database, workspace, active, waiting) of every workspace with statements running or
/// waiting under a limit now (all databases).
#[pg_extern(volatile, parallel_restricted, name = "_admission_slots")]
fn admission_slots() -> TableIterator<
    'static,
    (
        name!(database, pg_sys::Oid),
        name!(workspace_id, pgrx::Uuid),
        name!(active, i32),
        name!(waiting, i32),
    ),
> {
    TableIterator::new(
        slots::snapshot()
            .into_iter()
            .map(|(db, ws, active, waiting)| {
                (
                    pg_sys::Oid::from(db),
                    pgrx::Uuid::from_bytes(ws),
                    active as i32,
                    waiting as i32,
                )
            }),
    )
}

pgrx::extension_sql_file!(
    "../sql/admission.sql",
    name = "admission_sql",
    requires = ["quota_sql", admission_slots]
);

pgrx::extension_sql!(
    r#"
REVOKE ALL ON FUNCTION @extschema@._admission_slots() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._admission_slots() IS
'Internal: the admission slots in shared memory (database, workspace, statements active and waiting now), read by tenancy.workspace_limits.';
"#,
    name = "admission_slots_sql",
    requires = [admission_slots]
);
