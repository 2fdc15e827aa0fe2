//! Workspace context: the `tenancy.workspace_id` setting and the functions that read and set it.
//!
//! The setting is an ordinary user-settable GUC with a check hook and an assign hook:
//! - the check hook accepts `''` (unset) or any spelling PostgreSQL's `uuid` type accepts,
//!   rewrites the value to the canonical lowercase form (what `SHOW` prints), and hands the
//!   parsed 16 bytes to the assign hook through the GUC `extra` pointer;
//! - the assign hook copies those 16 bytes into [`CURRENT`]. PostgreSQL calls it for every
//!   change of the effective value, including the implicit ones (`SET LOCAL` reverting at
//!   transaction end, `RESET`, rollback of a subtransaction), so [`CURRENT`] always mirrors
//!   the setting.
//!
//! `current_workspace_id()` therefore costs one function call and two relaxed atomic loads:
//! no GUC hash lookup, no text parsing. It runs in every row-level-security check.
//!
//! Error codes raised here (the "Errors" table of docs/reference.md is the reference):
//! - 22023 invalid_parameter_value: bad spelling in `SET tenancy.workspace_id` (from the hook);
//! - 55000 object_not_in_prerequisite_state: `require_workspace_id()` with no context;
//! - 22004 null_value_not_allowed: `set_workspace(NULL)`;
//! - 42704 undefined_object: `set_workspace()` of an unknown or Tombstoned workspace;
//! - 42P01 / 42703: the configured workspace registry table or column does not exist;
//! - 42804 datatype_mismatch: the registry's id or parent column is not uuid;
//! - 0A000 feature_not_supported: a role, database or server-wide default of
//!   `tenancy.workspace_id` (the check hook; the WARNING at connection start).

use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pgrx::datum::DatumWithOid;
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use pgrx::PgSqlErrorCode as Code;

use crate::error::{TenancyError, TenancyResult};
use crate::pg::scope::with_catalog_path;
use crate::uuid_text;

/// Name of the workspace setting.
pub(crate) mod cache;
mod guc;
mod registry;

use guc::*;
pub(crate) use registry::Registry;

/// Told of every change of this backend's workspace (the statistics' session slots): set once by
/// `crate::hooks`, so that the context depends on no capability above it.
static LISTENER: std::sync::OnceLock<fn(Option<[u8; 16]>)> = std::sync::OnceLock::new();

/// Register the one listener of context changes (see [`LISTENER`]).
pub(crate) fn set_listener(f: fn(Option<[u8; 16]>)) {
    let _ = LISTENER.set(f);
}

pub const WORKSPACE_ID_GUC: &CStr = c"tenancy.workspace_id";
const REGISTRY_TABLE_GUC: &CStr = c"tenancy.registry_table";
const REGISTRY_ID_COLUMN_GUC: &CStr = c"tenancy.registry_id_column";
const REGISTRY_STATUS_COLUMN_GUC: &CStr = c"tenancy.registry_status_column";
const REGISTRY_DELETED_STATUS_GUC: &CStr = c"tenancy.registry_deleted_status";
const REGISTRY_PARENT_COLUMN_GUC: &CStr = c"tenancy.registry_parent_column";
const REGISTRY_ACTIVE_STATUS_GUC: &CStr = c"tenancy.registry_active_status";

// The settings' storage. PostgreSQL owns the strings; read them only through the accessors.
static WORKSPACE_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static REGISTRY_TABLE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"public.\"Workspace\""));
static REGISTRY_ID_COLUMN: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"id"));
static REGISTRY_STATUS_COLUMN: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"status"));
static REGISTRY_DELETED_STATUS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"Tombstoned"));
static REGISTRY_PARENT_COLUMN: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"parentWorkspaceId"));
static REGISTRY_ACTIVE_STATUS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"Active"));

/// The parsed current workspace, mirrored by the assign hook. A backend is single-threaded:
/// relaxed atomics are plain loads and stores, used only to stay in safe Rust.
struct Current {
    set: AtomicBool,
    hi: AtomicU64,
    lo: AtomicU64,
}

static CURRENT: Current = Current {
    set: AtomicBool::new(false),
    hi: AtomicU64::new(0),
    lo: AtomicU64::new(0),
};

