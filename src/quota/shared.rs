//! Quota counters in shared memory: the path the quota trigger takes when `tenancy` is in
//! `shared_preload_libraries`.
//!
//! # Why
//! A counter *row* updated by the inserting transaction is exact, but its row lock is held
//! until commit: every inserter of one workspace waits for the previous one to commit (measured:
//! single-row INSERT throughput 0.74 of a table without trigger at 8 clients). Here a workspace's
//! counter is a shared-memory integer changed with a compare-and-swap, and the transaction keeps
//! a note of what it changed so that commit and abort settle it: no lock is held past the
//! statement, and no table is written.
//!
//! # What an entry means
//! One entry per (database, table, workspace). `used` = rows counted and committed + rows
//! *reserved* by transactions in progress (their inserts, moves in, rows that start matching
//! `counted_when`). Removals (deletes, moves out, rows that stop matching) are subtracted only
//! when their transaction commits. So `used` is never below what could be committed, and a
//! check `used + new rows <= limit` made atomically (compare-and-swap) never lets a workspace
//! overshoot, at any isolation level and without serialization failures. A transaction's own
//! uncommitted removals do offset its own later inserts (delete a template, insert its
//! replacement at the limit): an insert can only survive if the removal before it (at the same
//! or an outer savepoint level) does.
//!
//! # Settling (backend-local notes, [`Local`])
//! Each change is an [`Op`] tagged with the transaction nesting level it was made at:
//! `Reserve` (added to `used` now; undone at abort), `Release` (subtracted at commit), `Offset`
//! (an insert covered by the transaction's own pending releases). A savepoint rollback undoes the
//! ops of its level and deeper; a savepoint release moves them one level up; commit subtracts
//! releases minus offsets; abort undoes reserves. `PREPARE TRANSACTION` settles them so that
//! the counts can only be too high until `COMMIT PREPARED` or `ROLLBACK PREPARED` ([`prepared`]).
//!
//! # Lifetime of an entry, and its first count
//! `in_flight` counts the transactions holding notes on an entry; only entries with
//! `in_flight = 0` are ever removed (evicted when the table is full, least recently used first).
//! Hence, when an entry is *absent*, no transaction in progress has changed its count through
//! this path, and it can be initialised from the table itself: under a heavyweight lock per
//! (database, table, workspace) (an advisory-type lock, so first users of one workspace queue
//! instead of counting twice), count the rows committed by *other* transactions with a fresh
//! snapshot whose command id is 0 (so this transaction's own rows are not seen: its statements
//! add their own deltas). A writer whose rows the snapshot misses has not run its trigger yet and
//! will add its delta after the entry is published. Entries are never saved: after a restart or
//! a crash they are recounted on first use, so they cannot be lost or go stale.
//!
//! # Tables whose rows change wholesale
//! TRUNCATE, `enforce_quota` (recount, maybe a new `counted_when`), `release_quota` and DROP
//! all hold a lock that excludes every other writer of the table until their transaction ends.
//! They call [`forget_table`]: until the end of the transaction this backend checks limits on that
//! table by counting the rows it sees (nobody else can write them), and at the end (commit or
//! abort) every entry of the table is removed, to be recounted on next use. A savepoint rollback
//! past the call ends that mode (the lock went with it).
//!
//! # Locking
//! One LWLock guards the hash table's membership: SHARED to look an entry up and change its
//! atomics, EXCLUSIVE to insert or remove entries. Never held across anything that can wait.

use std::ffi::{c_long, c_void};
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU64, Ordering::Relaxed};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::error::TenancyError;
use crate::pg::ffi as raw;
use crate::pg::local::BackendLocal;
use crate::pg::shmem::{each_entry, LwLockGuard};

mod membership;
mod prepared;
mod txn;

use membership::*;
pub(crate) use prepared::on_utility;
pub(crate) use txn::forget_table;
use txn::*;

