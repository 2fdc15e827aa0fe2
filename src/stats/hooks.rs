//! The planner, executor and utility hooks that count statements, and the transaction
//! callbacks that put the backend-local statement state back after an abort. The chained
//! `standard_*` calls go around pgrx's FFI guard: see `crate::pg::ffi` for why that is sound
//! (nothing with a destructor is alive in these frames across the call).

use super::*;

// Previous hook values, chained. Written once in _PG_init (postmaster), read afterwards.
pub(super) static mut PREV_SHMEM_REQUEST: pg_sys::shmem_request_hook_type = None;
pub(super) static mut PREV_SHMEM_STARTUP: pg_sys::shmem_startup_hook_type = None;
pub(super) static mut PREV_PLANNER: pg_sys::planner_hook_type = None;
pub(super) static mut PREV_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;
pub(super) static mut PREV_EXECUTOR_RUN: pg_sys::ExecutorRun_hook_type = None;
pub(super) static mut PREV_EXECUTOR_FINISH: pg_sys::ExecutorFinish_hook_type = None;
pub(super) static mut PREV_EXECUTOR_END: pg_sys::ExecutorEnd_hook_type = None;
pub(super) static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

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
pub(super) static SUBXACTS: BackendLocal<Vec<(pg_sys::SubTransactionId, i64, i64, usize, usize)>> = BackendLocal::new(Vec::new());

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
pub(super) unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
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

/// At a top-level start nothing can still be running: forget state an ERROR left behind.
pub(super) fn reset_if_top() {
    if NESTING.load(Relaxed) == 0 {
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
pub(super) unsafe extern "C-unwind" fn process_utility(
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
pub(super) unsafe extern "C-unwind" fn planner(
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
pub(super) fn is_parallel_worker() -> bool {
    // SAFETY: reading a plain global int of this process.
    unsafe { pg_sys::ParallelWorkerNumber >= 0 }
}

/// In a parallel worker: the workspace and the CPU clock at its ExecutorStart.
pub(super) static WORKER_CPU: BackendLocal<Option<([u8; 16], u64)>> = BackendLocal::new(None);

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: c_int) {
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
pub(super) unsafe extern "C-unwind" fn executor_run(
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
pub(super) unsafe extern "C-unwind" fn executor_finish(query_desc: *mut pg_sys::QueryDesc) {
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
pub(super) unsafe extern "C-unwind" fn executor_end(query_desc: *mut pg_sys::QueryDesc) {
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
