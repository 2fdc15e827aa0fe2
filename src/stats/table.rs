//! The shared table of per-workspace entries: shared-memory request and startup, recording
//! into an entry (creating it within the backend's allowance), eviction, whether this database
//! tracks at all, and the per-backend session slots.

use super::*;

/// Backend exit: this backend no longer holds a workspace.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn clear_slot(_code: c_int, _arg: pg_sys::Datum) {
    note_context(None);
}

/// From the shmem_request_hook (`crate::hooks`, postmaster): the table's space and tranche.
/// # Safety
/// Only from a shmem_request_hook.
pub(crate) unsafe fn shmem_request() {
    // SAFETY: the caller is the shmem_request_hook.
    unsafe { crate::pg::shmem::request(shared_size(), TRANCHE) };
}

/// From the shmem_startup_hook (`crate::hooks`): create or attach the table and the session
/// slots; in the postmaster, load the saved statistics.
/// # Safety
/// Only from a shmem_startup_hook, after [`shmem_request`] ran in the postmaster.
pub(crate) unsafe fn shmem_startup() {
    // SAFETY: the standard ShmemInitStruct / ShmemInitHash protocol under AddinShmemInitLock,
    // as pg_stat_statements does it.
    unsafe {
        let n = slot_count();
        let (shared, hash, slots) = crate::pg::shmem::startup::<Shared, Key, Entry, _>(
            c"tenancy stats",
            TRANCHE,
            c"tenancy stats hash",
            MAX_WORKSPACES.get() as c_long + OTHER_ENTRIES,
            |lock| Shared {
                lock,
                evictions: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                reset_at: AtomicI64::new(pg_sys::GetCurrentTimestamp()),
                max: MAX_WORKSPACES.get() as i64,
                others: AtomicI64::new(0),
                evicting: AtomicBool::new(false),
            },
            || {
                // the session slots, one per backend id
                let mut found = false;
                let slots = pg_sys::ShmemInitStruct(
                    c"tenancy stats sessions".as_ptr(),
                    n as usize * std::mem::size_of::<Slot>(),
                    &mut found,
                )
                .cast::<Slot>();
                if !found {
                    std::ptr::write_bytes(slots, 0, n as usize);
                }
                slots
            },
        );
        SHARED.store(shared, Relaxed);
        HASH.store(hash, Relaxed);
        SLOTS.store(slots, Relaxed);
        SLOT_COUNT.store(n, Relaxed);
        if !pg_sys::IsUnderPostmaster {
            // the postmaster: load what a clean shutdown saved, and save again at exit
            load_file(&*shared, hash);
            pg_sys::on_shmem_exit(Some(shmem_shutdown), pg_sys::Datum::from(0));
        }
    }
}

pub(super) fn tracking() -> Option<[u8; 16]> {
    if SHARED.load(Relaxed).is_null() || INTERNAL.load(Relaxed) > 0 || !TRACK.get() {
        return None;
    }
    let ws = crate::context::current()?;
    installed_here().then_some(ws)
}

/// Whether the extension is installed in this backend's database, cached per backend:
/// `EXT_UNKNOWN`, `EXT_ABSENT`, or the oid of the relation `tenancy.workspace_stats` (the marker
/// whose invalidation means the extension may have been dropped or replaced).
pub(super) static EXT_STATE: AtomicU64 = AtomicU64::new(EXT_UNKNOWN);
pub(super) const EXT_UNKNOWN: u64 = u64::MAX;
pub(super) const EXT_ABSENT: u64 = u64::MAX - 1;
/// Bumped by every invalidation that clears [`EXT_STATE`]: a lookup during which one arrived is
/// not cached.
pub(super) static EXT_GEN: AtomicU64 = AtomicU64::new(0);

/// Relcache invalidation (this database's or a shared relation's; `relid` 0: all of them, e.g.
/// after a sinval queue overflow). While the extension is known to be absent, any invalidation
/// may be its CREATE EXTENSION (which creates relations: their pg_class rows invalidate them
/// everywhere); while it is installed, only one of the marker relation (dropped with the
/// extension) or a full reset. Invalidations are rare next to statements (DDL, ANALYZE), so the
/// hot path only reads `EXT_STATE`.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let state = EXT_STATE.load(Relaxed);
    let relid = u64::from(u32::from(relid));
    if state == EXT_UNKNOWN {
        return;
    }
    if state == EXT_ABSENT || relid == 0 || relid == state {
        EXT_GEN.fetch_add(1, Relaxed);
        EXT_STATE.store(EXT_UNKNOWN, Relaxed);
    }
}

