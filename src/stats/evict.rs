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
    // SAFETY: the table is read under the lock SHARED and changed under it EXCLUSIVE; entry
    // pointers do not outlive the lock they were found under.
    unsafe {
        let mut chosen: Vec<(i64, Key)> = {
            let _lock = LwLockGuard::shared(shared.lock);
            let mut all = Vec::with_capacity(pg_sys::hash_get_num_entries(hash) as usize);
            each_entry(hash, |e: &Entry| {
                if e.key.kind == WORKSPACE {
                    all.push((e.last_activity.load(Relaxed), e.key));
                }
            });
            all
        };
        let n = (chosen.len() / 20).max(1).min(chosen.len());
        if n == 0 {
            return;
        }
        chosen.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
        chosen.truncate(n);
        let _lock = LwLockGuard::exclusive(shared.lock);
        let mut evicted = 0;
        for (seen, key) in &chosen {
            let Some(e) = find(hash, key) else { continue };
            if e.last_activity.load(Relaxed) > *seen {
                continue;
            }
            if let Some(other) = enter(hash, &Key::other(key.dbid), shared) {
                add_entry(other, e);
            }
            crate::pg::shmem::remove_keys(hash, std::slice::from_ref(key));
            evicted += 1;
        }
        shared.evictions.fetch_add(evicted, Relaxed);
    }
}

/// Add every counter of `from` to `to` (eviction into a database's other entry).
pub(super) fn add_entry(to: &Entry, from: &Entry) {
    for (t, f) in to.counters().iter().zip(from.counters()) {
        t.fetch_add(f.load(Relaxed), Relaxed);
    }
    to.last_activity
        .fetch_max(from.last_activity.load(Relaxed), Relaxed);
}
