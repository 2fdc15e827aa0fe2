//! Scopes that change who runs code, or how names resolve, for the duration of a closure.
//!
//! Both are undone by PostgreSQL's (sub)transaction abort when an ERROR unwinds from the
//! closure: it restores the user id and security context and pops override search paths.

use pgrx::pg_sys;

/// Run `f` as `role` (the owner of the counter table for the bookkeeping, the enforced table's
/// owner for anything evaluating `counted_when`), as PostgreSQL's RI triggers do, so that
/// application roles need no privilege on the bookkeeping tables and row-level security hides no
/// row from a count; as a security-restricted operation, and with `search_path` fixed to
/// `pg_catalog` alone so that no function or operator of the session's own
/// schemas can be picked up by what runs with the owner's rights (kept plans are re-analysed
/// when the search path differs, so it is fixed both when they are prepared and when they run).
/// An error raised inside is cleaned up by transaction or subtransaction abort, which restores
/// the user id and pops the search path.
pub(crate) fn as_user<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_ctx: i32 = 0;
    // SAFETY: plain reads/writes of the backend's current user id and security context.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_ctx);
        pg_sys::SetUserIdAndSecContext(
            role,
            saved_ctx
                | (pg_sys::SECURITY_LOCAL_USERID_CHANGE
                    | pg_sys::SECURITY_RESTRICTED_OPERATION
                    | pg_sys::SECURITY_NOFORCE_RLS) as i32,
        );
    }
    let r = with_catalog_path(f);
    // SAFETY: restores exactly what was saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_ctx) };
    r
}

/// Run `f` under `search_path = pg_catalog` alone (no temporary schema), as the current user:
/// operators, functions, types and unqualified names in what it prepares or runs resolve to
/// the catalog's, whatever the session's path (PostgreSQL re-plans a kept plan when the path
/// differs, so a plan must be prepared and run under the same override).
pub(crate) fn with_catalog_path<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: the override path is copied by PostgreSQL and popped below, or by (sub)transaction
    // abort when an ERROR unwinds from `f`.
    unsafe {
        let mut path = pg_sys::OverrideSearchPath {
            schemas: std::ptr::null_mut(),
            addCatalog: true,
            addTemp: false,
            generation: 0,
        };
        pg_sys::PushOverrideSearchPath(&mut path);
    }
    let r = f();
    // SAFETY: pops what was pushed above.
    unsafe { pg_sys::PopOverrideSearchPath() };
    r
}

/// Run `f` with the given settings changed for its duration only (a GUC nest level, as
/// PostgreSQL's index builds do), and with `role` (when given) as the current user in a
/// security-restricted operation. For planning a statement a role ran (the index advice):
/// whatever the text calls while it is planned runs with that role's rights and cannot
/// `SET ROLE` / `RESET ROLE` back to the caller.
pub(crate) fn with_settings<R>(
    role: Option<pg_sys::Oid>,
    settings: &[(&std::ffi::CStr, &std::ffi::CStr)],
    f: impl FnOnce() -> R,
) -> R {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_ctx: i32 = 0;
    // SAFETY: as in as_user; the nest level is closed below, or by (sub)transaction abort.
    let level = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_ctx);
        if let Some(role) = role {
            pg_sys::SetUserIdAndSecContext(
                role,
                saved_ctx
                    | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION)
                        as i32,
            );
        }
        let level = pg_sys::NewGUCNestLevel();
        for (name, value) in settings {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        level
    };
    let r = f();
    // SAFETY: closes the nest level opened above and restores exactly what was saved.
    unsafe {
        pg_sys::AtEOXact_GUC(true, level);
        pg_sys::SetUserIdAndSecContext(saved_user, saved_ctx);
    }
    r
}

/// Run `f` in a subtransaction: an ERROR inside is caught, the subtransaction rolled back (locks,
/// memory, SPI connections, user id and settings of scopes inside restored) and its message
/// returned; otherwise the subtransaction is committed and `f`'s result returned.
pub(crate) fn in_subtransaction<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    // SAFETY: the BeginInternalSubTransaction / Release / RollbackAndRelease protocol of PL/pgSQL's
    // exception blocks, restoring the caller's memory context and resource owner afterwards.
    let (context, owner) = unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        (context, owner)
    };
    let result = pgrx::PgTryBuilder::new(std::panic::AssertUnwindSafe(|| Ok(f())))
        .catch_others(|e| {
            Err(match e {
                pgrx::pg_sys::panic::CaughtError::PostgresError(r)
                | pgrx::pg_sys::panic::CaughtError::ErrorReport(r) => r.message().to_string(),
                pgrx::pg_sys::panic::CaughtError::RustPanic { ereport, .. } => {
                    ereport.message().to_string()
                }
            })
        })
        .execute();
    // SAFETY: ends the subtransaction begun above; back to the caller's context and owner.
    unsafe {
        if result.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
    }
    result
}