/// Is the extension installed in this database (with its statistics view)? A catalog lookup once
/// per invalidation (see [`relcache_callback`]), else one atomic load. Callers are in a
/// transaction (planner, executor).
pub(super) fn installed_here() -> bool {
    match EXT_STATE.load(Relaxed) {
        EXT_ABSENT => false,
        EXT_UNKNOWN => {
            // SAFETY: called from the planner and executor hooks, in a valid transaction.
            if !unsafe { pg_sys::IsTransactionState() } {
                return false;
            }
            let gen = EXT_GEN.load(Relaxed);
            // SAFETY: catalog lookups in a transaction (errors become Rust panics through the
            // guarded pg_sys calls, as anywhere in the hooks).
            let marker = unsafe {
                let ext = pg_sys::get_extension_oid(c"tenancy".as_ptr(), true);
                if ext == pg_sys::InvalidOid {
                    None
                } else {
                    // the control file fixes the schema (schema = tenancy, not relocatable)
                    let nsp = pg_sys::get_namespace_oid(c"tenancy".as_ptr(), true);
                    let rel = if nsp == pg_sys::InvalidOid {
                        pg_sys::InvalidOid
                    } else {
                        pg_sys::get_relname_relid(c"workspace_stats".as_ptr(), nsp)
                    };
                    (rel != pg_sys::InvalidOid).then_some(u64::from(u32::from(rel)))
                }
            };
            if EXT_GEN.load(Relaxed) == gen {
                EXT_STATE.store(marker.unwrap_or(EXT_ABSENT), Relaxed);
            }
            if marker.is_some() {
                crate::compat::check_sql_version();
            }
            marker.is_some()
        }
        _ => true,
    }
}

/// Whether [`record_at`] may create the entry when it does not exist.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Create {
    /// Yes (the quota trigger: the workspace of rows actually written).
    Always,
    /// Within the backend's `tenancy.stats_new_entry_limit` (statements under a claimed context).
    Limited,
    /// No (parallel workers: the leader creates the entry).
    Never,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Recorded {
    Yes,
    /// No entry, and the backend's allowance of new entries is used up: counted in the
    /// database's other entry.
    Refused,
    /// No entry and the table is full (another backend is evicting): counted in the database's
    /// other entry.
    Other,
    /// Not tracking, or no entry and `Create::Never`.
    No,
}

/// Add to the entry of (current database, `ws`), creating it if needed. Never fails. For the
/// quota trigger: the rows' workspace, not limited by `tenancy.stats_new_entry_limit`.
pub(crate) fn record(ws: [u8; 16], f: impl Fn(&Entry)) {
    // SAFETY: plain clock read (vDSO).
    record_at(ws, unsafe { raw::now() }, Create::Always, f);
}

/// Backend-local bucket for a process without a slot of its own.
pub(super) static LOCAL_BUCKET: BackendLocal<(f64, i64)> = BackendLocal::new((0.0, 0));

/// This backend's shared slot, if it has one.
pub(super) fn my_slot() -> Option<&'static Slot> {
    let slots = SLOTS.load(Relaxed);
    // SAFETY: MyBackendId indexes this backend's own slot (1..=MaxBackends), shared memory that
    // lives as long as the process.
    unsafe {
        let id = pg_sys::MyBackendId as i64;
        if slots.is_null() || id <= 0 || id >= SLOT_COUNT.load(Relaxed) {
            return None;
        }
        Some(&*slots.add(id as usize))
    }
}

/// Take one token of this backend's new-entry allowance at `now` (us); false when none is left.
/// `give_back`: return a token taken for an entry another backend created meanwhile.
pub(super) fn take_token(now: i64, give_back: bool) -> bool {
    let limit = NEW_ENTRY_LIMIT.get();
    if limit <= 0 {
        // 0: no new entry, and the allowance is left as it is; -1 (superuser-only, as every
        // value of the setting): no limit, and the allowance is full again once it applies
        if limit < 0 {
            if let Some(slot) = my_slot() {
                slot.tokens_at.store(0, Relaxed);
            }
            LOCAL_BUCKET.with(|b| b.borrow_mut().1 = 0);
        }
        return limit < 0;
    }
    let limit = f64::from(limit);
    let update = |tokens: f64, at: i64| bucket(tokens, at, now, limit, give_back);
    match my_slot() {
        // only this backend writes its slot
        Some(slot) => {
            let (ok, tokens) = update(
                f64::from_bits(slot.tokens.load(Relaxed)),
                slot.tokens_at.load(Relaxed),
            );
            slot.tokens.store(tokens.to_bits(), Relaxed);
            slot.tokens_at.store(now, Relaxed);
            ok
        }
        None => LOCAL_BUCKET.with(|b| {
            let mut b = b.borrow_mut();
            let (ok, tokens) = update(b.0, b.1);
            *b = (tokens, now);
            ok
        }),
    }
}

