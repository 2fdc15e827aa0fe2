//! Data keys: one per (workspace, version), generated from PostgreSQL's strong random source,
//! stored only wrapped by the first master key in `tenancy.workspace_keys` (read and written
//! here as that table's owner, whoever calls), cached unwrapped per backend and dropped from
//! every backend's cache when the table's keys change (rotation, shredding: a relcache
//! invalidation of the table, sent at commit).

use std::collections::HashMap;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;
use zeroize::Zeroizing;

use super::{cipher, keyring};
use crate::error::{TenancyError, TenancyResult};
use crate::pg::local::BackendLocal;
use crate::pg::scope::as_user;
use crate::uuid_text::canonical;

#[derive(Default)]
struct Cache {
    /// The unwrapped keys by (workspace, version).
    keys: HashMap<([u8; 16], u32), Zeroizing<[u8; 32]>>,
    /// The version new values of a workspace are encrypted with.
    current: HashMap<[u8; 16], u32>,
}

static CACHE: BackendLocal<Option<Cache>> = BackendLocal::new(None);

/// Entries per backend before the cache starts over.
const CAPACITY: usize = 4096;

/// The key table: its oid, qualified name and owner, looked up once per backend (every
/// `encrypt` / `decrypt` needs it: `get_extension_oid` scans pg_extension) and forgotten with the
/// cached keys when the table's relcache entry is invalidated (dropped, recreated, new owner).
/// 55000 when the extension is not installed.
struct KeyTable {
    relid: pg_sys::Oid,
    name: String,
    owner: pg_sys::Oid,
}

static TABLE: BackendLocal<Option<std::rc::Rc<KeyTable>>> = BackendLocal::new(None);

fn table() -> TenancyResult<std::rc::Rc<KeyTable>> {
    if let Some(t) = TABLE.with(|t| t.borrow().clone()) {
        return Ok(t);
    }
    // SAFETY: catalog lookups by name and oid, no error raised for a missing object.
    let found = unsafe {
        // the extension is not relocatable: its schema is always `tenancy`
        let ext = pg_sys::get_extension_oid(c"tenancy".as_ptr(), true);
        let nsp = pg_sys::get_namespace_oid(c"tenancy".as_ptr(), true);
        if ext == pg_sys::InvalidOid || nsp == pg_sys::InvalidOid {
            None
        } else {
            let relid = pg_sys::get_relname_relid(c"workspace_keys".as_ptr(), nsp);
            (relid != pg_sys::InvalidOid).then_some(relid)
        }
    };
    let relid = found.ok_or_else(|| {
        TenancyError::new(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "extension \"tenancy\" is not installed in this database",
        )
        .hint("CREATE EXTENSION tenancy;")
    })?;
    let owner = crate::pg::catalog::rel_owner_cached(relid)
        .unwrap_or(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID));
    let t = std::rc::Rc::new(KeyTable {
        relid,
        name: crate::pg::catalog::qualified_name(relid),
        owner,
    });
    KEYS_RELID.store(u32::from(relid), std::sync::atomic::Ordering::Relaxed);
    TABLE.with(|c| *c.borrow_mut() = Some(t.clone()));
    Ok(t)
}

/// Drop this backend's cache when the key table changes (see [`invalidate`]): its part of
/// tenancy's one relcache callback (`crate::hooks`).
pub(crate) fn on_relcache(relid: pg_sys::Oid) {
    // SAFETY: called from tenancy's relcache callback with PostgreSQL's arguments.
    unsafe { relcache_callback(pg_sys::Datum::from(0), relid) }
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let relid = u32::from(relid);
    let ours = KEYS_RELID.load(std::sync::atomic::Ordering::Relaxed);
    if relid == 0 || relid == ours {
        CACHE.with(|c| *c.borrow_mut() = None);
        TABLE.with(|t| *t.borrow_mut() = None);
    }
}

