//! Every setting, hook and callback tenancy installs, in one place and in one order, as
//! `contrib/pg_stat_statements` does in its `_PG_init`. Called once per process that loads the
//! library: the postmaster when tenancy is in `shared_preload_libraries` (then the hooks are
//! inherited by every backend), otherwise each backend at first use (then only the settings,
//! the statement state's transaction callbacks and the quota caches' invalidation callbacks are
//! installed: no shared memory, no executor hooks).
//!
//! PostgreSQL calls transaction callbacks and cache callbacks in the reverse order of their
//! registration, and chained hooks run the one installed last first: the order below is the
//! one the capabilities were tested with.
//!
//! 1. Settings, each capability its own: the context (with its check and assign hooks, its
//!    listener, the statistics' session slots, and the source of the registry's change stamps
//!    its caches trust), the quota counters' table size (preload only), the statistics.
//! 2. Shared memory (preload only): one request hook and one startup hook, chained to the
//!    previous ones, which ask for and attach the quota counters' table, then the statistics'
//!    (each capability sizes and initialises its own); then the quota reservations'
//!    transaction and subtransaction callbacks (they settle at commit and abort).
//! 3. Quota caches: syscache (functions, types) invalidation callbacks; then tenancy's one
//!    relcache callback, which calls each capability's handler (quota caches, change stamps,
//!    data keys, and when preloaded the statistics and admission limits): PostgreSQL keeps only
//!    10 relcache callbacks per process for all extensions together.
//! 4. Statistics: the statement state's transaction and subtransaction callbacks (nesting depth
//!    and internal depth repaired after an abort; the utility hook restores the depth at the
//!    call itself); then, preload only, the relcache callback of "is the extension installed
//!    here", and the planner, executor and utility hooks (C trampolines, `src/pg/hooks.c`).
//! 5. Admission control (preload only): its slots share the shared-memory hooks of 2; its
//!    abort, exit and limit-cache callbacks; its checks run inside the statement trampolines
//!    of 4 (before ExecutorStart and utility statements, after ExecutorEnd).
//! 6. The `tenancy.` prefix reserved, last: every tenancy setting is defined by then.

use pgrx::pg_sys;
use pgrx::prelude::*;

// Previous shared-memory hooks, chained. Written once in _PG_init (postmaster).
static mut PREV_SHMEM_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP: pg_sys::shmem_startup_hook_type = None;

#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    // SAFETY: called by PostgreSQL in the postmaster during shmem sizing; chaining first.
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST {
            prev();
        }
        crate::quota::shmem_request();
        crate::stats::shmem_request();
        crate::admission::shmem_request();
        crate::stamps::shmem_request();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    // SAFETY: called by PostgreSQL after shared memory is created (and in each EXEC_BACKEND
    // child); chaining first, as pg_stat_statements does.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP {
            prev();
        }
        crate::quota::shmem_startup();
        crate::stats::shmem_startup();
        crate::admission::shmem_startup();
        crate::stamps::shmem_startup();
    }
}

/// Whether the library was preloaded (the statistics' and admission control's caches exist).
static PRELOADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Tenancy's one relcache callback. PostgreSQL 15 has room for 10 relcache callbacks per process
/// (`MAX_RELCACHE_CALLBACKS`) for every extension loaded together: Citus takes several, and
/// with one per capability tenancy took five ("FATAL: out of relcache_callback_list slots" at
/// connection start with both preloaded). Each capability's handler, in the order they were
/// registered in before: the quota caches, the change stamps' attribute numbers, the data keys,
/// "is the extension installed here" (statistics), the admission limits.
#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    crate::quota::on_relcache(relid);
    crate::stamps::on_relcache(relid);
    crate::crypto::on_relcache(relid);
    if PRELOADED.load(std::sync::atomic::Ordering::Relaxed) {
        crate::stats::on_relcache(relid);
        crate::admission::on_relcache(relid);
    }
}

/// Install everything (see the module documentation for the order).
pub(crate) fn install() {
    // SAFETY: reading a PostgreSQL global flag in _PG_init.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    // 1.
    crate::context::define_settings();
    crate::context::set_listener(crate::stats::note_context);
    crate::context::cache::set_stamp_source(crate::stamps::cache_stamp);
    if preloading {
        crate::quota::define_settings();
        crate::stamps::define_settings();
    }
    crate::stats::define_settings(preloading);
    crate::crypto::define_settings();
    // 2.
    if preloading {
        // SAFETY: installing hooks in the postmaster's _PG_init, chaining the previous ones.
        unsafe {
            PREV_SHMEM_REQUEST = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(shmem_request);
            PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
            pg_sys::shmem_startup_hook = Some(shmem_startup);
        }
        crate::quota::install_hooks();
    }
    // 3.
    crate::quota::register_cache_callbacks();
    PRELOADED.store(preloading, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: registers a 'static callback, once per process (see RELCACHE below).
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0))
    };
    // 4.
    crate::stats::register_xact_callbacks();
    crate::stamps::register_xact_callbacks();
    crate::stamps::define_channel_setting();
    if preloading {
        crate::stats::install_hooks();
    }
    // 5.
    if preloading {
        crate::admission::register_callbacks();
    }
    // 6.
    crate::context::reserve_prefix();
}
