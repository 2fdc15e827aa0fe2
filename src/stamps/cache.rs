//! Stamps for tenancy's own caches (`crate::context::cache`, the registry lookups): when, and
//! with which value, a backend-local cache may trust a stamp instead of reading the table.

use super::*;

/// The marker trigger of a tracking period, and the four change triggers.
pub(super) const MARKER_TRIGGER: &CStr = c"tenancy_changes_insert";
const TRIGGERS: [&CStr; 4] = [
    MARKER_TRIGGER,
    c"tenancy_changes_update",
    c"tenancy_changes_delete",
    c"tenancy_changes_truncate",
];

/// What the relcache says about `relid`'s change tracking.
pub(super) struct Tracking {
    /// The marker trigger's oid: one per `track_changes()` (a new tracking period, after an
    /// `untrack_changes()` whose changes were not stamped, has another).
    pub(super) marker: u32,
    /// All four triggers present, tracking `column`, and enabled (`O`rigin or `A`lways).
    pub(super) complete: bool,
}

/// The change tracking of `relid` by `column` (any column when `None`), from the relcache.
pub(super) fn tracking(relid: pg_sys::Oid, column: Option<&str>) -> Option<Tracking> {
    // SAFETY: relcache lookup by oid, reference released before returning.
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        if rel.is_null() {
            return None;
        }
        let td = (*rel).trigdesc;
        let mut marker = None;
        let mut good = 0;
        if !td.is_null() {
            for i in 0..(*td).numtriggers as usize {
                let t = &*(*td).triggers.add(i);
                // a partition's cloned trigger notes its partitioned table, not the partition
                if t.tgisclone {
                    continue;
                }
                let name = CStr::from_ptr(t.tgname);
                if !TRIGGERS.contains(&name) {
                    continue;
                }
                if name == MARKER_TRIGGER {
                    marker = Some(u32::from(t.tgoid));
                }
                let enabled = matches!(t.tgenabled as u8, b'O' | b'A');
                let same_column = t.tgnargs >= 1
                    && column.is_none_or(|c| CStr::from_ptr(*t.tgargs).to_bytes() == c.as_bytes());
                if enabled && same_column {
                    good += 1;
                }
            }
        }
        pg_sys::RelationClose(rel);
        marker.map(|marker| Tracking {
            marker,
            complete: good == TRIGGERS.len(),
        })
    }
}

/// For a backend-local cache of rows of `relid` (tracked by `column`): the tracking period and
/// the stamp of `ws` (`None`: of any change of the table), when the cache may trust it: stamps
/// are kept (preload), the four change triggers are there and enabled, tracking `column`, and
/// this transaction has not changed the table itself (its changes are stamped only when it
/// commits: until then the table must be read). `None`: read the table.
///
/// The caller reads this *before* the data, with a snapshot taken after it: the data is then at
/// least as new as the stamp.
pub(crate) fn cache_stamp(
    relid: pg_sys::Oid,
    column: &str,
    ws: Option<[u8; 16]>,
) -> Option<(u32, u64)> {
    let shared = shared()?;
    // a table untracked and tracked again while this backend had not looked: see it now
    // SAFETY: processing pending invalidation messages, as any lock acquisition does.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    let t = tracking(relid, Some(column))?;
    if !t.complete || pending::wrote(relid) {
        return None;
    }
    let stamp = match ws {
        Some(ws) => stamp_of(shared, relid, ws),
        None => {
            let hash = HASH.load(Relaxed);
            // SAFETY: entries read under the lock SHARED.
            unsafe {
                let _lock = LwLockGuard::shared(shared.lock);
                let any =
                    find(hash, &Key::new(relid, None).any()).map_or(0, |e| e.stamp.load(Relaxed));
                shared.floor.load(Relaxed).max(any)
            }
        }
    };
    Some((t.marker, stamp))
}