const TRANCHE: &std::ffi::CStr = c"tenancy quota";
/// `locktag_field4` of the per-(table, workspace) initialisation lock (user advisory locks
/// use 1 and 2). Shows in pg_locks as an advisory lock with objsubid 29793.
const INIT_LOCK_FIELD4: u16 = 0x7461;

static MAX_ENTRIES: GucSetting<i32> = GucSetting::<i32>::new(20_000);

#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Key {
    dbid: pg_sys::Oid,
    relid: pg_sys::Oid,
    ws: [u8; 16],
}

/// One shared entry. `key` must come first (dynahash layout).
#[repr(C)]
struct Entry {
    key: Key,
    /// committed counted rows + rows reserved by transactions in progress
    used: AtomicI64,
    /// transactions holding notes on this entry
    in_flight: AtomicI64,
    /// last change (us since the PostgreSQL epoch), for eviction
    last_used: AtomicI64,
}

#[repr(C)]
struct Shared {
    lock: *mut pg_sys::LWLock,
    max: i64,
    evictions: AtomicU64,
}

static SHARED: AtomicPtr<Shared> = AtomicPtr::new(std::ptr::null_mut());
static HASH: AtomicPtr<pg_sys::HTAB> = AtomicPtr::new(std::ptr::null_mut());

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Reserve,
    Release,
    Offset,
}

#[derive(Clone, Copy, Debug)]
struct Op {
    key: Key,
    level: i32,
    kind: Kind,
    n: i64,
}

#[derive(Default)]
struct Local {
    ops: Vec<Op>,
    /// entries whose in_flight this transaction incremented, with the level of the first touch:
    /// a savepoint rollback lets go of those it touched first (its ops are undone, and the table
    /// lock that kept other transactions' TRUNCATE or recount away goes with it)
    touched: Vec<(Key, i32)>,
    /// tables in "counted by this backend" mode (see forget_table), with the level of the call
    exclusive: Vec<(pg_sys::Oid, i32)>,
    /// levels at which this transaction inserted tenancy.quota_shared_mark rows
    marks: Vec<i32>,
}

static LOCAL: BackendLocal<Local> = BackendLocal::new(Local {
    ops: Vec::new(),
    touched: Vec::new(),
    exclusive: Vec::new(),
    marks: Vec::new(),
});

/// Set when a transaction that inserted a quota_shared_mark row rolled it back: the quota caches
/// (which remember the table as marked) must be dropped. Read by the quota trigger.
pub(crate) static MARK_LOST: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// This (sub)transaction inserted a tenancy.quota_shared_mark row.
pub(crate) fn mark_inserted() {
    let lvl = level();
    LOCAL.with(|l| l.borrow_mut().marks.push(lvl));
}

