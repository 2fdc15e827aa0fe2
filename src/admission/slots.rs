//! The slots in shared memory: per (database, workspace), the statements running now (`active`)
//! and waiting (`waiting`), and a condition variable the waiters sleep on.
//!
//! # Locking
//! One LWLock (tranche "tenancy admission") guards the hash table and every entry's counters,
//! taken EXCLUSIVE for each admission and release (short: a lookup and two integers; never held
//! while sleeping). Entries stay after their last statement ends (a workspace that runs once
//! usually runs again: no hash insert and removal per statement); when the table is full, the
//! idle ones (no statement active or waiting) are removed to make room. The table is sized for
//! twice the backends, and every statement holding or waiting for a slot is in a backend, so a
//! non-idle entry always finds room. The condition variable of an entry is only slept on while
//! the sleeper counts in `waiting`, which keeps the entry (and so the variable) in place.
//!
//! # Order
//! A statement that arrives while others wait queues behind them (no barging), and each release
//! wakes the longest waiter (`ConditionVariableSignal`): slots go to waiters in arrival order. A
//! waiter that leaves without a slot (timeout, cancel) passes a wake-up on if a slot is free.

use std::ffi::c_long;
use std::sync::atomic::{AtomicPtr, Ordering::Relaxed};

use pgrx::pg_sys;

use crate::pg::shmem::LwLockGuard;

const TRANCHE: &std::ffi::CStr = c"tenancy admission";
/// PostgreSQL's PG_WAIT_EXTENSION: the wait event class shown in pg_stat_activity.
const WAIT_EVENT_EXTENSION: u32 = 0x0700_0000;

#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Key {
    pub dbid: u32,
    pub ws: [u8; 16],
}

#[repr(C)]
pub(super) struct Entry {
    key: Key,
    active: u32,
    waiting: u32,
    /// the limit the last arrival saw (a leaving waiter passes a wake-up on below it)
    max: u32,
    cv: pg_sys::ConditionVariable,
}

struct Shared {
    lock: *mut pg_sys::LWLock,
}

static SHARED: AtomicPtr<Shared> = AtomicPtr::new(std::ptr::null_mut());
static HASH: AtomicPtr<pg_sys::HTAB> = AtomicPtr::new(std::ptr::null_mut());

fn capacity() -> c_long {
    // SAFETY: MaxBackends is set before shmem_request_hook runs (PostgreSQL 15).
    let backends = unsafe { pg_sys::MaxBackends } as c_long;
    2 * backends + 64
}

fn size() -> usize {
    // SAFETY: pure size computation.
    unsafe {
        pg_sys::hash_estimate_size(capacity(), std::mem::size_of::<Entry>())
            + std::mem::size_of::<Shared>()
    }
}

/// # Safety
/// Only from a shmem_request_hook.
pub(crate) unsafe fn shmem_request() {
    // SAFETY: the caller is the shmem_request_hook.
    unsafe { crate::pg::shmem::request(size(), TRANCHE) };
}

/// # Safety
/// Only from a shmem_startup_hook, after [`shmem_request`].
pub(crate) unsafe fn shmem_startup() {
    // SAFETY: the ShmemInitStruct / ShmemInitHash protocol under AddinShmemInitLock.
    unsafe {
        let (shared, hash, ()) = crate::pg::shmem::startup::<Shared, Key, Entry, ()>(
            c"tenancy admission",
            TRANCHE,
            c"tenancy admission slots",
            capacity(),
            |lock| Shared { lock },
            || (),
        );
        SHARED.store(shared, Relaxed);
        HASH.store(hash, Relaxed);
    }
}

pub(super) fn enabled() -> bool {
    !SHARED.load(Relaxed).is_null()
}

fn lock() -> Option<LwLockGuard> {
    // SAFETY: set once at shmem startup; the lock lives in shared memory.
    unsafe {
        SHARED
            .load(Relaxed)
            .as_ref()
            .map(|s| LwLockGuard::exclusive(s.lock))
    }
}

/// The entry of `key` (created if absent, when `create`); null when absent (or, creating, when
/// the table is full even of non-idle entries). Caller holds the lock.
unsafe fn entry(key: &Key, create: bool) -> *mut Entry {
    // SAFETY: the caller holds the lock; a new entry is initialised before the lock is released.
    unsafe {
        let mut e = lookup(key, create);
        if e.is_null() && create {
            remove_idle();
            e = lookup(key, create);
        }
        e
    }
}

/// Caller holds the lock.
unsafe fn lookup(key: &Key, create: bool) -> *mut Entry {
    let action = if create {
        pg_sys::HASHACTION::HASH_ENTER_NULL
    } else {
        pg_sys::HASHACTION::HASH_FIND
    };
    let mut found = false;
    // SAFETY: see entry().
    unsafe {
        let e = pg_sys::hash_search(
            HASH.load(Relaxed),
            (key as *const Key).cast(),
            action,
            &mut found,
        )
        .cast::<Entry>();
        if !e.is_null() && !found {
            (*e).active = 0;
            (*e).waiting = 0;
            (*e).max = 0;
            pg_sys::ConditionVariableInit(&mut (*e).cv);
        }
        e
    }
}

