//! The bodies of the planner, executor and utility hooks that count statements (the hooks
//! themselves, which chain to the next one, are the C trampolines of `src/pg/hooks.c`), and the
//! transaction callbacks that put the backend-local statement state back after an abort.

use super::*;

// Previous hook values, chained. Written once in _PG_init (postmaster), read afterwards.

// Backend-local statement state.
pub(super) static NESTING: AtomicI64 = AtomicI64::new(0);
// Depth of tenancy's own SQL (see crate::pg::local::INTERNAL): not counted as user activity.
pub(super) use crate::pg::local::INTERNAL;

/// Workspace current when each running statement started, keyed by its QueryDesc: a
/// statement is attributed to the context it started under (so `SELECT
/// tenancy.set_workspace(x)` belongs to the context before it).
pub(super) static STARTED: BackendLocal<Vec<(usize, [u8; 16])>> = BackendLocal::new(Vec::new());

/// Per open subtransaction: (id, NESTING, INTERNAL, STARTED length, UTILITY_FRAMES length) at
/// its start, restored when it aborts (an ERROR caught by a PL/pgSQL exception block or a
/// ROLLBACK TO).
pub(super) static SUBXACTS: BackendLocal<Vec<(pg_sys::SubTransactionId, i64, i64, usize, usize)>> =
    BackendLocal::new(Vec::new());

