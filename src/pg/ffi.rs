//! PostgreSQL functions called without pgrx's FFI guard, and their one safety contract.
//!
//! pgrx's guard (a `sigsetjmp` and a thread check through thread-local storage on every call)
//! is what turns an ERROR raised inside a PostgreSQL function into a Rust panic. The hot-path
//! functions below (`lwlock_acquire` .. `instr_end_loop`) cannot raise one as the callers use
//! them: an LWLock taken and released by a [`super::shmem::LwLockGuard`], a hash lookup, a clock
//! read, ending the instrumentation of a stopped node (`InstrAlloc`'s palloc can fail only out of
//! memory, and then unwinds through frames that own nothing). Going around the guard saves about
//! 40 ns per call on a path that makes six calls per statement.
//!
//! The chained `standard_*` planner, executor and utility functions can raise an ERROR (any
//! failing query), which longjmps across the Rust frames of the hook that called them. The
//! hooks in `stats` keep nothing with a destructor alive across those calls (only `Copy` values
//! and atomics), and the backend-local state they change is put back by the (sub)transaction
//! abort callbacks; that is what makes the longjmp sound. Call them only from such frames.

use pgrx::pg_sys;
use std::ffi::{c_char, c_int, c_void};

extern "C-unwind" {
    #[link_name = "LWLockAcquire"]
    pub(crate) fn lwlock_acquire(lock: *mut pg_sys::LWLock, mode: pg_sys::LWLockMode::Type) -> bool;
    #[link_name = "LWLockRelease"]
    pub(crate) fn lwlock_release(lock: *mut pg_sys::LWLock);
    #[link_name = "hash_search"]
    pub(crate) fn hash_search(
        hashp: *mut pg_sys::HTAB,
        key: *const c_void,
        action: pg_sys::HASHACTION::Type,
        found: *mut bool,
    ) -> *mut c_void;
    #[link_name = "GetCurrentTimestamp"]
    pub(crate) fn now() -> pg_sys::TimestampTz;
    #[link_name = "InstrAlloc"]
    pub(crate) fn instr_alloc(n: c_int, instrument_options: c_int, async_mode: bool) -> *mut pg_sys::Instrumentation;
    #[link_name = "InstrEndLoop"]
    pub(crate) fn instr_end_loop(instr: *mut pg_sys::Instrumentation);
}

extern "C-unwind" {
    #[link_name = "standard_planner"]
    pub(crate) fn raw_standard_planner(
        parse: *mut pg_sys::Query,
        query_string: *const c_char,
        cursor_options: c_int,
        bound_params: pg_sys::ParamListInfo,
    ) -> *mut pg_sys::PlannedStmt;
    #[link_name = "standard_ExecutorStart"]
    pub(crate) fn raw_standard_executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: c_int);
    #[link_name = "standard_ExecutorRun"]
    pub(crate) fn raw_standard_executor_run(
        query_desc: *mut pg_sys::QueryDesc,
        direction: pg_sys::ScanDirection::Type,
        count: u64,
        execute_once: bool,
    );
    #[link_name = "standard_ExecutorFinish"]
    pub(crate) fn raw_standard_executor_finish(query_desc: *mut pg_sys::QueryDesc);
    #[link_name = "standard_ExecutorEnd"]
    pub(crate) fn raw_standard_executor_end(query_desc: *mut pg_sys::QueryDesc);
    #[link_name = "standard_ProcessUtility"]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn raw_standard_process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}