//! What tenancy needs to know of Citus (issue 19), without linking to it: whether it is loaded
//! and installed, and running a query of tenancy's own inside a shard query on a worker.

use pgrx::pg_sys;

const NESTED: &std::ffi::CStr = c"citus.allow_nested_distributed_execution";

/// Whether Citus is loaded in this backend (its settings exist).
pub(crate) fn loaded() -> bool {
    // SAFETY: GetConfigOption with missing_ok returns NULL for an unknown setting.
    unsafe { !pg_sys::GetConfigOption(NESTED.as_ptr(), true, false).is_null() }
}

/// Whether Citus is loaded in this backend and installed in this database.
pub(crate) fn installed() -> bool {
    // SAFETY: get_extension_oid with missing_ok returns InvalidOid when the extension is absent.
    loaded() && unsafe { pg_sys::get_extension_oid(c"citus".as_ptr(), true) } != pg_sys::InvalidOid
}

/// On a Citus worker, tenancy's own SQL may run inside a shard query (a policy calling
/// `readable_workspace_ids()`, the quota trigger on a shard), where Citus refuses any query on a
/// distributed or reference table ("cannot execute a distributed query from a query on a
/// shard"). What tenancy reads there is a reference table (the workspace registry, the quota
/// limits), which has a copy on every node that Citus reads locally: `f` runs with
/// `citus.allow_nested_distributed_execution` on, for itself only.
pub(crate) fn nested_allowed<R>(f: impl FnOnce() -> R) -> R {
    if !loaded() {
        return f();
    }
    // SAFETY: as a function's SET clause does: a new GUC nest level, the setting saved in it,
    // restored by AtEOXact_GUC; an error in between is undone by the (sub)transaction abort.
    unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            NESTED.as_ptr(),
            c"on".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        let r = f();
        pg_sys::AtEOXact_GUC(true, level);
        r
    }
}
