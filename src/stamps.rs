//! Change stamps (issue 17): per (database, table, workspace), a number that changes when a
//! transaction that inserted, updated, deleted or truncated rows of that workspace in that
//! table commits, and only then, so that a cache keyed by stamp can tell whether to reload.
//!
//! # How a stamp is made
//! - A BEFORE ... FOR EACH ROW trigger (`tenancy._change_trigger()`, installed by
//!   `track_changes()`; no transition tables, no after-trigger queue) notes the workspace of each
//!   row written (both sides of an UPDATE that moves a row) in a backend-local pending set
//!   ([`pending`]), per subtransaction: a rolled-back savepoint drops its part. TRUNCATE (an
//!   AFTER statement trigger) notes the whole table. A row noted but then not written (another
//!   BEFORE trigger skipped it, `ON CONFLICT DO NOTHING`) moves the stamp once more than needed:
//!   a reload, never old data.
//! - At commit, *after* the transaction is visible to others (`XACT_EVENT_COMMIT` runs after
//!   `ProcArrayEndTransaction`), one tick of a shared clock is taken and stored into every noted
//!   entry. So a stamp a reader sees is never ahead of the data behind it, and a later commit
//!   always gets a larger value (the value is taken at bump time, in bump order; the commit LSN
//!   would not do: two commits can become visible in the other order).
//! - A key with no entry (never changed since start, or evicted) reads the *floor*: the clock's
//!   value at start, raised to the stamp of every entry evicted. A table-wide entry (TRUNCATE)
//!   counts for every workspace of the table. A stamp is `max(floor, table entry, entry)`.
//! - Across restarts and crashes stamps never repeat or go backwards: the clock starts at a
//!   value reserved ahead in the file `tenancy_stamps.epoch` of the data directory (written and
//!   fsynced before any stamp up to it is handed out, as sequences log values ahead), so every
//!   stamp handed out before a crash is below the floor after it; and at least at the wall clock
//!   in microseconds, which a promoted standby (its reserve file as old as its base backup) needs.
//! - `PREPARE TRANSACTION` of a transaction with noted changes is refused (0A000): its commit
//!   would happen in another session, which has nothing to bump.
//!
//! # Reading protocol (docs/caching.md)
//! Read the stamp in one statement, then the data in a later one (a later snapshot): data read
//! that way is at least as new as the stamp. Cache (stamp, data); a cache entry is valid while
//! the stamp is unchanged.

use std::ffi::{c_long, CStr};
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU64, Ordering::Relaxed};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::error::TenancyError;
use crate::pg::shmem::LwLockGuard;

mod cache;
mod pending;
mod sql;

pub(crate) use cache::cache_stamp;

pub(crate) use pending::{on_relcache, register_xact_callbacks};

const TRANCHE: &CStr = c"tenancy stamps";
/// The reserve file, in the data directory.
const EPOCH_FILE: &str = "tenancy_stamps.epoch";
/// Values reserved per write of the epoch file, and how close the clock may get to the reserve
/// before a committing transaction (at PRE_COMMIT, where an error can still abort it) writes the
/// next one.
const RESERVE: u64 = 1 << 20;
const MARGIN: u64 = 1 << 19;

static MAX_STAMPS: GucSetting<i32> = GucSetting::<i32>::new(100_000);
/// `tenancy.change_channel`: where a committing transaction sends one NOTIFY per (table,
/// workspace) it changed; empty: none.
static CHANNEL: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);

/// Hash key: `kind` [`WORKSPACE`] (per workspace), [`TABLE`] (TRUNCATE: every workspace;
/// `ws` zero) or [`ANY`] (any change of the table; `ws` zero). HASH_BLOBS hashes all 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) struct Key {
    dbid: u32,
    relid: u32,
    kind: u32,
    _pad: u32,
    ws: [u8; 16],
}

const WORKSPACE: u32 = 0;
const TABLE: u32 = 1;
/// Bumped at every commit that changed the table at all (not noted by the trigger: added at
/// bump time), for caches whose content depends on rows of any workspace (the registry's
/// children of a parent, `crate::context::cache`).
const ANY: u32 = 2;

impl Key {
    fn new(relid: pg_sys::Oid, ws: Option<[u8; 16]>) -> Key {
        // SAFETY: reading the backend's database id.
        let dbid = u32::from(unsafe { pg_sys::MyDatabaseId });
        Key {
            dbid,
            relid: u32::from(relid),
            kind: if ws.is_some() { WORKSPACE } else { TABLE },
            _pad: 0,
            ws: ws.unwrap_or_default(),
        }
    }

    /// The any-change key of the same table.
    fn any(self) -> Key {
        Key {
            kind: ANY,
            ws: [0; 16],
            ..self
        }
    }
}

#[repr(C)]
struct Entry {
    key: Key,
    stamp: AtomicU64,
}