/// Remove every entry without a statement active or waiting. Caller holds the lock.
unsafe fn remove_idle() {
    let mut idle: Vec<Key> = Vec::new();
    // SAFETY: the caller holds the lock EXCLUSIVE; keys are collected, then removed.
    unsafe {
        crate::pg::shmem::each_entry::<Entry>(HASH.load(Relaxed), |e| {
            if e.active == 0 && e.waiting == 0 {
                idle.push(e.key);
            }
        });
        crate::pg::shmem::remove_keys(HASH.load(Relaxed), &idle);
    }
}

/// How an admission ended.
pub(super) enum Admitted {
    /// took a slot; `waited_ns` spent waiting for it
    Slot { waited_ns: u64 },
    /// the table is full (more workspaces running at once than it was sized for): admitted
    /// without a slot, so that a statement is never refused for tenancy's own lack of room
    Untracked,
    /// no slot within `max_wait`
    TimedOut { waited_ns: u64 },
}

/// Counts a statement as waiting while alive; leaving without a slot (timeout, or an ERROR
/// such as a cancel unwinding through the wait) stops counting it and passes a wake-up on.
struct Queued<'a> {
    key: &'a Key,
    holds_slot: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let Some(_lock) = lock() else { return };
        // SAFETY: lock held; the entry exists while this statement counts in `waiting`.
        unsafe {
            let e = entry(self.key, false);
            if e.is_null() {
                return;
            }
            (*e).waiting = (*e).waiting.saturating_sub(1);
            if !self.holds_slot && (*e).waiting > 0 && (*e).active < (*e).max {
                pg_sys::ConditionVariableSignal(&mut (*e).cv);
            }
        }
    }
}

/// Take one of `max` slots of `key`, waiting up to `max_wait_ms` (None: without limit).
pub(super) fn acquire(key: &Key, max: u32, max_wait_ms: Option<u64>) -> Admitted {
    let start = std::time::Instant::now();
    let mut queued: Option<Queued> = None;
    let cv: *mut pg_sys::ConditionVariable;
    {
        let Some(_lock) = lock() else {
            return Admitted::Untracked;
        };
        // SAFETY: lock held.
        unsafe {
            let e = entry(key, true);
            if e.is_null() {
                return Admitted::Untracked;
            }
            (*e).max = max;
            if (*e).active < max && (*e).waiting == 0 {
                (*e).active += 1;
                return Admitted::Slot { waited_ns: 0 };
            }
            (*e).waiting += 1;
            cv = &mut (*e).cv;
        }
    }
    queued.replace(Queued {
        key,
        holds_slot: false,
    });
    loop {
        let waited = start.elapsed();
        let timeout_ms: i64 = match max_wait_ms {
            None => -1,
            Some(w) => {
                let left = w as i128 - waited.as_millis() as i128;
                if left <= 0 {
                    drop(queued.take());
                    // SAFETY: this backend sleeps on no condition variable any more.
                    unsafe { pg_sys::ConditionVariableCancelSleep() };
                    return Admitted::TimedOut {
                        waited_ns: waited.as_nanos() as u64,
                    };
                }
                left.min(i64::from(i32::MAX) as i128) as i64
            }
        };
        // SAFETY: cv stays valid while this statement counts in `waiting` (the entry is kept).
        // An interrupt (cancel, terminate, statement timeout) raises an ERROR in here: it
        // unwinds through `queued` (which stops counting this statement) and the transaction's
        // abort cancels the sleep.
        unsafe {
            pg_sys::ConditionVariableTimedSleep(cv, timeout_ms as c_long, WAIT_EVENT_EXTENSION)
        };
        let Some(_lock) = lock() else {
            return Admitted::Untracked;
        };
        // SAFETY: lock held; the entry exists while this statement counts in `waiting`.
        unsafe {
            let e = entry(key, false);
            if !e.is_null() && (*e).active < max {
                (*e).active += 1;
                (*e).max = max;
                if let Some(q) = queued.as_mut() {
                    q.holds_slot = true;
                }
                drop(_lock);
                drop(queued.take());
                pg_sys::ConditionVariableCancelSleep();
                return Admitted::Slot {
                    waited_ns: start.elapsed().as_nanos() as u64,
                };
            }
        }
    }
}

/// Give back a slot of `key`, waking the longest waiter.
pub(super) fn release(key: &Key) {
    let Some(_lock) = lock() else { return };
    // SAFETY: lock held.
    unsafe {
        let e = entry(key, false);
        if e.is_null() {
            return;
        }
        (*e).active = (*e).active.saturating_sub(1);
        if (*e).waiting > 0 {
            pg_sys::ConditionVariableSignal(&mut (*e).cv);
        }
    }
}

/// (database, workspace, active, waiting) of every entry with a statement active or waiting.
pub(super) fn snapshot() -> Vec<(u32, [u8; 16], u32, u32)> {
    let Some(_lock) = lock() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // SAFETY: lock held; entries read in place.
    unsafe {
        crate::pg::shmem::each_entry::<Entry>(HASH.load(Relaxed), |e| {
            if e.active > 0 || e.waiting > 0 {
                out.push((e.key.dbid, e.key.ws, e.active, e.waiting));
            }
        });
    }
    out
}
