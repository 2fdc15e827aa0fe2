//! The `tenancy.workspace_id` check and assign hooks. A check hook must never raise an ERROR:
//! it reports through GUC_check_* and returns false; PostgreSQL then raises 22023 "invalid value
//! for parameter" itself (or 0A000 for a refused login default).

use super::*;

/// Memory for GUC strings and `extra` must come from the allocator guc.c frees with: plain
/// malloc/free in PostgreSQL 15 (16 moved to `guc_malloc`/`guc_free`; only 15 is built).
pub(super) mod guc_mem {
    use std::ffi::c_void;

    extern "C" {
        fn malloc(size: usize) -> *mut c_void;
        fn free(ptr: *mut c_void);
    }

    /// Returns null when out of memory (the hook then rejects the value).
    pub(super) unsafe fn alloc(size: usize) -> *mut c_void {
        // SAFETY: libc malloc, freed by guc.c with free().
        unsafe { malloc(size) }
    }

    pub(super) unsafe fn release(ptr: *mut c_void) {
        // SAFETY: ptr came from malloc (guc.c's strdup of the proposed value, or alloc above).
        unsafe { free(ptr) }
    }
}

/// Whether a value of `tenancy.workspace_id` from `source` would be a default for sessions
/// other than the one setting it: a role or database default (`ALTER ROLE / DATABASE ... SET`,
/// applied at connection start), the whole server's (postgresql.conf, `ALTER SYSTEM`, the
/// server's command line). Such a default would start every new connection inside a workspace,
/// so that a request that forgot its context no longer sees nothing: refused, whoever set it.
/// What a client asks for itself (startup packet `options`, `SET`, `set_config`, a function's
/// `SET` clause) is its own choice, as before.
pub(super) fn is_login_default(source: pg_sys::GucSource::Type) -> bool {
    use pg_sys::GucSource::*;
    matches!(
        source,
        PGC_S_ENV_VAR
            | PGC_S_FILE
            | PGC_S_ARGV
            | PGC_S_GLOBAL
            | PGC_S_DATABASE
            | PGC_S_USER
            | PGC_S_DATABASE_USER
    )
}

/// Check hook of `tenancy.workspace_id`.
///
/// A non-empty value from a login default ([`is_login_default`]) is refused with 0A000. At
/// connection start PostgreSQL then logs (and sends the client) a WARNING and the session
/// starts with no context (fail closed); `ALTER SYSTEM SET` and a reload of postgresql.conf get
/// the same refusal. `ALTER ROLE / DATABASE ... SET` itself validates with `PGC_S_TEST` (as
/// `CREATE FUNCTION ... SET` does), so the statement is refused by the utility hook
/// (`stats::refuse_context_default`), and `audit()` reports defaults stored anyway
/// (`context_default`). The empty value (unset) is accepted from any source.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn check_workspace_id(
    newval: *mut *mut c_char,
    extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to a (possibly null) NUL-terminated string.
    let raw: &[u8] = unsafe {
        if (*newval).is_null() {
            b""
        } else {
            CStr::from_ptr(*newval).to_bytes()
        }
    };
    if !raw.is_empty() && is_login_default(source) {
        // SAFETY: as below: GUC_check_* globals, strings palloc'd in the current context.
        unsafe {
            pg_sys::GUC_check_errcode(Code::ERRCODE_FEATURE_NOT_SUPPORTED as i32);
            pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(
                c"tenancy.workspace_id cannot have a role, database or server-wide default: every \
                  new connection would start inside that workspace. At connection start such a value \
                  is ignored: the session starts with no workspace."
                    .as_ptr(),
            );
            pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(
                c"Remove it: ALTER ROLE ... [IN DATABASE ...] RESET tenancy.workspace_id, ALTER \
                  DATABASE ... RESET tenancy.workspace_id, or ALTER SYSTEM RESET \
                  tenancy.workspace_id (tenancy.audit() lists them as context_default). Set the \
                  context per request with tenancy.set_workspace(id, true)."
                    .as_ptr(),
            );
        }
        return false;
    }
    let parsed = if raw.is_empty() {
        None
    } else {
        match uuid_text::parse(raw) {
            Some(bytes) => Some(bytes),
            None => {
                // SAFETY: the GUC_check_* globals are meant to be set by check hooks; the
                // strings are palloc'd in the current context, which outlives the report.
                unsafe {
                    pg_sys::GUC_check_errcode(Code::ERRCODE_INVALID_PARAMETER_VALUE as i32);
                    pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(
                        c"tenancy.workspace_id must be empty or a uuid, e.g. a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11."
                            .as_ptr(),
                    );
                    pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(
                        c"Use tenancy.set_workspace(id) to set it from a uuid value; RESET tenancy.workspace_id to unset it."
                            .as_ptr(),
                    );
                }
                return false;
            }
        }
    };

    // SAFETY: allocations use the allocator guc.c frees with; a null result (OOM) rejects the
    // value rather than raising inside the hook.
    unsafe {
        if let Some(bytes) = parsed {
            let canon = uuid_text::canonical_bytes(&bytes);
            if canon[..] != *raw {
                let p = guc_mem::alloc(canon.len() + 1).cast::<u8>();
                if p.is_null() {
                    return false;
                }
                std::ptr::copy_nonoverlapping(canon.as_ptr(), p, canon.len());
                *p.add(canon.len()) = 0;
                guc_mem::release((*newval).cast());
                *newval = p.cast();
            }
        }
        let e = guc_mem::alloc(std::mem::size_of::<WorkspaceExtra>()).cast::<WorkspaceExtra>();
        if e.is_null() {
            return false;
        }
        e.write(WorkspaceExtra {
            set: parsed.is_some(),
            bytes: parsed.unwrap_or_default(),
        });
        *extra = e.cast();
    }
    true
}

/// Assign hook of `tenancy.workspace_id`: mirror the parsed value into [`CURRENT`].
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn assign_workspace_id(
    _newval: *const c_char,
    extra: *mut c_void,
) {
    // SAFETY: `extra` is the WorkspaceExtra our check hook produced for this value (or null if
    // guc.c never ran the hook, which it always does for hooked custom variables).
    let value = unsafe {
        match extra.cast::<WorkspaceExtra>().as_ref() {
            Some(e) if e.set => Some(e.bytes),
            _ => None,
        }
    };
    store_current(value);
    if let Some(listener) = LISTENER.get() {
        listener(value);
    }
}