static KEYS_RELID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Tell every backend (at commit) to drop its cached keys.
fn invalidate(relid: pg_sys::Oid) {
    // SAFETY: queues a relcache invalidation of an existing relation, sent at commit.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    CACHE.with(|c| *c.borrow_mut() = None);
}

fn cached_key(ws: [u8; 16], version: u32) -> Option<Zeroizing<[u8; 32]>> {
    CACHE.with(|c| {
        c.borrow()
            .as_ref()
            .and_then(|c| c.keys.get(&(ws, version)).cloned())
    })
}

fn remember(ws: [u8; 16], version: u32, key: &Zeroizing<[u8; 32]>, current: bool) {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let cache = c.get_or_insert_with(Cache::default);
        if cache.keys.len() >= CAPACITY {
            *cache = Cache::default();
        }
        cache.keys.insert((ws, version), key.clone());
        if current {
            cache.current.insert(ws, version);
        }
    });
}

/// The key table, after the pending invalidations (another backend's rotation or shredding)
/// were seen.
fn table_caught_up() -> TenancyResult<std::rc::Rc<KeyTable>> {
    // SAFETY: processes the invalidation queue, as any lock acquisition does.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    table()
}

struct Row {
    version: u32,
    wrapped: Option<Vec<u8>>,
    master: Option<String>,
    workspace: Option<pgrx::Uuid>,
}

/// The columns every query below returns, in [`Row`]'s order.
const COLUMNS: &str = "version, wrapped_key, master_key_id, workspace_id";

fn to_row(row: pgrx::spi::SpiHeapTupleData<'_>) -> Result<Row, pgrx::spi::Error> {
    Ok(Row {
        version: row.get::<i32>(1)?.unwrap_or(0) as u32,
        wrapped: row.get::<Vec<u8>>(2)?,
        master: row.get::<String>(3)?,
        workspace: row.get::<pgrx::Uuid>(4)?,
    })
}