/// The new-entry token bucket: `tokens` left at `at` (us; 0: never used, a full bucket), refilled
/// continuously at `limit` per minute up to `limit`; take one at `now` (true when there was one),
/// or give one back. Returns (taken, tokens left). Pure: unit-tested below.
pub(super) fn bucket(tokens: f64, at: i64, now: i64, limit: f64, give_back: bool) -> (bool, f64) {
    if give_back {
        return (true, (tokens + 1.0).min(limit));
    }
    let tokens = if at == 0 {
        limit
    } else {
        (tokens + (now - at).max(0) as f64 * limit / 60e6).min(limit)
    };
    if tokens >= 1.0 {
        (true, tokens - 1.0)
    } else {
        (false, tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn a_fresh_bucket_allows_a_burst_of_limit_then_refills_per_minute() {
        let (mut tokens, mut at, limit) = (0.0, 0, 5.0);
        let mut taken = 0;
        for i in 0..8 {
            let now = 1_000_000 + i; // within a microsecond of each other: no refill to speak of
            let (ok, left) = bucket(tokens, at, now, limit, false);
            taken += ok as i32;
            tokens = left;
            at = now;
        }
        assert_eq!(taken, 5, "a burst of exactly the limit");
        // twelve seconds later: a fifth of a minute refills one token of five per minute
        let (ok, _) = bucket(tokens, at, at + 12_000_000, limit, false);
        assert!(ok);
        let (ok, _) = bucket(tokens, at, at + 11_000_000, limit, false);
        assert!(!ok, "not yet a whole token");
        // never more than the limit, however long the pause; a token given back is usable again
        let (_, left) = bucket(0.0, 1, 3_600_000_000, limit, false);
        assert_eq!(left, limit - 1.0);
        assert_eq!(bucket(limit, 1, 2, limit, true), (true, limit));
        let (ok, left) = bucket(0.2, at, at, limit, true);
        assert!(ok && (left - 1.2).abs() < 1e-9);
    }
}

/// Add to the entry of (current database, `ws`), with its last activity set to `now` (us) the
/// caller already read; `create` says whether a missing entry may be created. A statement that
/// may not create its entry (its backend's allowance is used up) or finds the table full is
/// added to the database's "other" entry instead, so that the sums stay exact.
pub(super) fn record_at(ws: [u8; 16], now: i64, create: Create, f: impl Fn(&Entry)) -> Recorded {
    let (Some(shared), hash) = (shared(), HASH.load(Relaxed)) else {
        return Recorded::No;
    };
    if !TRACK.get() {
        return Recorded::No;
    }
    // SAFETY: MyDatabaseId is the backend's database.
    let dbid = unsafe { pg_sys::MyDatabaseId };
    let key = Key::workspace(dbid, ws);
    // SAFETY: the hash is valid shared memory; every entry pointer is used only while the lock
    // keeping it alive is held.
    unsafe {
        {
            let _lock = LwLockGuard::shared(shared.lock);
            if let Some(e) = find(hash, &key) {
                f(e);
                e.last_activity.store(now, Relaxed);
                return Recorded::Yes;
            }
        }
        match create {
            Create::Never => return Recorded::No,
            // refused without taking the lock EXCLUSIVE: a loop over new ids costs others nothing
            Create::Limited if !take_token(now, false) => {
                add_to_other(shared, hash, dbid, now, &f);
                return Recorded::Refused;
            }
            _ => {}
        }
        let lock = LwLockGuard::exclusive(shared.lock);
        if let Some(e) = find(hash, &key) {
            if create == Create::Limited {
                take_token(now, true); // another backend created it meanwhile
            }
            f(e);
            e.last_activity.store(now, Relaxed);
            return Recorded::Yes;
        }
        // The database's other entry comes first: eviction moves figures into it, so it must
        // exist before any workspace entry of the database does.
        let Some(other) = enter(hash, &Key::other(dbid), shared) else {
            return Recorded::No;
        };
        let full = workspace_entries(shared, hash) >= shared.max;
        let e = if full {
            None
        } else {
            enter(hash, &key, shared)
        };
        let recorded = match e {
            Some(e) => {
                f(e);
                e.last_activity.store(now, Relaxed);
                Recorded::Yes
            }
            None => {
                // full (another backend is making room, or the shared memory ran out)
                f(other);
                other.last_activity.store(now, Relaxed);
                Recorded::Other
            }
        };
        let make_room_now = workspace_entries(shared, hash) >= shared.max;
        drop(lock);
        if make_room_now {
            make_room(shared, hash);
        }
        recorded
    }
}

/// The entry of `key`, if present. Caller holds the lock (either mode).
pub(super) unsafe fn find<'a>(hash: *mut pg_sys::HTAB, key: &Key) -> Option<&'a Entry> {
    // SAFETY: see the caller's obligations.
    unsafe { crate::pg::shmem::find(hash, key) }
}

/// The entry of `key`, created (zeroed) if missing; None when shared memory ran out. Caller
/// holds the lock EXCLUSIVE.
pub(super) unsafe fn enter<'a>(
    hash: *mut pg_sys::HTAB,
    key: &Key,
    shared: &Shared,
) -> Option<&'a Entry> {
    // SAFETY: see the caller's obligations; a new entry is zeroed past its key before use.
    unsafe {
        let (e, found) = crate::pg::shmem::enter::<Key, Entry>(hash, key)?;
        if !found {
            let counters = e.cast::<u8>().add(std::mem::size_of::<Key>());
            std::ptr::write_bytes(
                counters,
                0,
                std::mem::size_of::<Entry>() - std::mem::size_of::<Key>(),
            );
            if key.kind == OTHER {
                shared.others.fetch_add(1, Relaxed);
            }
        }
        e.as_ref()
    }
}

