//! Shared memory: hash tables in PostgreSQL's shared memory, the lock that guards their
//! creation, and LWLock guards that release on drop.
//!
//! A [`LwLockGuard`] takes its lock without pgrx's FFI guard (see [`super::ffi`]) and releases
//! it when dropped: no lock is paired by hand. An ERROR raised while one is held skips the drop;
//! PostgreSQL's abort processing (`LWLockReleaseAll`) releases the lock then. A Rust panic
//! unwinding through it releases it in the drop, before that.

use std::ffi::{c_int, c_long, CStr};

use pgrx::pg_sys;

use super::ffi;

/// The `n` least recently used of `items` (last use, key), oldest first: what an eviction
/// removes (statistics and quota counters alike choose this way). Pure: unit-tested below.
pub(crate) fn least_recent<K: Copy>(mut items: Vec<(i64, K)>, n: usize) -> Vec<K> {
    items.sort_by_key(|(t, _)| *t);
    items.into_iter().take(n).map(|(_, k)| k).collect()
}

/// The entry of `key` in a shared hash table of entries `E` keyed by `K`, if present. Caller
/// holds the table's lock (either mode); the reference must not outlive it.
pub(crate) unsafe fn find<'a, K, E>(hash: *mut pg_sys::HTAB, key: &K) -> Option<&'a E> {
    // SAFETY: see the caller's obligations; HASH_FIND raises nothing.
    unsafe {
        ffi::hash_search(
            hash,
            (key as *const K).cast(),
            pg_sys::HASHACTION::HASH_FIND,
            std::ptr::null_mut(),
        )
        .cast::<E>()
        .as_ref()
    }
}

/// The entry of `key`, inserted if missing: (entry, whether it was there already). A new entry
/// has its key in place and the rest uninitialised: the caller fills it. None when the shared
/// memory ran out (HASH_ENTER_NULL raises nothing). Caller holds the lock EXCLUSIVE.
pub(crate) unsafe fn enter<K, E>(hash: *mut pg_sys::HTAB, key: &K) -> Option<(*mut E, bool)> {
    // SAFETY: see the caller's obligations.
    unsafe {
        let mut found = false;
        let e = ffi::hash_search(
            hash,
            (key as *const K).cast(),
            pg_sys::HASHACTION::HASH_ENTER_NULL,
            &mut found,
        )
        .cast::<E>();
        (!e.is_null()).then_some((e, found))
    }
}

/// Evict the oldest twentieth (at least one) of the entries `age` ranks (None: never evicted),
/// guarded by `lock`: the candidates are chosen under the lock SHARED (writers of existing
/// entries go on meanwhile; a selection, not a sort), then each is found again by its key under
/// EXCLUSIVE and removed if `evict(entry, age seen)` agrees (false: keep it, e.g. active again
/// since). The exclusive section is proportional to the entries evicted, not to the table.
/// Returns how many were removed. Used by the statistics and the change stamps.
pub(crate) unsafe fn evict_oldest<K: Copy, E, T: Ord + Copy>(
    lock: *mut pg_sys::LWLock,
    hash: *mut pg_sys::HTAB,
    age: impl Fn(&E) -> Option<(T, K)>,
    mut evict: impl FnMut(&E, T) -> bool,
) -> usize {
    // SAFETY: the table is read under the lock SHARED and changed under it EXCLUSIVE; entry
    // references do not outlive the lock they were found under.
    unsafe {
        let mut chosen: Vec<(T, K)> = {
            let _lock = LwLockGuard::shared(lock);
            let mut all = Vec::with_capacity(pg_sys::hash_get_num_entries(hash).max(0) as usize);
            each_entry(hash, |e: &E| all.extend(age(e)));
            all
        };
        let n = (chosen.len() / 20).max(1).min(chosen.len());
        if n == 0 {
            return 0;
        }
        chosen.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
        chosen.truncate(n);
        let _lock = LwLockGuard::exclusive(lock);
        let mut removed = 0;
        for (seen, key) in &chosen {
            if let Some(e) = find::<K, E>(hash, key) {
                if evict(e, *seen) {
                    remove_keys(hash, std::slice::from_ref(key));
                    removed += 1;
                }
            }
        }
        removed
    }
}

/// Remove `keys` from a shared hash table keyed by `K`. Caller holds its lock EXCLUSIVE.
pub(crate) unsafe fn remove_keys<K>(hash: *mut pg_sys::HTAB, keys: &[K]) {
    for key in keys {
        // SAFETY: see the caller's obligations; HASH_REMOVE of a key raises no error.
        unsafe {
            pg_sys::hash_search(
                hash,
                (key as *const K).cast(),
                pg_sys::HASHACTION::HASH_REMOVE,
                std::ptr::null_mut(),
            )
        };
    }
}

/// In a `shmem_request_hook`: ask for `bytes` of shared memory and a named tranche of one
/// LWLock, the lock that guards a table's membership.
///
/// # Safety
/// Called from a `shmem_request_hook` (postmaster, PostgreSQL 15).
pub(crate) unsafe fn request(bytes: usize, tranche: &CStr) {
    // SAFETY: see the function's obligations.
    unsafe {
        pg_sys::RequestAddinShmemSpace(bytes);
        pg_sys::RequestNamedLWLockTranche(tranche.as_ptr(), 1);
    }
}

