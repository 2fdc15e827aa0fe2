//! Eviction: when the table is full, the least recently active 5% of the workspace entries make
//! room, their figures added to their databases' other entries (see `make_room`).

use super::*;

/// Clears [`Shared::evicting`] when the eviction ends, however it ends.
struct Evicting<'a>(&'a Shared);

impl Drop for Evicting<'_> {
    fn drop(&mut self) {
        self.0.evicting.store(false, Relaxed);
    }
}

/// The table is full: evict the least recently active 5% of the workspace entries (at least
/// one), adding their figures to their databases' other entries. One backend at a time (the
/// others meanwhile count new workspaces into the other entries rather than wait). The whole
/// table is scanned under the lock SHARED, so statements of workspaces that have an entry go on
/// recording meanwhile; the lock is taken EXCLUSIVE only to remove the chosen entries, each
/// found by its key, so the exclusive section is proportional to the entries evicted. An
/// entry active again since the scan is kept.
pub(super) unsafe fn make_room(shared: &Shared, hash: *mut pg_sys::HTAB) {
    if shared.evicting.swap(true, Relaxed) {
        return;
    }
    let _evicting = Evicting(shared);
    // SAFETY: the table's lock guards it; entries are used only inside the callbacks.
    let evicted = unsafe {
        crate::pg::shmem::evict_oldest(
            shared.lock,
            hash,
            |e: &Entry| (e.key.kind == WORKSPACE).then(|| (e.last_activity.load(Relaxed), e.key)),
            |e: &Entry, seen| {
                if e.last_activity.load(Relaxed) > seen {
                    return false; // active again since the scan
                }
                if let Some(other) = enter(hash, &Key::other(e.key.dbid), shared) {
                    add_entry(other, e);
                }
                true
            },
        )
    };
    shared.evictions.fetch_add(evicted as u64, Relaxed);
}

/// Add every counter of `from` to `to` (eviction into a database's other entry).
pub(super) fn add_entry(to: &Entry, from: &Entry) {
    for (t, f) in to.counters().iter().zip(from.counters()) {
        t.fetch_add(f.load(Relaxed), Relaxed);
    }
    to.last_activity
        .fetch_max(from.last_activity.load(Relaxed), Relaxed);
}