/// Workspace entries in the table (the hash also holds the databases' other entries). Caller
/// holds the lock.
pub(super) unsafe fn workspace_entries(shared: &Shared, hash: *mut pg_sys::HTAB) -> i64 {
    // SAFETY: see the caller's obligations.
    unsafe { pg_sys::hash_get_num_entries(hash) - shared.others.load(Relaxed) }
}

/// Add a statement that got no entry of its own to its database's other entry (created if
/// missing: once per database).
unsafe fn add_to_other(
    shared: &Shared,
    hash: *mut pg_sys::HTAB,
    dbid: pg_sys::Oid,
    now: i64,
    f: &impl Fn(&Entry),
) {
    let key = Key::other(dbid);
    // SAFETY: entries are used only under the lock that keeps them alive.
    unsafe {
        {
            let _lock = LwLockGuard::shared(shared.lock);
            if let Some(e) = find(hash, &key) {
                f(e);
                e.last_activity.store(now, Relaxed);
                return;
            }
        }
        let _lock = LwLockGuard::exclusive(shared.lock);
        if let Some(e) = enter(hash, &key, shared) {
            f(e);
            e.last_activity.store(now, Relaxed);
        }
    }
}

/// Called by the `tenancy.workspace_id` assign hook: publish this backend's workspace.
/// Parallel workers skip: they restore the leader's settings, but are not sessions.
pub(crate) fn note_context(ws: Option<[u8; 16]>) {
    if is_parallel_worker() {
        return;
    }
    // Only this backend writes its slot. Processes without a backend id (postmaster, auxiliary)
    // skip.
    let Some(slot) = my_slot() else { return };
    // SAFETY: registering a 'static callback for this backend's exit; reading its database id.
    unsafe {
        if ws.is_some() && !SLOT_EXIT_REGISTERED.with(|r| r.replace(true)) {
            pg_sys::before_shmem_exit(Some(clear_slot), pg_sys::Datum::from(0));
        }
        match ws {
            None => slot.set.store(false, Relaxed),
            Some(b) => {
                slot.dbid
                    .store(u32::from(pg_sys::MyDatabaseId) as u64, Relaxed);
                slot.hi
                    .store(u64::from_be_bytes(b[..8].try_into().unwrap()), Relaxed);
                slot.lo
                    .store(u64::from_be_bytes(b[8..].try_into().unwrap()), Relaxed);
                slot.set.store(true, Relaxed);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hooks
//
// The chained calls (previous hook or standard_*) are made by the C trampolines of
// src/pg/hooks.c, as a C hook makes them: an ERROR raised inside them propagates unchanged
// (position, internal query, context and the constraint fields included) instead of being
// caught and re-raised by pgrx, which loses those fields; no Rust frame is alive across them.
// The trampolines restore NESTING in PG_FINALLY; the (sub)transaction abort callbacks repair
// it after a procedure's ROLLBACK, and the rest of the statement state after any abort.
// ---------------------------------------------------------------------------------------------