/// NESTING before each utility statement still running (innermost last). A procedure (`CALL`)
/// or `DO` block that runs `COMMIT` or `ROLLBACK` ends the transaction in the middle of the
/// statement: the abort of a `ROLLBACK` must put NESTING back to the depth inside the innermost
/// running utility statement, not to 0 (which would count the rest of the procedure as
/// top-level statements and leave NESTING at -1 once the `CALL` returns: every later statement
/// of the session nested, CPU time no longer read). Each utility statement restores the NESTING
/// it started with when it returns.
pub(super) static UTILITY_FRAMES: BackendLocal<Vec<i64>> = BackendLocal::new(Vec::new());
pub(super) static SLOT_EXIT_REGISTERED: BackendLocal<bool> = BackendLocal::new(false);

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut c_void,
) {
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
    if matches!(
        event,
        XACT_EVENT_ABORT
            | XACT_EVENT_PARALLEL_ABORT
            | XACT_EVENT_COMMIT
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PREPARE
    ) {
        SUBXACTS.with(|s| s.borrow_mut().clear());
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn subxact_callback(
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

/// At a top-level start nothing can still be running: forget state an ERROR left behind. Not
/// inside tenancy's own queries (INTERNAL > 0): those run at depth 0 when another capability
/// reads its settings before a statement starts (admission control, in ExecutorStart), and an
/// ERROR resets INTERNAL through the abort callbacks anyway.
pub(super) fn reset_if_top() {
    if NESTING.load(Relaxed) == 0 && INTERNAL.load(Relaxed) == 0 {
        INTERNAL.store(0, Relaxed);
        STARTED.with(|s| s.borrow_mut().clear());
    }
}
pub(super) static PLANNED_AT_TOP: AtomicBool = AtomicBool::new(false);

/// Refuse `ALTER ROLE ... SET tenancy.workspace_id` and `ALTER DATABASE ... SET
/// tenancy.workspace_id` (any role, database, `ALL`, `IN DATABASE`; `= value`, `TO value` and
/// `FROM CURRENT`), for every role, superusers included: a login default would start every new
/// connection inside a workspace (see `context::check_workspace_id`, which ignores such a value
/// at connection start). `RESET` and `SET ... TO DEFAULT` remove a default and stay allowed.
/// 0A000 feature_not_supported.
pub(super) unsafe fn refuse_context_default(pstmt: *mut pg_sys::PlannedStmt) {
    // SAFETY: PostgreSQL hands the hook a valid planned utility statement; the node is read
    // according to its tag.
    let (setstmt, kind) = unsafe {
        let node = (*pstmt).utilityStmt;
        if node.is_null() {
            return;
        }
        match (*node).type_ {
            pg_sys::NodeTag::T_AlterRoleSetStmt => {
                ((*node.cast::<pg_sys::AlterRoleSetStmt>()).setstmt, "ROLE")
            }
            pg_sys::NodeTag::T_AlterDatabaseSetStmt => (
                (*node.cast::<pg_sys::AlterDatabaseSetStmt>()).setstmt,
                "DATABASE",
            ),
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

// The hook bodies. PostgreSQL calls the C trampolines of `src/pg/hooks.c`, which call these
// before and after the chained hook: no Rust frame is alive while the statement itself runs, so
// an ERROR it raises never longjmps across one (see that file). Each body returns normally; a
// panic becomes an ERROR at its #[pg_guard].

/// Words of the frame the C trampoline keeps on its stack between a body's enter and exit
/// (`TENANCY_FRAME_WORDS` in `src/pg/hooks.c`).
const FRAME_WORDS: usize = 4;

/// What the planner and ExecutorStart bodies keep between enter and exit.
#[repr(C)]
#[derive(Clone, Copy)]
struct Frame {
    ws: [u8; 16],
    tracked: u64,
    start_ns: u64,
}
const _: () = assert!(std::mem::size_of::<Frame>() <= FRAME_WORDS * 8);
const _: () = assert!(std::mem::align_of::<Frame>() <= 8);

impl Frame {
    fn new(ws: Option<[u8; 16]>, start_ns: u64) -> Self {
        Frame {
            ws: ws.unwrap_or_default(),
            tracked: ws.is_some() as u64,
            start_ns,
        }
    }
    fn ws(&self) -> Option<[u8; 16]> {
        (self.tracked != 0).then_some(self.ws)
    }
}

/// Monotonic nanoseconds since the first call in this process (planning time).
fn mono_ns() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

/// Utility statements (DO, CALL, EXPLAIN ANALYZE, CREATE TABLE AS, ...) are not counted
/// themselves; the statements they run are counted as nested ones. Returns the NESTING to
/// restore when the statement ends (the trampoline does it in PG_FINALLY through
/// [`tenancy_utility_exit`]) and writes the index of its [`UTILITY_FRAMES`] entry to `frame`.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn tenancy_utility_enter(
    pstmt: *mut pg_sys::PlannedStmt,
    frame: *mut i64,
) -> i64 {
    // SAFETY: pstmt is the statement PostgreSQL is about to run.
    unsafe { refuse_context_default(pstmt) };
    crate::quota::on_utility(pstmt);
    reset_if_top();
    let outer = NESTING.load(Relaxed);
    if outer == 0 {
        cpu_enter(None);
    }
    let index = UTILITY_FRAMES.with(|f| {
        let mut f = f.borrow_mut();
        f.push(outer);
        f.len() - 1
    });
    NESTING.store(outer + 1, Relaxed);
    // SAFETY: the trampoline passes a pointer to its own local.
    unsafe { *frame = index as i64 };
    outer
}

/// A utility statement ended, normally or by an ERROR (called from PG_FINALLY).
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn tenancy_utility_exit(frame: i64, depth: i64) {
    UTILITY_FRAMES.with(|f| f.borrow_mut().truncate(frame.max(0) as usize));
    NESTING.store(depth, Relaxed);
}

/// ExecutorRun and ExecutorFinish: the statements they run are nested ones. Returns the depth
/// the trampoline restores in PG_FINALLY.
#[no_mangle]
pub extern "C" fn tenancy_nesting_enter() -> i64 {
    NESTING.fetch_add(1, Relaxed)
}

#[no_mangle]
pub extern "C" fn tenancy_nesting_restore(depth: i64) {
    NESTING.store(depth, Relaxed);
}

#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn tenancy_planner_enter(frame: *mut Frame) {
    reset_if_top();
    let ws = tracking();
    if NESTING.load(Relaxed) == 0 {
        cpu_enter(ws.as_ref());
        PLANNED_AT_TOP.store(ws.is_some(), Relaxed);
    }
    let start = if ws.is_some() { mono_ns() } else { 0 };
    // SAFETY: the trampoline passes its zeroed frame of FRAME_WORDS words.
    unsafe { *frame = Frame::new(ws, start) };
}

#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn tenancy_planner_exit(frame: *const Frame) {
    // SAFETY: the frame written by tenancy_planner_enter.
    let frame = unsafe { *frame };
    if let Some(ws) = frame.ws() {
        let ns = mono_ns().saturating_sub(frame.start_ns);
        // SAFETY: plain clock read (vDSO).
        record_at(ws, unsafe { raw::now() }, Create::Limited, |e| {
            e.plan_ns.fetch_add(ns, Relaxed);
        });
    }
}

/// Whether this process is a parallel worker (PostgreSQL's `IsParallelWorker()`).
pub(super) fn is_parallel_worker() -> bool {
    // SAFETY: reading a plain global int of this process.
    unsafe { pg_sys::ParallelWorkerNumber >= 0 }
}

/// In a parallel worker: the workspace and the CPU clock at its ExecutorStart.
pub(super) static WORKER_CPU: BackendLocal<Option<([u8; 16], u64)>> = BackendLocal::new(None);

#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn tenancy_executor_start_enter(frame: *mut Frame) {
    if is_parallel_worker() {
        // the leader counts the statement; a worker only reads its CPU clock (see the header)
        let ws = if shared().is_some() && TRACK.get() {
            crate::context::current()
        } else {
            None
        };
        WORKER_CPU.with(|w| *w.borrow_mut() = ws.map(|ws| (ws, now_ns())));
        return; // frame stays zeroed: nothing to do after
    }
    let top = NESTING.load(Relaxed) == 0;
    let planned = top && PLANNED_AT_TOP.swap(false, Relaxed);
    if top && !planned {
        reset_if_top();
    }
    let ws = tracking();
    if top && !planned {
        cpu_enter(ws.as_ref());
    }
    // SAFETY: the trampoline passes its zeroed frame of FRAME_WORDS words.
    unsafe { *frame = Frame::new(ws, 0) };
}

/// After ExecutorStart: as pg_stat_statements does, ask for total-time instrumentation allocated
/// in the query's own memory context.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn tenancy_executor_start_exit(
    query_desc: *mut pg_sys::QueryDesc,
    frame: *const Frame,
) {
    // SAFETY: the frame written by tenancy_executor_start_enter; query_desc was just started, so
    // its estate and query memory context exist.
    unsafe {
        let Some(ws) = (*frame).ws() else { return };
        STARTED.with(|s| s.borrow_mut().push((query_desc as usize, ws)));
        if (*query_desc).totaltime.is_null() {
            let old = pg_sys::MemoryContextSwitchTo((*(*query_desc).estate).es_query_cxt);
            (*query_desc).totaltime = raw::instr_alloc(
                1,
                pg_sys::InstrumentOption::INSTRUMENT_TIMER as c_int,
                false,
            );
            pg_sys::MemoryContextSwitchTo(old);
        }
    }
}

/// Before ExecutorEnd (the trampoline then chains): count the statement.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn tenancy_executor_end_enter(query_desc: *mut pg_sys::QueryDesc) {
    if is_parallel_worker() {
        if let Some((ws, start)) = WORKER_CPU.with(|w| w.borrow_mut().take()) {
            let used = now_ns().saturating_sub(start);
            // SAFETY: plain clock read (vDSO).
            record_at(ws, unsafe { raw::now() }, Create::Never, |e| {
                e.cpu_ns.fetch_add(used, Relaxed);
            });
        }
        return;
    }
    // SAFETY: totaltime was allocated by tenancy_executor_start_exit (or by another extension)
    // in the query's memory context, still alive here.
    unsafe {
        let started = STARTED.with(|s| {
            let mut s = s.borrow_mut();
            let i = s.iter().rposition(|(q, _)| *q == query_desc as usize)?;
            Some(s.remove(i).1)
        });
        let still_tracking = INTERNAL.load(Relaxed) == 0 && TRACK.get();
        if let (Some(ws), true, Some(total)) =
            (started, still_tracking, (*query_desc).totaltime.as_mut())
        {
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
    }
}

// ---------------------------------------------------------------------------------------------
// SQL API
// ---------------------------------------------------------------------------------------------