/// `tenancy.max_quota_entries` (preload only: a server-start setting).
pub(crate) fn define_settings() {
    GucRegistry::define_int_guc(
        c"tenancy.max_quota_entries",
        c"Number of (database, table, workspace) quota counters kept in shared memory.",
        c"Server start only. 64 bytes each; idle counters are evicted (and recounted on next use) when full.",
        &MAX_ENTRIES,
        100,
        10_000_000,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

/// The reservations' transaction callbacks (preload only; the shared memory is asked for and
/// attached by `crate::hooks` through [`shmem_request`] and [`shmem_startup`]).
pub(crate) fn install_hooks() {
    // SAFETY: registering 'static callbacks from _PG_init in the postmaster.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}

fn shared_size() -> usize {
    // SAFETY: pure size computation.
    let hash = unsafe {
        pg_sys::hash_estimate_size(MAX_ENTRIES.get() as c_long, std::mem::size_of::<Entry>())
    };
    hash + std::mem::size_of::<Shared>()
}

/// From the shmem_request_hook (`crate::hooks`, postmaster): the counters' space and tranche.
/// # Safety
/// Only from a shmem_request_hook.
pub(crate) unsafe fn shmem_request() {
    // SAFETY: the caller is the shmem_request_hook.
    unsafe { crate::pg::shmem::request(shared_size(), TRANCHE) };
}

/// From the shmem_startup_hook (`crate::hooks`): create or attach the counters' table.
/// # Safety
/// Only from a shmem_startup_hook, after [`shmem_request`] ran in the postmaster.
pub(crate) unsafe fn shmem_startup() {
    // SAFETY: the ShmemInitStruct / ShmemInitHash protocol under AddinShmemInitLock.
    unsafe {
        let (shared, hash, ()) = crate::pg::shmem::startup::<Shared, Key, Entry, ()>(
            c"tenancy quota",
            TRANCHE,
            c"tenancy quota hash",
            MAX_ENTRIES.get() as c_long,
            |lock| Shared {
                lock,
                max: MAX_ENTRIES.get() as i64,
                evictions: AtomicU64::new(0),
            },
            || (),
        );
        SHARED.store(shared, Relaxed);
        HASH.store(hash, Relaxed);
    }
}

fn shared() -> Option<&'static Shared> {
    // SAFETY: set once at shmem startup; shared memory lives as long as the process.
    unsafe { SHARED.load(Relaxed).as_ref() }
}

/// Is the shared-memory path available (tenancy preloaded)?
pub(crate) fn enabled() -> bool {
    !SHARED.load(Relaxed).is_null()
}

pub(crate) fn key(relid: pg_sys::Oid, ws: [u8; 16]) -> Key {
    // SAFETY: reading the backend's database id.
    Key {
        dbid: unsafe { pg_sys::MyDatabaseId },
        relid,
        ws,
    }
}

fn level() -> i32 {
    // SAFETY: plain read of the transaction state.
    unsafe { pg_sys::GetCurrentTransactionNestLevel() }
}

/// Run `f` on the entry of `key` under the SHARED lock; None if absent.
fn with_entry<R>(key: &Key, f: impl FnOnce(&Entry) -> R) -> Option<R> {
    let shared = shared()?;
    let hash = HASH.load(Relaxed);
    // SAFETY: the entry pointer is used only while the lock keeping it alive is held.
    unsafe {
        let _lock = LwLockGuard::shared(shared.lock);
        let e = raw::hash_search(
            hash,
            (key as *const Key).cast(),
            pg_sys::HASHACTION::HASH_FIND,
            std::ptr::null_mut(),
        )
        .cast::<Entry>();
        e.as_ref().map(f)
    }
}

/// Is `relid` counted by this backend for the rest of the transaction (see forget_table)?
pub(crate) fn is_exclusive(relid: pg_sys::Oid) -> bool {
    LOCAL.with(|l| l.borrow().exclusive.iter().any(|(r, _)| *r == relid))
}

/// The outcome of [`apply`] when a limit would be exceeded: usage before and after.
pub(crate) struct Over {
    pub(crate) used: i64,
    pub(crate) would_be: i64,
}

/// Apply a statement's net change `n` of counted rows of one (table, workspace) against
/// `limit`. `count` counts the rows committed by other transactions (called only when the
/// entry must be initialised, under the initialisation lock).
pub(crate) fn apply(
    key: Key,
    n: i64,
    limit: Option<i64>,
    count: &mut dyn FnMut() -> Result<i64, TenancyError>,
) -> Result<Result<(), Over>, TenancyError> {
    loop {
        if let Some(outcome) = try_apply(&key, n, limit) {
            return Ok(outcome);
        }
        initialise(&key, count)?;
    }
}

fn try_apply(key: &Key, n: i64, limit: Option<i64>) -> Option<Result<(), Over>> {
    let lvl = level();
    // SAFETY: plain clock read (vDSO).
    let now = unsafe { raw::now() };
    LOCAL.with(|l| {
        let mut local = l.borrow_mut();
        let credit: i64 = local
            .ops
            .iter()
            .filter(|o| o.key == *key)
            .map(|o| match o.kind {
                Kind::Release => o.n,
                Kind::Offset => -o.n,
                Kind::Reserve => 0,
            })
            .sum();
        let first_touch = !local.touched.iter().any(|(k, _)| k == key);
        let outcome = with_entry(key, |e| {
            if first_touch {
                e.in_flight.fetch_add(1, Relaxed);
            }
            e.last_used.store(now, Relaxed);
            if n <= 0 {
                return (Ok(()), 0, 0);
            }
            let offset = credit.clamp(0, n);
            let reserve = n - offset;
            if reserve > 0 {
                let mut cur = e.used.load(Relaxed);
                loop {
                    let next = cur + reserve;
                    if let Some(limit) = limit {
                        if next > limit {
                            return (
                                Err(Over {
                                    used: cur,
                                    would_be: next,
                                }),
                                0,
                                0,
                            );
                        }
                    }
                    match e.used.compare_exchange_weak(cur, next, Relaxed, Relaxed) {
                        Ok(_) => break,
                        Err(actual) => cur = actual,
                    }
                }
            }
            (Ok(()), reserve, offset)
        })?;
        if first_touch {
            local.touched.push((*key, lvl));
        }
        let (result, reserve, offset) = outcome;
        if result.is_ok() {
            for (kind, amount) in [
                (Kind::Release, -n),
                (Kind::Reserve, reserve),
                (Kind::Offset, offset),
            ] {
                if amount > 0 {
                    local.note(Op {
                        key: *key,
                        level: lvl,
                        kind,
                        n: amount,
                    });
                }
            }
        }
        Some(result)
    })
}

impl Local {
    /// Add `op` to the note of the same key, level and kind, if any: a transaction of many
    /// statements keeps one note per (key, level, kind), so the scans above stay short.
    fn note(&mut self, op: Op) {
        match self
            .ops
            .iter_mut()
            .find(|o| o.key == op.key && o.level == op.level && o.kind == op.kind)
        {
            Some(o) => o.n += op.n,
            None => self.ops.push(op),
        }
    }
}

/// `tenancy._quota_entries()`: the shared-memory counters of this database (empty when tenancy
/// is not preloaded): table, workspace, used (committed + reserved by transactions in
/// progress), transactions in progress holding the entry.
#[pg_extern(volatile, parallel_restricted, name = "_quota_entries")]
fn quota_entries() -> TableIterator<
    'static,
    (
        name!(tbl, pg_sys::Oid),
        name!(workspace_id, pgrx::Uuid),
        name!(used, i64),
        name!(in_flight, i64),
    ),
> {
    let mut rows = Vec::new();
    if let Some(shared) = shared() {
        let hash = HASH.load(Relaxed);
        // SAFETY: copy under the SHARED lock, build rows after releasing it.
        unsafe {
            let db = pg_sys::MyDatabaseId;
            let _lock = LwLockGuard::shared(shared.lock);
            each_entry(hash, |e: &Entry| {
                if e.key.dbid == db {
                    rows.push((
                        e.key.relid,
                        e.key.ws,
                        e.used.load(Relaxed),
                        e.in_flight.load(Relaxed),
                    ));
                }
            });
        }
    }
    TableIterator::new(
        rows.into_iter()
            .map(|(r, ws, u, f)| (r, pgrx::Uuid::from_bytes(ws), u, f)),
    )
}

/// `tenancy._quota_shared()`: true when quota counters live in shared memory (preloaded).
#[pg_extern(stable, parallel_safe, name = "_quota_shared")]
fn quota_shared() -> bool {
    enabled()
}

/// `tenancy._quota_forget(tbl)`: called by enforce_quota / release_quota / the drop event
/// trigger after they lock the table against writers.
#[pg_extern(volatile, parallel_unsafe, name = "_quota_forget")]
fn quota_forget(tbl: pg_sys::Oid) {
    forget_table(tbl);
}