#[repr(C)]
struct Shared {
    lock: *mut pg_sys::LWLock,
    /// The last stamp handed out.
    clock: AtomicU64,
    /// What a key without an entry reads.
    floor: AtomicU64,
    /// Stamps up to this value are covered by the epoch file.
    reserved: AtomicU64,
    max: i64,
    /// Entries in the hash (changed under the lock EXCLUSIVE).
    entries: AtomicI64,
}

static SHARED: AtomicPtr<Shared> = AtomicPtr::new(std::ptr::null_mut());
static HASH: AtomicPtr<pg_sys::HTAB> = AtomicPtr::new(std::ptr::null_mut());

fn shared() -> Option<&'static Shared> {
    // SAFETY: set once at shmem startup; shared memory lives as long as the process.
    unsafe { SHARED.load(Relaxed).as_ref() }
}

/// 55000 unless the library was preloaded.
fn require_preloaded() -> Result<&'static Shared, TenancyError> {
    shared().ok_or_else(|| {
        TenancyError::new(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "tenancy must be loaded via shared_preload_libraries to use change stamps",
        )
        .detail("Change stamps live in shared memory, which is only reserved at server start.")
        .hint(
            "Add 'tenancy' to shared_preload_libraries in postgresql.conf and restart the server.",
        )
    })
}

/// `tenancy.change_channel` (any process that loads the library).
pub(crate) fn define_channel_setting() {
    // SAFETY: called from _PG_init; the hook has the signature PostgreSQL expects.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"tenancy.change_channel",
            c"Channel of the NOTIFY a committing transaction sends per (table, workspace) it changed in tables with change stamps; empty: none.",
            c"Superuser-only (ALTER DATABASE ... SET, ALTER SYSTEM): a session cannot silence it. Payload: {\"table\": \"schema.table\", \"workspace\": \"uuid\" or null for TRUNCATE}.",
            &CHANNEL,
            GucContext::Suset,
            GucFlags::default(),
            Some(pending::check_channel),
            None,
            None,
        );
    }
}

