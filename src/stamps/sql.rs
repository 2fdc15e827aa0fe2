//! The SQL API of change stamps: `_change_stamp()`, behind `change_stamp()` and
//! `change_stamps()` (the rest, `track_changes()` and `untrack_changes()`, is SQL in
//! sql/stamps.sql).

use super::*;

/// Whether `relid` carries the change triggers (read from the relcache, no catalog query).
fn tracked(relid: pg_sys::Oid) -> bool {
    super::cache::tracking(relid, None).is_some()
}

/// `tenancy.change_stamp(tbl, workspace)`: the stamp of (tbl, workspace); workspace NULL: the
/// current context. Needs SELECT on the table; another workspace than the context's only for
/// roles that read the table without row-level security.
#[pg_extern(volatile, parallel_restricted, name = "_change_stamp")]
pub(super) fn change_stamp(
    tbl: Option<pg_sys::Oid>,
    workspace: Option<pgrx::Uuid>,
) -> Result<Option<i64>, pgrx::pg_sys::panic::ErrorReport> {
    // a NULL table has no stamp
    tbl.map(|t| stamp_checked(t, workspace))
        .transpose()
        .map_err(Into::into)
}

fn stamp_checked(tbl: pg_sys::Oid, workspace: Option<pgrx::Uuid>) -> Result<i64, TenancyError> {
    let shared = require_preloaded()?;
    let name = crate::pg::catalog::qualified_name(tbl);
    // SAFETY: privilege and row-security checks of the current user on an existing relation.
    unsafe {
        let user = pg_sys::GetUserId();
        if pg_sys::pg_class_aclcheck(tbl, user, pg_sys::ACL_SELECT as pg_sys::AclMode)
            != pg_sys::AclResult::ACLCHECK_OK
        {
            return Err(TenancyError::new(
                Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("permission denied to read the change stamps of {name}"),
            )
            .detail("A change stamp tells when a workspace's rows changed: it needs SELECT on the table."));
        }
    }
    if !tracked(tbl) {
        return Err(TenancyError::new(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("table {name} is not tracked for change stamps"),
        )
        .hint(format!(
            "Run SELECT tenancy.track_changes('{}') first.",
            name.replace('\'', "''")
        )));
    }
    let context = crate::context::current();
    let ws = match (workspace, context) {
        (Some(w), _) => *w.as_bytes(),
        (None, Some(c)) => c,
        (None, None) => {
            return Err(TenancyError::new(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "no workspace context: tenancy.workspace_id is not set",
            )
            .hint("Pass the workspace, or set the context with tenancy.set_workspace(id)."))
        }
    };
    if Some(ws) != context {
        // another workspace's activity: only for whoever reads every row of the table
        // SAFETY: row-security check of the current user on an existing relation.
        let rls = unsafe { pg_sys::check_enable_rls(tbl, pg_sys::InvalidOid, true) };
        if rls == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32 {
            return Err(TenancyError::new(
                Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("permission denied to read another workspace's change stamps of {name}"),
            )
            .detail("Row-level security applies to this role on the table: it may read the stamps of its context's workspace only.")
            .hint("Set the context to the workspace (tenancy.set_workspace), or use a role that reads the table without row-level security."));
        }
    }
    Ok(stamp_of(shared, tbl, ws) as i64)
}