/// What the check hook hands to the assign hook (allocated with the GUC allocator).
#[repr(C)]
struct WorkspaceExtra {
    set: bool,
    bytes: [u8; 16],
}

pub(crate) fn define_settings() {
    // SAFETY: called from _PG_init; the hooks are `extern "C-unwind"` functions with the
    // signatures PostgreSQL expects, and the settings are 'static.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            WORKSPACE_ID_GUC,
            c"The workspace (tenant) this session or transaction acts for.",
            c"Empty means unset. Accepts any spelling of the uuid type and stores the canonical \
              lowercase form. Set it with tenancy.set_workspace(id, true) or SET LOCAL behind \
              a transaction-pooling connection pooler.",
            &WORKSPACE_ID,
            GucContext::Userset,
            GucFlags::NOT_WHILE_SEC_REST,
            Some(check_workspace_id),
            Some(assign_workspace_id),
            None,
        );
    }
    GucRegistry::define_string_guc(
        REGISTRY_TABLE_GUC,
        c"Table that lists the workspaces, checked by tenancy.set_workspace().",
        c"A table name, optionally schema-qualified, as regclass input accepts it.",
        &REGISTRY_TABLE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        REGISTRY_ID_COLUMN_GUC,
        c"uuid column of the workspace registry that holds the workspace id.",
        c"",
        &REGISTRY_ID_COLUMN,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        REGISTRY_STATUS_COLUMN_GUC,
        c"Status column of the workspace registry; empty to skip the status check.",
        c"",
        &REGISTRY_STATUS_COLUMN,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        REGISTRY_DELETED_STATUS_GUC,
        c"Status value that marks a soft-deleted workspace, refused by tenancy.set_workspace().",
        c"",
        &REGISTRY_DELETED_STATUS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        REGISTRY_PARENT_COLUMN_GUC,
        c"uuid column of the workspace registry naming a workspace's parent (hierarchy policies).",
        c"Under the hierarchy option a workspace also reads the rows of the registry rows whose \
          parent column is it; empty disables the hierarchy (only the workspace itself).",
        &REGISTRY_PARENT_COLUMN,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        REGISTRY_ACTIVE_STATUS_GUC,
        c"Status value of the child workspaces a parent may read under the hierarchy option.",
        c"Compared with the registry status column as text; empty admits every child whose status \
          is not the soft-deleted one.",
        &REGISTRY_ACTIVE_STATUS,
        GucContext::Suset,
        GucFlags::default(),
    );
}

/// Reserve the `tenancy.` prefix: a misspelled setting becomes an error. Call after every
/// `tenancy.*` setting is defined: reserving drops the placeholders of undefined ones, values
/// from postgresql.conf included.
pub(crate) fn reserve_prefix() {
    // SAFETY: plain C call with a static, NUL-terminated string; valid in _PG_init.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"tenancy".as_ptr()) };
}

/// The current workspace, `None` when unset.
#[inline]
pub fn current() -> Option<[u8; 16]> {
    if !CURRENT.set.load(Ordering::Relaxed) {
        return None;
    }
    let hi = CURRENT.hi.load(Ordering::Relaxed).to_be_bytes();
    let lo = CURRENT.lo.load(Ordering::Relaxed).to_be_bytes();
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi);
    bytes[8..].copy_from_slice(&lo);
    Some(bytes)
}