/// Read rows, read-only: no transaction id is assigned (decryption works on a standby, inside
/// `BEGIN READ ONLY`, and costs a request no commit record; see `crate::pg::spi`).
fn select(sql: &str, args: &[DatumWithOid<'_>]) -> TenancyResult<Vec<Row>> {
    Ok(Spi::connect(|client| {
        client
            .select(sql, None, args)?
            .map(to_row)
            .collect::<Result<Vec<Row>, _>>()
    })?)
}

/// Write rows (and read what the statement returns).
fn rows(sql: &str, args: &[DatumWithOid<'_>]) -> TenancyResult<Vec<Row>> {
    Ok(Spi::connect_mut(|client| {
        client
            .update(sql, None, args)?
            .map(to_row)
            .collect::<Result<Vec<Row>, _>>()
    })?)
}

fn unwrap_row(ws: [u8; 16], row: &Row) -> TenancyResult<Zeroizing<[u8; 32]>> {
    let (Some(wrapped), Some(master)) = (&row.wrapped, &row.master) else {
        return Err(shredded(ws, Some(row.version)));
    };
    keyring::with_key(master, |m| cipher::unwrap(&m.key, ws, row.version, wrapped))?.ok_or_else(|| {
        TenancyError::new(
            Code::ERRCODE_DATA_CORRUPTED,
            format!(
                "the data key version {} of workspace {} does not unwrap with master key {master}",
                row.version,
                canonical(&ws)
            ),
        )
        .detail("Its row in tenancy.workspace_keys was altered, or the keyring's key of that id is another key.")
    })
}

fn shredded(ws: [u8; 16], version: Option<u32>) -> TenancyError {
    TenancyError::new(
        Code::ERRCODE_UNDEFINED_OBJECT,
        match version {
            Some(v) => format!(
                "the data key version {v} of workspace {} was shredded",
                canonical(&ws)
            ),
            None => format!(
                "the data keys of workspace {} were shredded",
                canonical(&ws)
            ),
        },
    )
    .detail(
        "tenancy.shred_workspace_key() destroyed it: what it encrypted can no longer be decrypted.",
    )
    .hint("tenancy.rotate_workspace_key(workspace) creates a new key for new values.")
}

/// The version and key new values of `ws` are encrypted with; the first key of a workspace is
/// created here (concurrent first uses agree on one: the primary key decides).
pub(crate) fn current(ws: [u8; 16]) -> TenancyResult<(u32, Zeroizing<[u8; 32]>)> {
    let t = table_caught_up()?;
    if let Some(v) = CACHE.with(|c| {
        c.borrow()
            .as_ref()
            .and_then(|c| c.current.get(&ws).copied())
    }) {
        if let Some(k) = cached_key(ws, v) {
            return Ok((v, k));
        }
    }
    let (table, owner) = (t.name.as_str(), t.owner);
    let uuid = pgrx::Uuid::from_bytes(ws);
    let row = as_user(owner, || -> TenancyResult<Option<Row>> {
        let query = format!(
            "SELECT {COLUMNS} FROM {table} WHERE workspace_id = $1 AND retired_at IS NULL ORDER BY version DESC LIMIT 1"
        );
        if let Some(row) = select(&query, &[DatumWithOid::from(uuid)])?
            .into_iter()
            .next()
        {
            return Ok(Some(row));
        }
        let any: Vec<Row> = select(
            &format!("SELECT {COLUMNS} FROM {table} WHERE workspace_id = $1 LIMIT 1"),
            &[DatumWithOid::from(uuid)],
        )?;
        if !any.is_empty() {
            return Err(shredded(ws, None)); // every version retired and shredded
        }
        if let Some(row) = create(table, ws, 1)? {
            return Ok(Some(row));
        }
        // a concurrent first use created it (READ COMMITTED: this statement sees it now)
        Ok(select(&query, &[DatumWithOid::from(uuid)])?
            .into_iter()
            .next())
    })?;
    let row = row.ok_or_else(|| shredded(ws, None))?;
    let key = unwrap_row(ws, &row)?;
    remember(ws, row.version, &key, true);
    Ok((row.version, key))
}

/// Insert version `version` of `ws`: its row, or None when it exists (a concurrent creator won).
fn create(table: &str, ws: [u8; 16], version: u32) -> TenancyResult<Option<Row>> {
    let key = cipher::random::<32>()?;
    let (master, master_key) = keyring::active()?;
    let wrapped = cipher::wrap(&master_key, ws, version, &key)?;
    Ok(rows(
        &format!(
            "INSERT INTO {table} (workspace_id, version, wrapped_key, master_key_id) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
        ),
        &[
            DatumWithOid::from(pgrx::Uuid::from_bytes(ws)),
            DatumWithOid::from(version as i32),
            DatumWithOid::from(wrapped.as_slice()),
            DatumWithOid::from(master.as_str()),
        ],
    )?
    .into_iter()
    .next())
}

/// The key of (`ws`, `version`), for decryption: 42704 when there is none or it was shredded.
pub(crate) fn version(ws: [u8; 16], version: u32) -> TenancyResult<Zeroizing<[u8; 32]>> {
    let t = table_caught_up()?;
    if let Some(k) = cached_key(ws, version) {
        return Ok(k);
    }
    let (table, owner) = (t.name.as_str(), t.owner);
    let found = as_user(owner, || {
        select(
            &format!("SELECT {COLUMNS} FROM {table} WHERE workspace_id = $1 AND version = $2"),
            &[
                DatumWithOid::from(pgrx::Uuid::from_bytes(ws)),
                DatumWithOid::from(version as i32),
            ],
        )
    })?;
    let Some(row) = found.into_iter().next() else {
        return Err(TenancyError::new(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("workspace {} has no data key version {version}", canonical(&ws)),
        )
        .detail("The ciphertext names a key version that tenancy.workspace_keys does not hold for its workspace.")
        .hint("It was encrypted in another database, or its key's row was deleted."));
    };
    let key = unwrap_row(ws, &row)?;
    remember(ws, version, &key, false);
    Ok(key)
}

/// Retire the current key of `ws` and create the next version: the new version.
pub(crate) fn rotate_workspace(ws: [u8; 16]) -> TenancyResult<u32> {
    let t = table()?;
    let (relid, table, owner) = (t.relid, t.name.as_str(), t.owner);
    let uuid = pgrx::Uuid::from_bytes(ws);
    let next = as_user(owner, || -> TenancyResult<u32> {
        // one rotation at a time per workspace: the row lock of the current version
        let _ = rows(
            &format!("SELECT {COLUMNS} FROM {table} WHERE workspace_id = $1 AND retired_at IS NULL FOR UPDATE"),
            &[DatumWithOid::from(uuid)],
        )?;
        rows(
            &format!("UPDATE {table} SET retired_at = now() WHERE workspace_id = $1 AND retired_at IS NULL RETURNING {COLUMNS}"),
            &[DatumWithOid::from(uuid)],
        )?;
        let max = rows(
            &format!("SELECT coalesce(max(version), 0), NULL::bytea, NULL::text, NULL::uuid FROM {table} WHERE workspace_id = $1"),
            &[DatumWithOid::from(uuid)],
        )?;
        let next = max.first().map_or(0, |r| r.version) + 1;
        create(table, ws, next)?;
        Ok(next)
    })?;
    invalidate(relid);
    Ok(next)
}

/// Destroy every key of `ws` (the wrapped keys are overwritten with NULL): the number of
/// versions shredded now.
pub(crate) fn shred(ws: [u8; 16]) -> TenancyResult<i32> {
    let t = table()?;
    let (relid, table, owner) = (t.relid, t.name.as_str(), t.owner);
    let n = as_user(owner, || {
        rows(
            &format!(
                "UPDATE {table} SET wrapped_key = NULL, master_key_id = NULL, shredded_at = now(),
                        retired_at = coalesce(retired_at, now())
                  WHERE workspace_id = $1 AND shredded_at IS NULL RETURNING {COLUMNS}"
            ),
            &[DatumWithOid::from(pgrx::Uuid::from_bytes(ws))],
        )
    })?
    .len() as i32;
    invalidate(relid);
    Ok(n)
}

/// Re-wrap every data key not wrapped by the first master key: the number re-wrapped. The
/// keyring is read again first (the new key was just put in front).
pub(crate) fn rotate_master() -> TenancyResult<i32> {
    let t = table()?;
    let (relid, table, owner) = (t.relid, t.name.as_str(), t.owner);
    let (active, active_key) = keyring::active()?;
    let n = as_user(owner, || -> TenancyResult<i32> {
        let mut n = 0;
        let old = rows(
            &format!(
                "SELECT {COLUMNS} FROM {table}
                  WHERE wrapped_key IS NOT NULL AND master_key_id <> $1 FOR UPDATE"
            ),
            &[DatumWithOid::from(active.as_str())],
        )?;
        for row in old {
            let ws = *row.workspace.expect("NOT NULL").as_bytes();
            let key = unwrap_row(ws, &row)?;
            let wrapped = cipher::wrap(&active_key, ws, row.version, &key)?;
            rows(
                &format!(
                    "UPDATE {table} SET wrapped_key = $3, master_key_id = $4
                      WHERE workspace_id = $1 AND version = $2 RETURNING {COLUMNS}"
                ),
                &[
                    DatumWithOid::from(pgrx::Uuid::from_bytes(ws)),
                    DatumWithOid::from(row.version as i32),
                    DatumWithOid::from(wrapped.as_slice()),
                    DatumWithOid::from(active.as_str()),
                ],
            )?;
            n += 1;
        }
        Ok(n)
    })?;
    invalidate(relid);
    Ok(n)
}