/// In a `shmem_startup_hook`: attach the struct `name` (created with `init(lock)` the first
/// time, `lock` being the tranche's LWLock), run `more` (further structs of the same
/// capability), and attach the hash table `hash_name` of `max` entries `E` keyed by `K`, all
/// under AddinShmemInitLock (the protocol of `contrib/pg_stat_statements`).
///
/// # Safety
/// Called from a `shmem_startup_hook`, after [`request`] asked for the space and the tranche.
pub(crate) unsafe fn startup<S, K, E, R>(
    name: &CStr,
    tranche: &CStr,
    hash_name: &CStr,
    max: c_long,
    init: impl FnOnce(*mut pg_sys::LWLock) -> S,
    more: impl FnOnce() -> R,
) -> (*mut S, *mut pg_sys::HTAB, R) {
    // SAFETY: see the function's obligations.
    unsafe {
        let _init_lock = LwLockGuard::exclusive(addin_shmem_init_lock());
        let mut found = false;
        let shared = pg_sys::ShmemInitStruct(name.as_ptr(), std::mem::size_of::<S>(), &mut found)
            .cast::<S>();
        if !found {
            shared.write(init(
                &raw mut (*pg_sys::GetNamedLWLockTranche(tranche.as_ptr())).lock,
            ));
        }
        let r = more();
        let hash = shmem_hash::<K, E>(hash_name, max);
        (shared, hash, r)
    }
}

/// An LWLock held until dropped.
pub(crate) struct LwLockGuard(*mut pg_sys::LWLock);

impl LwLockGuard {
    /// Take `lock` SHARED.
    ///
    /// # Safety
    /// `lock` is a valid LWLock of shared memory.
    pub(crate) unsafe fn shared(lock: *mut pg_sys::LWLock) -> LwLockGuard {
        // SAFETY: see the function's obligations.
        unsafe { ffi::lwlock_acquire(lock, pg_sys::LWLockMode::LW_SHARED) };
        LwLockGuard(lock)
    }

    /// Take `lock` EXCLUSIVE.
    ///
    /// # Safety
    /// `lock` is a valid LWLock of shared memory.
    pub(crate) unsafe fn exclusive(lock: *mut pg_sys::LWLock) -> LwLockGuard {
        // SAFETY: see the function's obligations.
        unsafe { ffi::lwlock_acquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE) };
        LwLockGuard(lock)
    }
}

impl Drop for LwLockGuard {
    fn drop(&mut self) {
        // SAFETY: the lock was taken by this guard and is still held.
        unsafe { ffi::lwlock_release(self.0) };
    }
}

/// Visit every entry of a shared hash table whose entries are `E`. Caller holds the table's lock
/// (SHARED to read, EXCLUSIVE if `f` collects keys to remove afterwards), or is the postmaster
/// at start/exit with no backend left.
pub(crate) unsafe fn each_entry<E>(hash: *mut pg_sys::HTAB, mut f: impl FnMut(&E)) {
    // SAFETY: see the caller's obligations above.
    unsafe {
        let mut seq: pg_sys::HASH_SEQ_STATUS = std::mem::zeroed();
        pg_sys::hash_seq_init(&mut seq, hash);
        while let Some(e) = pg_sys::hash_seq_search(&mut seq).cast::<E>().as_ref() {
            f(e);
        }
    }
}

/// PostgreSQL's AddinShmemInitLock, held while a shmem_startup_hook creates or attaches its
/// structures.
pub(crate) unsafe fn addin_shmem_init_lock() -> *mut pg_sys::LWLock {
    // SAFETY: MainLWLockArray is initialised before any shmem_startup_hook runs.
    unsafe { &raw mut (*pg_sys::MainLWLockArray.add(21)).lock }
}

/// Create or attach the shared hash table `name` of `max` entries `E`, keyed by the bytes of
/// `K` (the first field of `E`). Caller holds AddinShmemInitLock, in a shmem_startup_hook.
pub(crate) unsafe fn shmem_hash<K, E>(name: &std::ffi::CStr, max: c_long) -> *mut pg_sys::HTAB {
    // SAFETY: see the caller's obligations above.
    unsafe {
        let mut info: pg_sys::HASHCTL = std::mem::zeroed();
        info.keysize = std::mem::size_of::<K>();
        info.entrysize = std::mem::size_of::<E>();
        pg_sys::ShmemInitHash(
            name.as_ptr(),
            max,
            max,
            &mut info,
            (pg_sys::HASH_ELEM | pg_sys::HASH_BLOBS) as c_int,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::least_recent;

    #[test]
    fn least_recent_takes_the_oldest_first() {
        let items = vec![(30, 'c'), (10, 'a'), (50, 'e'), (20, 'b'), (40, 'd')];
        assert_eq!(least_recent(items.clone(), 2), vec!['a', 'b']);
        assert_eq!(least_recent(items.clone(), 0), Vec::<char>::new());
        assert_eq!(least_recent(items, 9), vec!['a', 'b', 'c', 'd', 'e']);
        assert_eq!(least_recent(Vec::<(i64, u8)>::new(), 3), Vec::<u8>::new());
    }
}