fn store_current(value: Option<[u8; 16]>) {
    match value {
        None => CURRENT.set.store(false, Ordering::Relaxed),
        Some(b) => {
            let (hi, lo) = b.split_at(8);
            CURRENT.hi.store(
                u64::from_be_bytes(hi.try_into().unwrap()),
                Ordering::Relaxed,
            );
            CURRENT.lo.store(
                u64::from_be_bytes(lo.try_into().unwrap()),
                Ordering::Relaxed,
            );
            CURRENT.set.store(true, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SQL API
// ---------------------------------------------------------------------------------------------

/// The current workspace, NULL when unset. Cheap: reads a value the assign hook parsed.
#[pg_extern(stable, parallel_safe)]
fn current_workspace_id() -> Option<pgrx::Uuid> {
    current().map(pgrx::Uuid::from_bytes)
}

/// The current workspace, or an error (55000) when unset.
#[pg_extern(stable, parallel_safe)]
fn require_workspace_id() -> Result<pgrx::Uuid, pgrx::pg_sys::panic::ErrorReport> {
    current().map(pgrx::Uuid::from_bytes).ok_or_else(|| {
        TenancyError::new(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "no workspace context: tenancy.workspace_id is not set",
        )
        .detail("This operation acts for one workspace and the session has none.")
        .hint(
            "Call tenancy.set_workspace('<workspace uuid>', true) at the start of the transaction.",
        )
        .into()
    })
}

/// Check that `workspace` exists in the registry and is not soft-deleted, then set
/// `tenancy.workspace_id` to it, transaction-local unless `is_local` is false.
#[pg_extern(volatile, parallel_unsafe)]
fn set_workspace(
    workspace: Option<pgrx::Uuid>,
    is_local: default!(Option<bool>, true),
) -> Result<pgrx::Uuid, pgrx::pg_sys::panic::ErrorReport> {
    set_workspace_impl(workspace, is_local).map_err(Into::into)
}

fn set_workspace_impl(
    workspace: Option<pgrx::Uuid>,
    is_local: Option<bool>,
) -> TenancyResult<pgrx::Uuid> {
    let workspace = workspace.ok_or_else(|| {
        TenancyError::new(
            Code::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "workspace must not be NULL",
        )
        .detail("tenancy.set_workspace() was called with a NULL workspace id.")
        .hint("To clear the context, use RESET tenancy.workspace_id.")
    })?;
    let is_local = is_local.ok_or_else(|| {
        TenancyError::new(
            Code::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "is_local must not be NULL",
        )
        .hint("Pass true (transaction-local, pooler-safe) or false (whole session).")
    })?;
    let canon = uuid_text::canonical(workspace.as_bytes());
    let registry = Registry::from_settings();
    match crate::pg::local::internal(|| registry.lookup_status(workspace))? {
        None => {
            return Err(TenancyError::new(
                Code::ERRCODE_UNDEFINED_OBJECT,
                format!("workspace {canon} does not exist"),
            )
            .detail(format!(
                "No row of {} has {} = '{canon}'.",
                registry.table, registry.id_column
            ))
            .hint("Check the workspace id; the context was not changed."))
        }
        Some(Some(status)) if Some(&status) == registry.deleted_status.as_ref() => {
            return Err(TenancyError::new(
                Code::ERRCODE_UNDEFINED_OBJECT,
                format!("workspace {canon} is {status}"),
            )
            .detail(format!(
                "{}.{} of workspace {canon} is '{status}': it is soft-deleted.",
                registry.table,
                registry.status_column.as_deref().unwrap_or("")
            ))
            .hint(
                "A soft-deleted workspace cannot be used as context; the context was not changed.",
            ))
        }
        Some(_) => {}
    }
    if crate::pg::citus::installed() {
        return set_on_citus(&canon, is_local).map(|()| workspace);
    }
    // Set it as `SET [LOCAL]` would, without SQL: nothing here writes or needs a transaction id
    // (a read replica and a parallel query refuse to assign one).
    let value = CString::new(canon.as_str()).expect("canonical uuid text");
    // SAFETY: set_config_option copies both strings; it raises an ERROR (through pgrx's guard)
    // where PostgreSQL's SET would, e.g. inside a security-restricted operation.
    unsafe {
        pg_sys::set_config_option(
            WORKSPACE_ID_GUC.as_ptr(),
            value.as_ptr(),
            if pg_sys::superuser() {
                pg_sys::GucContext::PGC_SUSET
            } else {
                pg_sys::GucContext::PGC_USERSET
            },
            pg_sys::GucSource::PGC_S_SESSION,
            if is_local {
                pg_sys::GucAction::GUC_ACTION_LOCAL
            } else {
                pg_sys::GucAction::GUC_ACTION_SET
            },
            true,
            0,
            false,
        );
    }
    Ok(workspace)
}

/// With Citus the context must reach the workers that run the shard queries: Citus forwards a
/// `SET LOCAL` statement (not a `set_config()` call) to the workers of the transaction, those
/// already in it and those it reaches later, when `citus.propagate_set_commands` is `local`
/// and the transaction is a block (`BEGIN`). So the context is set by SQL statements, which
/// pass through Citus' utility hook; a session-wide context (`is_local => false`) is refused,
/// as Citus forwards no session `SET`. Outside a transaction block nothing is forwarded: the
/// shard queries run with no context and see nothing (fail closed).
fn set_on_citus(canon: &str, is_local: bool) -> TenancyResult<()> {
    if !is_local {
        return Err(TenancyError::new(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            "a session-wide workspace context is not supported with Citus",
        )
        .detail("Citus forwards only SET LOCAL to the workers that run the shard queries: a session-wide context would stay on this node.")
        .hint("Call tenancy.set_workspace(id, true) at the start of each transaction (BEGIN ... COMMIT)."));
    }
    // canon is a canonical uuid (hex digits and dashes): nothing to quote
    for q in [
        "SET LOCAL citus.propagate_set_commands = 'local'".to_string(),
        format!("SET LOCAL tenancy.workspace_id = '{canon}'"),
    ] {
        crate::pg::local::internal(|| Spi::run(&q)).map_err(|e| {
            TenancyError::new(Code::ERRCODE_INTERNAL_ERROR, format!("{q} failed: {e}"))
        })?;
    }
    Ok(())
}

pgrx::extension_sql_file!(
    "../sql/context.sql",
    name = "context_sql",
    requires = [current_workspace_id, require_workspace_id, set_workspace]
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn current() -> Option<String> {
        Spi::get_one::<String>("SELECT tenancy.current_workspace_id()::text").unwrap()
    }

    #[pg_test]
    fn unset_is_null() {
        Spi::run("RESET tenancy.workspace_id").unwrap();
        assert_eq!(current(), None);
    }

    #[pg_test]
    fn set_canonicalizes_every_spelling() {
        for s in [
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        ] {
            Spi::run(&format!("SET tenancy.workspace_id = '{s}'")).unwrap();
            assert_eq!(
                current().as_deref(),
                Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
            );
            let shown = Spi::get_one::<String>("SHOW tenancy.workspace_id").unwrap();
            assert_eq!(
                shown.as_deref(),
                Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
            );
        }
        Spi::run("SET tenancy.workspace_id = ''").unwrap();
        assert_eq!(current(), None);
    }

    /// Our parser must agree with uuid_in on accept/reject and on the value, for a
    /// deterministic pseudo-random corpus of near-uuid strings.
    #[pg_test]
    fn parser_agrees_with_uuid_in() {
        let alphabet = b"0123456789abcdefABCDEF-{} gx";
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let base = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        // PostgreSQL 15 has no pg_input_is_valid(): catch uuid_in's error in PL/pgSQL.
        Spi::run(
            "CREATE FUNCTION pg_temp.try_uuid(t text) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN RETURN t::uuid::text;
             EXCEPTION WHEN invalid_text_representation THEN RETURN NULL; END $$",
        )
        .unwrap();
        for _ in 0..3000 {
            let mut s: Vec<u8> = base.as_bytes().to_vec();
            // mutate: delete, insert or replace 1-3 characters
            for _ in 0..(next() % 3 + 1) {
                let pos = (next() as usize) % (s.len() + 1);
                let c = alphabet[(next() as usize) % alphabet.len()];
                match next() % 4 {
                    0 if pos < s.len() => {
                        s.remove(pos);
                    }
                    1 => s.insert(pos, c),
                    2 if pos < s.len() => s[pos] = c,
                    _ => {
                        if next() % 2 == 0 {
                            s.retain(|&b| b != b'-');
                        } else {
                            s.insert(0, b'{');
                            s.push(b'}');
                        }
                    }
                }
            }
            let text = String::from_utf8(s).unwrap();
            let ours =
                crate::uuid_text::parse(text.as_bytes()).map(|b| crate::uuid_text::canonical(&b));
            let theirs = Spi::get_one_with_args::<String>(
                "SELECT pg_temp.try_uuid($1)",
                &[text.as_str().into()],
            );
            let theirs = match theirs {
                Ok(v) => v,
                Err(e) => panic!("{e}"),
            };
            assert_eq!(ours, theirs, "input {text:?}");
        }
    }

    #[pg_test]
    fn current_is_fast_path_consistent_with_setting() {
        Spi::run("SELECT set_config('tenancy.workspace_id', '00000000-0000-0000-0000-000000000001', false)")
            .unwrap();
        assert_eq!(
            current().as_deref(),
            Some("00000000-0000-0000-0000-000000000001")
        );
        Spi::run("RESET tenancy.workspace_id").unwrap();
        assert_eq!(current(), None);
    }
}
