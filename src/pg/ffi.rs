//! PostgreSQL functions called without pgrx's FFI guard, and their one safety contract.
//!
//! pgrx's guard (a `sigsetjmp` and a thread check through thread-local storage on every call)
//! is what turns an ERROR raised inside a PostgreSQL function into a Rust panic. The hot-path
//! functions below (`lwlock_acquire` .. `instr_end_loop`) cannot raise one as the callers use
//! them: an LWLock taken and released by a [`super::shmem::LwLockGuard`], a hash lookup or an insert
//! with `HASH_ENTER_NULL` (which returns NULL rather than raise when shared memory runs out), a clock
//! read, ending the instrumentation of a stopped node (`InstrAlloc`'s palloc can fail only out of
//! memory, and then unwinds through frames that own nothing). Going around the guard saves about
//! 40 ns per call on a path that makes six calls per statement.
//!
//! The functions that run a user's statement (the chained planner, executor and utility hooks)
//! raise an ERROR whenever a query fails; they are never called from Rust. The hooks are C
//! trampolines (`src/pg/hooks.c`, compiled by `build.rs`) that call the Rust bodies before and
//! after the chained call, so an ERROR's longjmp crosses no Rust frame, and they restore the
//! nesting depth in `PG_FINALLY` and re-throw the original error unchanged.

use pgrx::pg_sys;
use std::ffi::{c_int, c_void};

extern "C-unwind" {
    #[link_name = "LWLockAcquire"]
    pub(crate) fn lwlock_acquire(lock: *mut pg_sys::LWLock, mode: pg_sys::LWLockMode::Type)
        -> bool;
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
    pub(crate) fn instr_alloc(
        n: c_int,
        instrument_options: c_int,
        async_mode: bool,
    ) -> *mut pg_sys::Instrumentation;
    #[link_name = "InstrEndLoop"]
    pub(crate) fn instr_end_loop(instr: *mut pg_sys::Instrumentation);
}

extern "C" {
    /// Installs the planner, executor and utility hooks of `src/pg/hooks.c` (postmaster,
    /// `_PG_init`, preload only).
    #[link_name = "tenancy_install_statement_hooks"]
    pub(crate) fn install_statement_hooks();
    /// Re-arms PostgreSQL's statement timeout to `ms` from now unless the running one ends
    /// sooner (`src/pg/hooks.c`; `utils/timeout.h` has no pgrx binding). Raises nothing.
    #[link_name = "tenancy_arm_statement_timeout"]
    pub(crate) fn arm_statement_timeout(ms: std::ffi::c_int);
}

extern "C-unwind" {
    #[link_name = "Async_Notify"]
    fn async_notify_raw(channel: *const std::ffi::c_char, payload: *const std::ffi::c_char);
}

/// `NOTIFY channel, payload` of the current transaction (`commands/async.h` has no pgrx
/// binding). It can raise an ERROR (a payload too long, a parallel worker), so the call goes
/// through pgrx's guard, which turns it into a Rust panic that pgrx reports as the ERROR.
///
/// # Safety
/// In a transaction; NUL-terminated strings.
pub(crate) unsafe fn async_notify(channel: &std::ffi::CStr, payload: &std::ffi::CStr) {
    // SAFETY: see the function's obligations; the guard catches the longjmp of an ERROR.
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| async_notify_raw(channel.as_ptr(), payload.as_ptr()))
    }
}
