//! Backend-local caches of the registry lookups of `set_workspace()` and
//! `readable_workspace_ids()` (issue 17), trusted while the registry's change stamp is
//! unchanged: a request then checks its workspace without running SQL.
//!
//! A cache is used only where it answers exactly what the table would: the registry is tracked
//! for change stamps by its id column, with its change triggers enabled (`stamps::cache_stamp`);
//! the calling role reads the registry with table-wide `SELECT` and no row-level security
//! (entries are per role: what one role may read is never served to another; a policy may
//! depend on anything, so a role under one reads the table); this transaction has not written
//! the registry itself; the transaction reads with a snapshot
//! per statement (READ COMMITTED: under REPEATABLE READ and SERIALIZABLE the lookup reads the
//! transaction's snapshot, as without a cache); not on a standby (replayed changes move no stamp)
//! and not in a parallel worker. Otherwise the table is read, as before.
//!
//! Protocol (docs/caching.md): the stamp is read first, then the data with a snapshot taken
//! after it (`GetLatestSnapshot`), so the data kept is at least as new as its stamp; an entry is
//! served while the stamp reads the same and the tracking period (the marker trigger's oid) and
//! the registry's shape (settings, table oid) are unchanged.

use std::collections::HashMap;

use super::*;
use crate::pg::local::BackendLocal;

/// The tracking period and stamp of (table, column, workspace, or any change when `None`), when
/// a cache may trust it. Given by `crate::hooks` (`stamps::cache_stamp`): the context depends on
/// no capability above it.
pub(crate) type StampSource = fn(pg_sys::Oid, &str, Option<[u8; 16]>) -> Option<(u32, u64)>;

static SOURCE: std::sync::OnceLock<StampSource> = std::sync::OnceLock::new();

/// Register the source of the registry's stamps (see [`StampSource`]).
pub(crate) fn set_stamp_source(f: StampSource) {
    let _ = SOURCE.set(f);
}

/// Entries per cache; a full cache starts over (a backend rarely serves that many workspaces).
const CAPACITY: usize = 16_384;

/// Values per workspace, each with the stamp it was read at.
pub(crate) struct StampCache<V> {
    shape: String,
    period: u32,
    /// Per (workspace, role).
    entries: HashMap<([u8; 16], u32), (u64, V)>,
}

pub(crate) type Cache<V> = BackendLocal<Option<StampCache<V>>>;

/// What `load()` returns for `key`, from `cache` when the stamp allows. `shape` names everything
/// the value depends on besides the rows (settings, the table's oid); `relid` and `column` are
/// the registry and its id column; `per_workspace`: the value depends on `key`'s row only (its
/// stamp validates it), otherwise on any row (the table's any-change stamp).
pub(crate) fn cached<V: Clone>(
    cache: &Cache<V>,
    shape: &str,
    relid: pg_sys::Oid,
    column: &str,
    key: [u8; 16],
    per_workspace: bool,
    load: impl FnOnce() -> TenancyResult<V>,
) -> TenancyResult<V> {
    let Some((period, stamp)) = trusted_stamp(relid, column, per_workspace.then_some(key)) else {
        return load();
    };
    // SAFETY: reading the current user id.
    let key = (key, u32::from(unsafe { pg_sys::GetUserId() }));
    let hit = cache.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|c| c.period == period && c.shape == shape)
            .and_then(|c| c.entries.get(&key))
            .filter(|(s, _)| *s == stamp)
            .map(|(_, v)| v.clone())
    });
    if let Some(v) = hit {
        return Ok(v);
    }
    let value = with_fresh_snapshot(load)?;
    cache.with(|c| {
        let mut c = c.borrow_mut();
        let current = c
            .as_ref()
            .is_some_and(|c| c.period == period && c.shape == shape && c.entries.len() < CAPACITY);
        if !current {
            *c = Some(StampCache {
                shape: shape.to_string(),
                period,
                entries: HashMap::new(),
            });
        }
        let c = c.as_mut().expect("set above");
        c.entries.insert(key, (stamp, value.clone()));
    });
    Ok(value)
}

fn trusted_stamp(relid: pg_sys::Oid, column: &str, ws: Option<[u8; 16]>) -> Option<(u32, u64)> {
    let source = SOURCE.get()?;
    // cheapest first: backend state, then the registry's tracking (an untracked registry, the
    // common case without the cache, stops here), then the caller's privileges
    // SAFETY: reading backend-global state.
    let plain = unsafe {
        !pg_sys::RecoveryInProgress()
            && !pg_sys::IsInParallelMode()
            && pg_sys::XactIsoLevel < pg_sys::XACT_REPEATABLE_READ as i32
    };
    if !plain {
        return None;
    }
    let stamp = source(relid, column, ws)?;
    // SAFETY: privilege and row-security checks of the current user on an existing relation
    // (syscache lookups).
    let readable = unsafe {
        pg_sys::pg_class_aclcheck(
            relid,
            pg_sys::GetUserId(),
            pg_sys::ACL_SELECT as pg_sys::AclMode,
        ) == pg_sys::AclResult::ACLCHECK_OK
            && pg_sys::check_enable_rls(relid, pg_sys::InvalidOid, true)
                != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
    };
    readable.then_some(stamp)
}

/// Run `load` with a snapshot taken now (after the stamp was read): read-only SPI uses the
/// active snapshot, which is otherwise the calling statement's, older than the stamp.
fn with_fresh_snapshot<V>(load: impl FnOnce() -> TenancyResult<V>) -> TenancyResult<V> {
    // SAFETY: a registered copy of a fresh snapshot pushed and popped around the read; if an
    // ERROR escapes, the transaction's abort pops it.
    unsafe {
        pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot());
        let r = load();
        pg_sys::PopActiveSnapshot();
        r
    }
}
