//! Membership of the shared counter table: the first count of a counter (under an
//! advisory-type lock, so concurrent first writers queue), inserting, evicting idle counters,
//! removing a table's counters.

use super::*;

pub(super) fn init_locktag(key: &Key) -> pg_sys::LOCKTAG {
    // FNV-1a of the workspace: collisions only make two workspaces' first counts queue.
    let mut h: u32 = 0x811c_9dc5;
    for b in key.ws {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    pg_sys::LOCKTAG {
        locktag_field1: u32::from(key.dbid),
        locktag_field2: u32::from(key.relid),
        locktag_field3: h,
        locktag_field4: INIT_LOCK_FIELD4,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
    }
}

/// Create the entry of `key` from a count of the table, unless another backend did meanwhile.
pub(super) fn initialise(
    key: &Key,
    count: &mut dyn FnMut() -> Result<i64, TenancyError>,
) -> Result<(), TenancyError> {
    let tag = init_locktag(key);
    // SAFETY: a transaction-level lock; released below, or at (sub)transaction abort on error.
    unsafe {
        pg_sys::LockAcquire(
            &tag,
            pg_sys::ExclusiveLock as pg_sys::LOCKMODE,
            false,
            false,
        )
    };
    if with_entry(key, |_| ()).is_none() {
        let n = count()?;
        insert(key, n)?;
    }
    // SAFETY: releases the lock taken above.
    unsafe { pg_sys::LockRelease(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, false) };
    Ok(())
}

pub(super) fn insert(key: &Key, used: i64) -> Result<(), TenancyError> {
    let shared = shared().expect("enabled");
    let hash = HASH.load(Relaxed);
    // SAFETY: membership changes under the EXCLUSIVE lock; no error is raised while it is held.
    let inserted = unsafe {
        let _lock = LwLockGuard::exclusive(shared.lock);
        let present = !raw::hash_search(
            hash,
            (key as *const Key).cast(),
            pg_sys::HASHACTION::HASH_FIND,
            std::ptr::null_mut(),
        )
        .is_null();
        if !present && pg_sys::hash_get_num_entries(hash) >= shared.max {
            evict(shared, hash);
        }
        // never past the maximum: when every counter belongs to a transaction in progress,
        // eviction frees nothing and the new counter is refused (the hash table's spare
        // shared memory would otherwise let it grow without bound)
        let mut found = false;
        let e = if present || pg_sys::hash_get_num_entries(hash) < shared.max {
            pg_sys::hash_search(
                hash,
                (key as *const Key).cast(),
                pg_sys::HASHACTION::HASH_ENTER_NULL,
                &mut found,
            )
            .cast::<Entry>()
        } else {
            std::ptr::null_mut()
        };
        if !e.is_null() && !found {
            (*e).used = AtomicI64::new(used);
            (*e).in_flight = AtomicI64::new(0);
            (*e).last_used = AtomicI64::new(pg_sys::GetCurrentTimestamp());
        }
        !e.is_null()
    };
    if !inserted {
        return Err(TenancyError::new(
            Code::ERRCODE_OUT_OF_MEMORY,
            "tenancy: no free quota counter in shared memory",
        )
        .detail(format!(
            "All {} counters (tenancy.max_quota_entries) belong to transactions in progress.",
            shared.max
        ))
        .hint("Raise tenancy.max_quota_entries (server start) or retry."));
    }
    Ok(())
}

/// Remove the least recently used 5% of the idle entries. Caller holds the lock EXCLUSIVE.
pub(super) unsafe fn evict(shared: &Shared, hash: *mut pg_sys::HTAB) {
    // SAFETY: caller holds the lock exclusively.
    unsafe {
        let mut idle: Vec<(i64, Key)> = Vec::new();
        each_entry(hash, |e: &Entry| {
            if e.in_flight.load(Relaxed) == 0 {
                idle.push((e.last_used.load(Relaxed), e.key));
            }
        });
        let keys = crate::pg::shmem::least_recent(idle, (shared.max as usize / 20).max(1));
        crate::pg::shmem::remove_keys(hash, &keys);
        shared.evictions.fetch_add(keys.len() as u64, Relaxed);
    }
}

/// Remove every entry of (this database, `relid`) that no transaction holds.
pub(super) fn remove_table(relid: pg_sys::Oid) {
    remove_idle(|key| key.relid == relid);
}

/// Remove every entry of this database that no transaction holds (recounted on next use).
pub(super) fn remove_database_idle() {
    remove_idle(|_| true);
}

/// Remove the entries of this database that `which` selects and no transaction holds.
fn remove_idle(which: impl Fn(&Key) -> bool) {
    let Some(shared) = shared() else { return };
    let hash = HASH.load(Relaxed);
    // SAFETY: membership changes under the EXCLUSIVE lock.
    unsafe {
        let _lock = LwLockGuard::exclusive(shared.lock);
        let mut keys = Vec::new();
        let db = pg_sys::MyDatabaseId;
        each_entry(hash, |e: &Entry| {
            if e.key.dbid == db && which(&e.key) && e.in_flight.load(Relaxed) == 0 {
                keys.push(e.key);
            }
        });
        crate::pg::shmem::remove_keys(hash, &keys);
    }
}