pub(crate) fn define_settings() {
    GucRegistry::define_int_guc(
        c"tenancy.max_change_stamps",
        c"Number of (database, table, workspace) change stamps kept in shared memory.",
        c"Server start only. About 70 bytes each. When 95% full, the least recently changed 5% are dropped: their keys then read a floor at least as high as their stamp (a cache reloads once, never serves old data).",
        &MAX_STAMPS,
        1000,
        10_000_000,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

fn shared_size() -> usize {
    // SAFETY: pure size computation.
    unsafe {
        pg_sys::hash_estimate_size(MAX_STAMPS.get() as c_long, std::mem::size_of::<Entry>())
            + std::mem::size_of::<Shared>()
    }
}

/// # Safety
/// Only from a shmem_request_hook.
pub(crate) unsafe fn shmem_request() {
    // SAFETY: the caller is the shmem_request_hook.
    unsafe { crate::pg::shmem::request(shared_size(), TRANCHE) };
}

/// # Safety
/// Only from a shmem_startup_hook, after [`shmem_request`] ran in the postmaster.
pub(crate) unsafe fn shmem_startup() {
    // SAFETY: the ShmemInitStruct / ShmemInitHash protocol under AddinShmemInitLock.
    unsafe {
        let (shared, hash, ()) = crate::pg::shmem::startup::<Shared, Key, Entry, _>(
            c"tenancy stamps",
            TRANCHE,
            c"tenancy stamps hash",
            MAX_STAMPS.get() as c_long,
            |lock| {
                // the postmaster (first start, or reinitialisation after a crash): start above
                // every stamp the previous run may have handed out (the reserve file), and at
                // least at the wall clock in microseconds: the clock gains one per committing
                // transaction, far slower than time, so a promoted standby (whose reserve file
                // is as old as its base backup) also starts above every stamp its old primary
                // handed out, as long as the two servers' clocks roughly agree
                let now_us = u64::try_from(pg_sys::GetCurrentTimestamp()).unwrap_or(0);
                let start = read_epoch().max(now_us).max(1);
                let reserved = start + RESERVE;
                if let Err(e) = write_epoch(reserved) {
                    pgrx::warning!("tenancy: could not write {EPOCH_FILE}: {e}");
                }
                Shared {
                    lock,
                    clock: AtomicU64::new(start),
                    floor: AtomicU64::new(start),
                    reserved: AtomicU64::new(reserved),
                    max: MAX_STAMPS.get() as i64,
                    entries: AtomicI64::new(0),
                }
            },
            || (),
        );
        SHARED.store(shared, Relaxed);
        HASH.store(hash, Relaxed);
    }
}

fn read_epoch() -> u64 {
    std::fs::read_to_string(EPOCH_FILE)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Write `value` durably (temporary file, fsync, rename, fsync of the directory).
fn write_epoch(value: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = format!("{EPOCH_FILE}.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{value}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, EPOCH_FILE)?;
    std::fs::File::open(".")?.sync_all()
}

/// Before commit (an error still aborts the transaction): make sure the epoch file covers the
/// stamp this commit will take, and make room in the table when it is nearly full.
fn prepare_commit(shared: &Shared) -> Result<(), TenancyError> {
    if shared.clock.load(Relaxed) + MARGIN > shared.reserved.load(Relaxed) {
        // SAFETY: the lock of our shared memory.
        let _lock = unsafe { LwLockGuard::exclusive(shared.lock) };
        let clock = shared.clock.load(Relaxed);
        if clock + MARGIN > shared.reserved.load(Relaxed) {
            let reserved = clock + RESERVE;
            write_epoch(reserved).map_err(|e| {
                TenancyError::new(
                    Code::ERRCODE_IO_ERROR,
                    format!("could not write the change stamp epoch file {EPOCH_FILE}: {e}"),
                )
                .hint("Check the data directory's free space and permissions.")
            })?;
            shared.reserved.store(reserved, Relaxed);
        }
    }
    if shared.entries.load(Relaxed) >= shared.max - shared.max / 20 {
        make_room(shared);
    }
    Ok(())
}

/// Drop the least recently changed 5% of the entries, raising the floor to each one's stamp
/// before it goes (under the lock EXCLUSIVE: a key read after its removal never goes back).
fn make_room(shared: &Shared) {
    let hash = HASH.load(Relaxed);
    // SAFETY: the table's lock guards it; entries are used only inside the callbacks.
    unsafe {
        crate::pg::shmem::evict_oldest(
            shared.lock,
            hash,
            |e: &Entry| Some((e.stamp.load(Relaxed), e.key)),
            |e: &Entry, _| {
                // bumped since the scan or not, it goes: the floor takes its stamp now
                shared.floor.fetch_max(e.stamp.load(Relaxed), Relaxed);
                true
            },
        );
        shared
            .entries
            .store(pg_sys::hash_get_num_entries(hash), Relaxed);
    }
}

/// The entry of `key`. Caller holds the lock.
unsafe fn find<'a>(hash: *mut pg_sys::HTAB, key: &Key) -> Option<&'a Entry> {
    // SAFETY: see the caller's obligations.
    unsafe { crate::pg::shmem::find(hash, key) }
}

/// At commit, after the transaction became visible: one tick of the clock for every key the
/// transaction changed. Never raises (a full table raises the floor instead of adding entries).
fn bump(shared: &Shared, mut keys: Vec<Key>) {
    if keys.is_empty() {
        return;
    }
    // and the any-change key of every table changed (keys are sorted by database and table)
    let noted = keys.len();
    for i in 0..noted {
        let any = keys[i].any();
        if keys.last() != Some(&any) {
            keys.push(any);
        }
    }
    let hash = HASH.load(Relaxed);
    let stamp = shared.clock.fetch_add(1, Relaxed) + 1;
    // SAFETY: entries used under the lock; HASH_ENTER_NULL returns NULL instead of raising.
    unsafe {
        let mut missing = Vec::new();
        {
            let _lock = LwLockGuard::shared(shared.lock);
            for key in &keys {
                match find(hash, key) {
                    Some(e) => {
                        e.stamp.fetch_max(stamp, Relaxed);
                    }
                    None => missing.push(*key),
                }
            }
        }
        if missing.is_empty() {
            return;
        }
        let _lock = LwLockGuard::exclusive(shared.lock);
        for key in &missing {
            let entered = if shared.entries.load(Relaxed) < shared.max {
                crate::pg::shmem::enter::<Key, Entry>(hash, key)
            } else {
                None
            };
            match entered {
                Some((e, found)) => {
                    if found {
                        (*e).stamp.fetch_max(stamp, Relaxed);
                    } else {
                        (&raw mut (*e).stamp).write(AtomicU64::new(stamp));
                        shared.entries.fetch_add(1, Relaxed);
                    }
                }
                // no room: every key without an entry moves on (a reload, never old data)
                None => {
                    shared.floor.fetch_max(stamp, Relaxed);
                }
            }
        }
    }
}

/// The stamp of (this database, `relid`, `ws`).
fn stamp_of(shared: &Shared, relid: pg_sys::Oid, ws: [u8; 16]) -> u64 {
    let hash = HASH.load(Relaxed);
    // SAFETY: entries read under the lock SHARED.
    unsafe {
        let _lock = LwLockGuard::shared(shared.lock);
        let floor = shared.floor.load(Relaxed);
        let table = find(hash, &Key::new(relid, None)).map_or(0, |e| e.stamp.load(Relaxed));
        let own = find(hash, &Key::new(relid, Some(ws))).map_or(0, |e| e.stamp.load(Relaxed));
        floor.max(table).max(own)
    }
}

pgrx::extension_sql_file!(
    "../sql/stamps.sql",
    name = "stamps_sql",
    requires = ["stats_sql", sql::change_stamp]
);
