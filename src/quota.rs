//! Per-workspace row quotas: the trigger that keeps counters exact, and the backend-local
//! caches that keep it cheap. The SQL surface (tables, `enforce_quota`, `set_quota`,
//! `release_quota`, `quota_usage`, `quota_counters`) is in `sql/quota.sql`.
//!
//! # How it stays exact
//! `enforce_quota(tbl)` installs four statement-level AFTER triggers on `tbl` (INSERT and
//! DELETE and UPDATE with transition tables, TRUNCATE) that all call [`quota_trigger`]. Each
//! firing computes, from the transition tables, one delta per workspace (rows counted after
//! minus rows counted before, with `counted_when` applied): transition tables hold only the
//! rows really inserted, deleted or updated, so `ON CONFLICT DO NOTHING` on an existing row
//! counts nothing and COPY counts every row. The deltas are then applied on one of two paths:
//! - **shared memory** (tenancy preloaded; [`shared`], with the transition tables read
//!   directly by [`transition`]): compare-and-swap reservations settled at commit or abort; no
//!   row is written or locked, no limit overshot at any isolation level;
//! - **counter rows** (not preloaded): one `INSERT ... ON CONFLICT DO UPDATE SET used = used +
//!   delta` on `tenancy.quota_counter`, ordered by workspace. The counter row's lock is held to
//!   the end of the transaction: concurrent writers of one workspace serialize on it, and under
//!   READ COMMITTED the second re-reads the committed count before checking the limit (no
//!   overshoot); under REPEATABLE READ / SERIALIZABLE it gets a serialization failure (40001)
//!   instead. Locks are taken in workspace order, so writers of one table do not deadlock;
//!   rollbacks and savepoints undo the counters with the data.
//!
//! A delta that grows a workspace past its effective limit raises 53400 and the whole statement
//! is undone. Everything the trigger runs through SPI runs as a security-restricted operation
//! under `search_path = pg_catalog` ([`as_user`]): what reads the bookkeeping tables (settings,
//! limits, counter rows) as their owner; what evaluates `counted_when` (the delta statements,
//! the counts, the compiled reader) as the enforced table's owner, read from the relation at
//! every firing, so that code a table owner can redefine never runs with more rights than that
//! owner's ([`vet`] checks who owns the code `counted_when` calls). The administrative
//! functions reach the bookkeeping only through [`quota_admin`], which checks the caller's
//! EXECUTE privilege and table ownership first.
//!
//! # Caches (per backend)
//! Limits and table settings are read once per table (with a fresh snapshot) and kept; the
//! plans of the delta statements and counts, and the compiled transition readers, are prepared
//! once per table and kept. Any change to `tenancy.quota_limit` or `tenancy.quota_table` fires
//! a statement trigger that queues a relcache invalidation; PostgreSQL delivers it to this
//! backend at the next command and to every other backend at its next transaction start, where
//! [`relcache_callback`] drops the caches (an invalidation of an enforced table itself drops
//! that table's entries).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, OwnedPreparedStatement};
use pgrx::{PgBuiltInOids, PgOid};
use pgrx::PgSqlErrorCode as Code;
use pgrx::WhoAllocated;

use crate::context::with_catalog_path;
use crate::error::TenancyError;
use crate::uuid_text;

mod shared;
mod transition;
mod vet;

/// Names the transition tables get in the triggers `enforce_quota` creates.
const NEW_TABLE: &str = "tenancy_new";
const OLD_TABLE: &str = "tenancy_old";

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Event {
    Insert,
    Delete,
    Update,
    Truncate,
}

/// One enforced table's settings and limits (from tenancy.quota_table and tenancy.quota_limit).
struct TableQuota {
    workspace_column: String,
    counted_when: Option<String>,
    /// The default limit (NULL workspace row); `None`: unlimited.
    default_limit: Option<i64>,
    /// Per-workspace overrides; `Some(None)`: explicitly unlimited.
    overrides: HashMap<[u8; 16], Option<i64>>,
    /// A tenancy.quota_shared_mark row exists: the counters in tenancy.quota_counter are stale
    /// because the table has been counted in shared memory since its last recount.
    shared_counts: bool,
}

impl TableQuota {
    fn limit_for(&self, ws: &[u8; 16]) -> Option<i64> {
        match self.overrides.get(ws) {
            Some(over) => *over,
            None => self.default_limit,
        }
    }
}

#[derive(Default)]
struct Caches {
    /// `None`: looked up, not enforced.
    tables: HashMap<pg_sys::Oid, Option<TableQuota>>,
    plans: HashMap<(pg_sys::Oid, Event), OwnedPreparedStatement>,
    /// Per table: `SELECT count(*) ... WHERE workspace = $1 AND counted` (shared-memory path).
    counts: HashMap<pg_sys::Oid, KeptPlan>,
    /// Per table: the compiled transition-table reader (shared-memory path); `None`: its
    /// counted_when needs the SPI query.
    readers: HashMap<pg_sys::Oid, Option<transition::Deltas>>,
    /// The extension's config tables, whose invalidations drop the caches.
    watched: Vec<pg_sys::Oid>,
    /// Owner of tenancy.quota_counter: the bookkeeping (settings reads, counter writes) runs as
    /// this role; `counted_when` never does (it runs as the enforced table's owner).
    counter_owner: Option<pg_sys::Oid>,
    /// The table path's counter update ([`APPLY_SQL`]), prepared once.
    apply: Option<OwnedPreparedStatement>,
    /// When each cached table was last written (a tick of `clock`): beyond
    /// [`MAX_CACHED_TABLES`] the least recently written table's entries are dropped.
    last_used: HashMap<pg_sys::Oid, u64>,
    clock: u64,
}

/// Enforced tables whose settings, plans and compiled readers one backend keeps (about 60 kB
/// each): a connection that writes thousands of enforced tables stays within a few MB; a
/// table dropped from the cache is read and compiled again at its next write.
const MAX_CACHED_TABLES: usize = 128;

thread_local! {
    static CACHES: RefCell<Caches> = RefCell::new(Caches::default());
}

pub(crate) fn init() {
    shared::init();
    // SAFETY: registers a callback with a 'static function; at most once per process (this
    // runs from _PG_init, which PostgreSQL calls once per process that loads the library).
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0));
        // a compiled counted_when has SQL functions inlined, and who owns the code it calls is
        // checked when it is compiled (quota::vet): any change of a function or a type (a
        // redefinition, a new owner) drops the compiled readers and plans
        for cache in [pg_sys::SysCacheIdentifier::PROCOID, pg_sys::SysCacheIdentifier::TYPEOID] {
            pg_sys::CacheRegisterSyscacheCallback(cache as i32, Some(syscache_callback), pg_sys::Datum::from(0));
        }
    }
}

/// Relcache invalidation callback: an invalidation of a config table (or of all relations)
/// drops every cached limit and plan. Must not raise errors or run queries.
#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    CACHES.with(|c| {
        // try_borrow_mut: an invalidation can arrive while the trigger itself holds the cache
        // (lock acquisition inside SPI processes invalidations); clear what we can later.
        if let Ok(mut c) = c.try_borrow_mut() {
            if relid == pg_sys::InvalidOid || c.watched.contains(&relid) {
                c.clear();
            } else if c.tables.contains_key(&relid) {
                // the enforced table itself changed (ALTER TABLE, ...): column numbers and the
                // compiled counted_when may be stale
                c.forget(relid);
            }
        } else {
            PENDING_CLEAR.with(|p| p.set(true));
        }
    });
}

/// Syscache invalidation callback (pg_proc, pg_type): drop the compiled transition readers and
/// the plans, so that counted_when is checked and compiled again. Must not raise errors or run
/// queries.
#[pg_guard]
unsafe extern "C-unwind" fn syscache_callback(_arg: pg_sys::Datum, _cache: std::ffi::c_int, _hash: u32) {
    CACHES.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            c.readers.clear();
            c.plans.clear();
            c.counts.clear();
        } else {
            PENDING_CLEAR.with(|p| p.set(true));
        }
    });
}

thread_local! {
    static PENDING_CLEAR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn take_pending_clear(c: &mut Caches) {
    let mark_lost = shared::MARK_LOST.swap(false, std::sync::atomic::Ordering::Relaxed);
    if PENDING_CLEAR.with(|p| p.replace(false)) || mark_lost {
        c.clear();
    }
}

impl Caches {
    fn clear(&mut self) {
        self.tables.clear();
        self.plans.clear();
        self.counts.clear();
        self.readers.clear();
        self.apply = None;
        self.counter_owner = None;
        self.last_used.clear();
    }

    fn forget(&mut self, relid: pg_sys::Oid) {
        self.tables.remove(&relid);
        self.plans.retain(|(r, _), _| *r != relid);
        self.counts.remove(&relid);
        self.readers.remove(&relid);
        self.last_used.remove(&relid);
    }

    /// `relid` is being written: mark it used, and keep at most [`MAX_CACHED_TABLES`] tables.
    fn touch(&mut self, relid: pg_sys::Oid) {
        self.clock += 1;
        self.last_used.insert(relid, self.clock);
        if self.last_used.len() > MAX_CACHED_TABLES {
            let oldest = self.last_used.iter().min_by_key(|(_, &t)| t).map(|(&r, _)| r);
            if let Some(oldest) = oldest {
                self.forget(oldest);
            }
        }
    }
}

/// A plan prepared with SPI_prepare and kept (SPI_keepplan) for the life of the backend, or
/// until the caches are dropped. Raw SPI because it runs with a snapshot of our own
/// (SPI_execute_snapshot), which pgrx's prepared statements do not offer.
struct KeptPlan(pg_sys::SPIPlanPtr);

impl KeptPlan {
    /// Prepare `sql` with one uuid parameter. Must run inside an SPI connection.
    fn prepare_uuid(sql: &str) -> Result<KeptPlan, TenancyError> {
        let text = CString::new(sql).expect("no NUL in generated SQL");
        let mut types = [pg_sys::UUIDOID];
        // SAFETY: SPI is connected (caller); SPI_prepare raises an ERROR on a bad statement.
        unsafe {
            let plan = pg_sys::SPI_prepare(text.as_ptr(), 1, types.as_mut_ptr());
            if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
                return Err(TenancyError::new(Code::ERRCODE_INTERNAL_ERROR, "tenancy: could not prepare a quota count")
                    .detail(sql.to_string()));
            }
            Ok(KeptPlan(plan))
        }
    }

    /// Run the count for workspace `ws`: with `snapshot`, or (None) with a fresh snapshot that
    /// sees everything committed and every change of this transaction, the triggering
    /// statement's included. Returns the count.
    fn count(&self, ws: &[u8; 16], snapshot: Option<pg_sys::Snapshot>) -> Result<i64, TenancyError> {
        let uuid = pgrx::Uuid::from_bytes(*ws);
        let value = uuid.into_datum().expect("uuid datum");
        let snap = snapshot.unwrap_or_else(|| {
            // SAFETY: makes the triggering statement's rows visible to the snapshot taken next.
            unsafe {
                pg_sys::CommandCounterIncrement();
                pg_sys::GetLatestSnapshot()
            }
        });
        // SAFETY: SPI is connected (caller); the uuid datum points into `uuid`, alive for the call.
        let rows = unsafe { execute_with_snapshot(self.0, &mut [value], snap)? };
        match rows.as_slice() {
            [row] => Ok(row[0].map_or(0, |d| d.value() as i64)),
            _ => Err(TenancyError::new(Code::ERRCODE_INTERNAL_ERROR, "tenancy: quota count failed")
                .detail(format!("{} rows", rows.len()))),
        }
    }
}

/// Run `plan` read-only with `snapshot` and `values` (none NULL); each row's datums (None for
/// NULL), valid until the SPI connection closes.
///
/// # Safety
/// SPI is connected; `values` match the plan's parameter types.
unsafe fn execute_with_snapshot(
    plan: pg_sys::SPIPlanPtr,
    values: &mut [pg_sys::Datum],
    snapshot: pg_sys::Snapshot,
) -> Result<Vec<Vec<Option<pg_sys::Datum>>>, TenancyError> {
    let nulls = vec![b' ' as std::ffi::c_char; values.len()];
    // SAFETY: see the function's obligations; SPI copies the snapshot when it pushes it.
    unsafe {
        let rc = pg_sys::SPI_execute_snapshot(plan, values.as_mut_ptr(), nulls.as_ptr(), snapshot, std::ptr::null_mut(), true, false, 0);
        let table = pg_sys::SPI_tuptable;
        if rc != pg_sys::SPI_OK_SELECT as i32 || table.is_null() {
            return Err(TenancyError::new(Code::ERRCODE_INTERNAL_ERROR, "tenancy: internal query failed")
                .detail(format!("SPI result {rc}")));
        }
        let desc = (*table).tupdesc;
        let rows = (0..pg_sys::SPI_processed as usize)
            .map(|i| {
                let tuple = *(*table).vals.add(i);
                (1..=(*desc).natts)
                    .map(|col| {
                        let mut isnull = false;
                        let d = pg_sys::SPI_getbinval(tuple, desc, col, &mut isnull);
                        (!isnull).then_some(d)
                    })
                    .collect()
            })
            .collect();
        Ok(rows)
    }
}

impl Drop for KeptPlan {
    fn drop(&mut self) {
        // SAFETY: frees a plan kept by SPI_keepplan; never used afterwards.
        unsafe { pg_sys::SPI_freeplan(self.0) };
    }
}

/// Statement trigger on tenancy.quota_table and tenancy.quota_limit: queue a relcache
/// invalidation so that every backend drops its cached limits (at commit for the others).
#[pg_trigger]
fn quota_config_changed<'a>(
    t: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, impl WhoAllocated>>, PgHeapTupleError> {
    let relid = t.relid().expect("trigger relation");
    // SAFETY: relid is the trigger's table; queues a transactional invalidation message.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    Ok(None::<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>)
}

/// The quota trigger: statement-level AFTER INSERT/DELETE/UPDATE/TRUNCATE on enforced tables.
#[pg_trigger]
fn quota_trigger<'a>(
    t: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, impl WhoAllocated>>, PgHeapTupleError> {
    let relid = t.relid().expect("trigger relation");
    let event = match t.op() {
        Ok(PgTriggerOperation::Insert) => Event::Insert,
        Ok(PgTriggerOperation::Delete) => Event::Delete,
        Ok(PgTriggerOperation::Update) => Event::Update,
        Ok(PgTriggerOperation::Truncate) => Event::Truncate,
        Err(e) => {
            TenancyError::new(Code::ERRCODE_TRIGGERED_ACTION_EXCEPTION, "tenancy.quota_trigger(): unexpected event")
                .detail(e.to_string())
                .raise()
        }
    };
    if !matches!(t.level(), PgTriggerLevel::Statement) || !matches!(t.when(), Ok(PgTriggerWhen::After)) {
        TenancyError::new(
            Code::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
            "tenancy.quota_trigger() must be fired AFTER ... FOR EACH STATEMENT",
        )
        .hint("Install it with tenancy.enforce_quota(); do not create the trigger by hand.")
        .raise();
    }
    if let Some(over) = apply_deltas(t, relid, event) {
        over.raise();
    }
    Ok(None::<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>)
}

/// The C entry points of `tenancy.quota_trigger()` and `tenancy.quota_config_changed()` (see
/// sql/quota.sql): a direct call, not a trigger's, is refused as PL/pgSQL refuses it (39P01)
/// before pgrx's trigger wrapper would fail with an internal error.
unsafe fn require_trigger_call(fcinfo: pg_sys::FunctionCallInfo, name: &str) {
    // SAFETY: fcinfo comes from PostgreSQL's function manager.
    let is_trigger = unsafe {
        let context = (*fcinfo).context;
        !context.is_null() && (*context).type_ == pg_sys::NodeTag::T_TriggerData
    };
    if !is_trigger {
        TenancyError::new(Code::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED, "trigger functions can only be called as triggers")
            .detail(format!("{name} was called directly."))
            .hint("tenancy.enforce_quota() installs the quota triggers; do not call their function yourself.")
            .raise();
    }
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_tenancy_quota_trigger() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn tenancy_quota_trigger(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: a call from the function manager; the wrapper is pgrx's for `quota_trigger`.
    unsafe {
        require_trigger_call(fcinfo, "tenancy.quota_trigger()");
        quota_trigger_wrapper(fcinfo)
    }
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_tenancy_quota_config_changed() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn tenancy_quota_config_changed(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: as above, for `quota_config_changed`.
    unsafe {
        require_trigger_call(fcinfo, "tenancy.quota_config_changed()");
        quota_config_changed_wrapper(fcinfo)
    }
}

/// Per-workspace changes of one statement: (workspace, used after, delta), or the first
/// workspace that went over its limit and the error to raise. (`used` is the table counter's
/// value on the table path, 0 on the shared-memory path, where nothing reads it.)
type Deltas = Result<Vec<([u8; 16], i64, i64)>, ([u8; 16], TenancyError)>;

/// Apply the statement's deltas; return the error to raise when a workspace went over its limit.
fn apply_deltas(t: &PgTrigger<'_>, relid: pg_sys::Oid, event: Event) -> Option<TenancyError> {
    let shared_path = shared::enabled();
    if shared_path && event == Event::Truncate {
        shared::forget_table(relid);
        return None;
    }
    let outcome = CACHES.with(|cell| {
        let Ok(mut caches) = cell.try_borrow_mut() else {
            // a quota trigger fired while another was evaluating its counted_when (a function
            // in it wrote to an enforced table): refused, the outer state is in use
            return Err(TenancyError::new(
                Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("quota trigger on {} fired inside another quota trigger", regclass_text(relid)),
            )
            .detail("A function called by counted_when (or by the quota bookkeeping) wrote to a table under quota enforcement.")
            .hint("counted_when must only read: make the functions it calls not write to enforced tables."));
        };
        take_pending_clear(&mut caches);
        caches.touch(relid);
        if let (true, Some(Some(reader))) = (shared_path, caches.readers.get(&relid)) {
            // the common case: no SPI at all unless a counter must be counted first
            let rel = t.trigger_data().tg_relation;
            let table_owner = relation_owner(rel);
            let rows = reader.deltas(t.trigger_data(), event, table_owner).into_iter().map(|(ws, n)| (ws, 0, n)).collect();
            let quota = caches.tables.get(&relid).and_then(Option::as_ref).expect("loaded with the reader");
            let counter = caches.counts.get(&relid).expect("prepared with the reader");
            return crate::stats::internal(|| apply_shared(rel, relid, quota, counter, table_owner, rows));
        }
        crate::stats::internal(|| Spi::connect_mut(|client| -> Result<Deltas, TenancyError> {
            // SAFETY: registers this firing's transition tables with the SPI connection just
            // opened, as PL/pgSQL does; the TriggerData outlives the connection.
            unsafe {
                let td = t.trigger_data() as *const pg_sys::TriggerData as *mut pg_sys::TriggerData;
                pg_sys::SPI_register_trigger_data(td);
            }
            ensure_loaded(&mut caches, client, relid)?;
            let owner = caches.counter_owner.expect("loaded with the table");
            // counted_when (and everything planned or evaluated with it) runs as the table's
            // owner, read from the relation at every firing (an ALTER TABLE ... OWNER TO takes
            // effect at the next statement)
            let table_owner = relation_owner(t.trigger_data().tg_relation);
            let key = (relid, event);
            if !caches.plans.contains_key(&key)
                || (shared_path && !(caches.counts.contains_key(&relid) && caches.readers.contains_key(&relid)))
            {
                let Some(Some(quota)) = caches.tables.get(&relid) else {
                    return Ok(Ok(Vec::new())); // not (or no longer) enforced: nothing to count
                };
                // the table may have changed since enforce_quota (a dropped, renamed or retyped
                // workspace column): refuse rather than read the wrong column
                check_workspace_column(relid, &quota.workspace_column)?;
                if let (Some(cond), true) = (quota.counted_when.as_deref(), event != Event::Truncate) {
                    // who may have put code in it (see quota::vet); again after every change of
                    // a function, type or the table's owner (the caches are dropped then)
                    let qualified = qualified_name(relid);
                    as_user(table_owner, || vet::vet(&qualified, cond, table_owner))?;
                }
                let delta = delta_sql(relid, event, quota, shared_path);
                let count = shared_path.then(|| count_sql(relid, quota));
                let compile = (shared_path && !caches.readers.contains_key(&relid))
                    .then(|| (quota.workspace_column.clone(), quota.counted_when.clone()));
                // TRUNCATE's statement (table path) writes the counters: the bookkeeping owner's
                let planner = if event == Event::Truncate { owner } else { table_owner };
                let plan = as_user(planner, || client.prepare_mut(delta.as_str(), &[]))?.keep();
                caches.plans.insert(key, plan);
                if let Some(count) = count {
                    let plan = as_user(table_owner, || KeptPlan::prepare_uuid(&count))?;
                    caches.counts.insert(relid, plan);
                }
                if let Some((column, cond)) = compile {
                    let rel = t.relation().expect("trigger relation");
                    let reader = as_user(table_owner, || {
                        transition::Deltas::compile(rel.as_ptr(), &column, cond.as_deref(), &qualified_name(relid))
                    })?;
                    caches.readers.insert(relid, reader);
                }
            }
            if !shared_path && caches.apply.is_none() {
                let plan = as_user(owner, || {
                    client.prepare_mut(
                        APPLY_SQL,
                        &[
                            PgOid::BuiltIn(PgBuiltInOids::OIDOID),
                            PgOid::BuiltIn(PgBuiltInOids::UUIDARRAYOID),
                            PgOid::BuiltIn(PgBuiltInOids::INT8ARRAYOID),
                        ],
                    )
                })?;
                caches.apply = Some(plan.keep());
            }
            let quota = caches.tables.get(&relid).and_then(Option::as_ref).expect("loaded");
            if !shared_path && quota.shared_counts {
                return Err(stale_counters(relid, quota));
            }
            let plan = caches.plans.get(&key).expect("just inserted");
            let runner = if event == Event::Truncate { owner } else { table_owner };
            let mut rows = as_user(runner, || delta_rows(client.select(plan, None, &[])?))?;
            if shared_path {
                let counter = caches.counts.get(&relid).expect("prepared with the plans");
                return apply_shared(t.trigger_data().tg_relation, relid, quota, counter, table_owner, rows);
            }
            if event != Event::Truncate && !rows.is_empty() {
                // the counted deltas (computed as the table owner) go to the counter rows as the
                // bookkeeping owner, in workspace order
                let apply = caches.apply.as_ref().expect("prepared with the plans");
                let ids: Vec<pgrx::Uuid> = rows.iter().map(|r| pgrx::Uuid::from_bytes(r.0)).collect();
                let deltas: Vec<i64> = rows.iter().map(|r| r.2).collect();
                let args = [DatumWithOid::from(relid), DatumWithOid::from(ids), DatumWithOid::from(deltas)];
                rows = as_user(owner, || delta_rows(client.update(apply, None, &args)?))?;
            }
            for &(ws, used, added) in &rows {
                if added <= 0 {
                    continue;
                }
                if let Some(limit) = quota.limit_for(&ws) {
                    if used > limit {
                        return Ok(Err((ws, over_quota(relid, &ws, limit, used, added))));
                    }
                }
            }
            Ok(Ok(rows))
        }))
    });
    // Usage statistics: the rows' workspaces, not the session's context.
    match outcome {
        Ok(Ok(rows)) => {
            for (ws, _, delta) in rows {
                crate::stats::record(ws, |e| {
                    if delta > 0 {
                        e.rows_added.fetch_add(delta as u64, std::sync::atomic::Ordering::Relaxed);
                    } else {
                        e.rows_removed.fetch_add(delta.unsigned_abs(), std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
            None
        }
        Ok(Err((ws, err))) => {
            crate::stats::record(ws, |e| {
                e.quota_rejections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            });
            Some(err)
        }
        Err(e) => Some(e),
    }
}

/// The (workspace_id, used, delta) rows of a delta statement or of the counter update.
fn delta_rows(table: pgrx::spi::SpiTupleTable<'_>) -> Result<Vec<([u8; 16], i64, i64)>, pgrx::spi::Error> {
    let mut out = Vec::new();
    for row in table {
        let ws: pgrx::Uuid = row.get(1)?.expect("workspace_id");
        let used: i64 = row.get(2)?.expect("used");
        let added: i64 = row.get(3)?.expect("delta");
        out.push((*ws.as_bytes(), used, added));
    }
    Ok(out)
}

/// The shared-memory path (see [`shared`]): apply each workspace's delta to its counter in
/// shared memory, counting the table for a counter not there yet.
fn apply_shared(
    rel: pg_sys::Relation,
    relid: pg_sys::Oid,
    quota: &TableQuota,
    counter: &KeptPlan,
    owner: pg_sys::Oid,
    rows: Vec<([u8; 16], i64, i64)>,
) -> Result<Deltas, TenancyError> {
    // A table created or rewritten in this transaction is as good as locked against other
    // writers, and its rows may be frozen (COPY FREEZE), visible to the first count's
    // command-id-0 snapshot: count it directly.
    if storage_new_in_this_transaction(rel) {
        shared::forget_table(relid); // and drop its counters when the transaction ends
    }
    let exclusive = shared::is_exclusive(relid);
    for &(ws, _, n) in &rows {
        let limit = quota.limit_for(&ws);
        if exclusive {
            // Nobody else can write the table until this transaction ends: count what it sees.
            if let (true, Some(limit)) = (n > 0, limit) {
                let used = Spi::connect(|_| as_user(owner, || counter.count(&ws, None)))?;
                if used > limit {
                    return Ok(Err((ws, over_quota(relid, &ws, limit, used, n))));
                }
            }
            continue;
        }
        let mut count = || Spi::connect(|_| as_user(owner, || counter.count(&ws, Some(snapshot_of_others()))));
        if let Err(over) = shared::apply(shared::key(relid, ws), n, limit, &mut count)? {
            let limit = limit.expect("only a limit rejects");
            return Ok(Err((ws, over_quota(relid, &ws, limit, over.would_be, over.would_be - over.used))));
        }
    }
    Ok(Ok(rows))
}

/// The relation's current owner (from its relcache entry): `counted_when` runs as this role,
/// as PostgreSQL's foreign-key triggers run their queries as the table's owner.
fn relation_owner(rel: pg_sys::Relation) -> pg_sys::Oid {
    // SAFETY: the trigger's open relation; rd_rel is its pg_class row.
    unsafe { (*(*rel).rd_rel).relowner }
}

/// Was the relation created, or given new storage (TRUNCATE, a rewriting ALTER TABLE), in this
/// transaction?
fn storage_new_in_this_transaction(rel: pg_sys::Relation) -> bool {
    const INVALID_SUBTRANSACTION_ID: pg_sys::SubTransactionId = 0;
    // SAFETY: the trigger's open relation.
    unsafe {
        (*rel).rd_createSubid != INVALID_SUBTRANSACTION_ID || (*rel).rd_firstRelfilenodeSubid != INVALID_SUBTRANSACTION_ID
    }
}

/// A fresh snapshot that sees what other transactions committed and nothing of this one (its
/// command id is 0, so every row this transaction inserted is "not yet" visible and every row
/// it deleted still is): the count a shared counter starts from, to which this transaction's
/// statements then add their own deltas.
fn snapshot_of_others() -> pg_sys::Snapshot {
    // SAFETY: GetLatestSnapshot returns the static secondary snapshot; SPI_execute_snapshot
    // copies it when pushing it, so changing its command id affects only this use.
    unsafe {
        let snap = pg_sys::GetLatestSnapshot();
        (*snap).curcid = 0;
        snap
    }
}

fn stale_counters(relid: pg_sys::Oid, quota: &TableQuota) -> TenancyError {
    let table = regclass_text(relid);
    let mut call = format!("SELECT tenancy.enforce_quota('{}', '{}'", table.replace('\'', "''"), quota.workspace_column.replace('\'', "''"));
    if let Some(cond) = &quota.counted_when {
        call.push_str(&format!(", '{}'", cond.replace('\'', "''")));
    }
    call.push(')');
    TenancyError::new(
        Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("quota counters of table {table} are out of date"),
    )
    .detail("The table was counted in shared memory while tenancy was in shared_preload_libraries; tenancy.quota_counter was not kept up to date meanwhile.")
    .hint(format!("Recount it: {call}; (or add tenancy to shared_preload_libraries again)."))
}

/// Run `f` as `role` (the owner of the counter table for the bookkeeping, the enforced table's
/// owner for anything evaluating `counted_when`), as PostgreSQL's RI triggers do, so that
/// application roles need no privilege on the bookkeeping tables and row-level security hides no
/// row from a count; as a security-restricted operation, and with `search_path` fixed to
/// `pg_catalog` alone so that no function or operator of the session's own
/// schemas can be picked up by what runs with the owner's rights (kept plans are re-analysed
/// when the search path differs, so it is fixed both when they are prepared and when they run).
/// An error raised inside is cleaned up by transaction or subtransaction abort, which restores
/// the user id and pops the search path.
fn as_user<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_ctx: i32 = 0;
    // SAFETY: plain reads/writes of the backend's current user id and security context; the
    // override search path is allocated by PostgreSQL and popped below (or at abort).
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_ctx);
        pg_sys::SetUserIdAndSecContext(
            role,
            saved_ctx
                | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION | pg_sys::SECURITY_NOFORCE_RLS)
                    as i32,
        );
        let mut path = pg_sys::OverrideSearchPath {
            schemas: std::ptr::null_mut(),
            addCatalog: true,
            addTemp: false,
            generation: 0,
        };
        pg_sys::PushOverrideSearchPath(&mut path);
    }
    let r = f();
    // SAFETY: restores exactly what was saved above.
    unsafe {
        pg_sys::PopOverrideSearchPath();
        pg_sys::SetUserIdAndSecContext(saved_user, saved_ctx);
    }
    r
}

fn over_quota(relid: pg_sys::Oid, ws: &[u8; 16], limit: i64, used: i64, added: i64) -> TenancyError {
    let table = regclass_text(relid);
    let ws = uuid_text::canonical(ws);
    TenancyError::new(
        Code::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
        format!("quota exceeded: workspace {ws} may have at most {limit} rows in {table}"),
    )
    .detail(format!(
        "Workspace {ws} has {} counted rows in {table}; this statement would add {added}, making {used}.",
        used - added
    ))
    .hint(format!(
        "Delete rows, or raise the limit with tenancy.set_quota('{}', <max_rows>, '{ws}').",
        table.replace('\'', "''")
    ))
}

fn regclass_text(relid: pg_sys::Oid) -> String {
    crate::readonly::one::<String>("SELECT $1::pg_catalog.regclass::pg_catalog.text", &[DatumWithOid::from(relid)])
        .ok()
        .flatten()
        .unwrap_or_else(|| format!("relation {}", u32::from(relid)))
}

/// Run a read-only query with a fresh snapshot (everything committed, and this transaction's
/// earlier commands), whatever the isolation level. Returns each row's datums (None for NULL),
/// valid until the SPI connection closes. Must run inside an SPI connection.
fn select_latest(sql: &str, args: &[(pg_sys::Oid, pg_sys::Datum)]) -> Result<Vec<Vec<Option<pg_sys::Datum>>>, TenancyError> {
    let text = CString::new(sql).expect("no NUL in our SQL");
    let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.0).collect();
    let mut values: Vec<pg_sys::Datum> = args.iter().map(|a| a.1).collect();
    // SAFETY: SPI is connected (caller); the plan is freed before returning (the rows live in
    // SPI's tuple table, not in the plan).
    unsafe {
        let plan = pg_sys::SPI_prepare(text.as_ptr(), args.len() as i32, types.as_mut_ptr());
        if plan.is_null() {
            return Err(TenancyError::new(Code::ERRCODE_INTERNAL_ERROR, "tenancy: could not prepare a settings query"));
        }
        let rows = execute_with_snapshot(plan, &mut values, pg_sys::GetLatestSnapshot());
        pg_sys::SPI_freeplan(plan);
        rows
    }
}

/// A text datum as a Rust string.
fn text_of(d: Option<pg_sys::Datum>) -> Option<String> {
    // SAFETY: callers pass datums of text columns.
    d.and_then(|d| unsafe { String::from_datum(d, false) })
}

/// The table's schema-qualified, quoted name, from the catalog caches (no SQL: nothing the
/// session's search path could redirect). Plans kept across search_path changes must not
/// resolve the name again.
fn qualified_name(relid: pg_sys::Oid) -> String {
    // SAFETY: lsyscache lookups of an existing relation (the trigger's, or an enforced one);
    // the returned C strings are palloc'd copies, read at once.
    unsafe {
        let rel = pg_sys::get_rel_name(relid);
        let nsp = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid));
        if rel.is_null() || nsp.is_null() {
            return format!("pg_catalog.\"relation {}\"", u32::from(relid));
        }
        let rel = std::ffi::CStr::from_ptr(rel).to_string_lossy();
        let nsp = std::ffi::CStr::from_ptr(nsp).to_string_lossy();
        format!("{}.{}", quote_identifier(&nsp), quote_identifier(&rel))
    }
}

/// Load the table's settings and limits (and the watched oids) into the cache if absent.
fn ensure_loaded(caches: &mut Caches, client: &mut pgrx::spi::SpiClient<'_>, relid: pg_sys::Oid) -> Result<(), TenancyError> {
    if caches.counter_owner.is_none() {
        let mut watched = Vec::new();
        let rows = client.select(
            "SELECT c.oid, c.relname::text, c.relowner FROM pg_catalog.pg_class c
              WHERE c.relnamespace = (SELECT extnamespace FROM pg_catalog.pg_extension WHERE extname = 'tenancy')
                AND c.relname IN ('quota_table', 'quota_limit', 'quota_counter')",
            None,
            &[],
        )?;
        let mut owner = None;
        for row in rows {
            let oid: pg_sys::Oid = row.get(1)?.expect("oid");
            let name: String = row.get(2)?.expect("relname");
            let relowner: pg_sys::Oid = row.get(3)?.expect("relowner");
            watched.push(oid);
            if name == "quota_counter" {
                owner = Some(relowner);
            }
        }
        caches.watched = watched;
        caches.counter_owner = Some(owner.unwrap_or(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID)));
        caches.tables.clear();
        caches.plans.clear();
        caches.counts.clear();
    }
    if caches.tables.contains_key(&relid) {
        return Ok(());
    }
    // Read the settings as the owner of the bookkeeping tables (application roles have no
    // privilege on them, the catalog query above needs none), with a fresh snapshot: what is
    // cached outlives this transaction, so it must not come from a REPEATABLE READ
    // transaction's old snapshot.
    let owner = caches.counter_owner.expect("set above");
    let entry = as_user(owner, || -> Result<Option<TableQuota>, TenancyError> {
        let arg = [(pg_sys::OIDOID, pg_sys::Datum::from(relid))];
        let cfg = select_latest(
            "SELECT workspace_column::text, counted_when,
                    EXISTS (SELECT FROM tenancy.quota_shared_mark m WHERE m.tbl = t.tbl)
               FROM tenancy.quota_table t WHERE t.tbl = $1",
            &arg,
        )?;
        let Some(row) = cfg.first() else { return Ok(None) };
        let workspace_column = text_of(row[0]).expect("workspace_column");
        let counted_when = text_of(row[1]);
        let mut shared_counts = row[2].is_some_and(|d| d.value() != 0);
        if shared::enabled() && !shared_counts {
            // From now on tenancy.quota_counter goes stale: say so, for the day the server runs
            // without preloading tenancy (the table path refuses stale counters). An INSERT into
            // a table without unique keys never waits for anybody; if this (sub)transaction
            // rolls back, the mark goes with it and the caches are dropped, to mark again.
            client.update("INSERT INTO tenancy.quota_shared_mark (tbl) VALUES ($1)", None, &[DatumWithOid::from(relid)])?;
            shared::mark_inserted();
            shared_counts = true;
        }
        let mut q = TableQuota { workspace_column, counted_when, default_limit: None, overrides: HashMap::new(), shared_counts };
        for row in select_latest("SELECT workspace_id, max_rows FROM tenancy.quota_limit WHERE tbl = $1", &arg)? {
            // SAFETY: datums of a uuid and a bigint column of the row just read.
            let max = row[1].map(|d| d.value() as i64);
            match row[0] {
                None => q.default_limit = max,
                Some(d) => {
                    let ws = unsafe { *d.cast_mut_ptr::<[u8; 16]>() };
                    q.overrides.insert(ws, max);
                }
            }
        }
        Ok(Some(q))
    })?;
    caches.tables.insert(relid, entry);
    Ok(())
}

/// The delta statement for one event: per workspace, rows counted after minus before, applied
/// to the counters in workspace order; returns (workspace_id, used, delta) for every workspace
/// that changed (only those with delta > 0 can go over a limit).
fn delta_sql(relid: pg_sys::Oid, event: Event, q: &TableQuota, shared_path: bool) -> String {
    let col = quote_identifier(&q.workspace_column);
    let cond = counted_condition(q);
    let source = match event {
        Event::Insert => format!("SELECT {col} AS ws, count(*) AS n FROM {NEW_TABLE} WHERE {cond} GROUP BY 1"),
        Event::Delete => format!("SELECT {col} AS ws, -count(*) AS n FROM {OLD_TABLE} WHERE {cond} GROUP BY 1"),
        Event::Update => format!(
            "SELECT ws, sum(n)::bigint AS n FROM (
                 SELECT {col} AS ws, 1 AS n FROM {NEW_TABLE} WHERE {cond}
                 UNION ALL
                 SELECT {col}, -1 FROM {OLD_TABLE} WHERE {cond}) u
              GROUP BY 1"
        ),
        Event::Truncate => return format!("DELETE FROM tenancy.quota_counter WHERE tbl = {}::oid", u32::from(relid)),
    };
    // Evaluated as the table's owner; the table path then hands the deltas to APPLY_SQL, run
    // as the bookkeeping owner (so counted_when never runs with the bookkeeping owner's rights).
    let _ = shared_path;
    format!("SELECT ws, 0::bigint, n::bigint FROM ({source}) d WHERE n <> 0 ORDER BY ws")
}

/// The table path's counter update: the statement's per-workspace deltas ($2, $3, in workspace
/// order) added to the counter rows of table $1, locked in that order. `last_delta` hands each
/// workspace's delta back through RETURNING, which cannot see `excluded`.
const APPLY_SQL: &str = "INSERT INTO tenancy.quota_counter AS c (tbl, workspace_id, used, last_delta)
     SELECT $1::oid, d.ws, d.n, d.n FROM ROWS FROM (pg_catalog.unnest($2::uuid[]), pg_catalog.unnest($3::bigint[])) WITH ORDINALITY AS d(ws, n, i) ORDER BY d.i
     ON CONFLICT (tbl, workspace_id) DO UPDATE SET used = c.used + excluded.used, last_delta = excluded.used
     RETURNING workspace_id, used, last_delta";

/// `(col) IS NOT NULL AND (counted_when)`: which rows count.
fn counted_condition(q: &TableQuota) -> String {
    let col = quote_identifier(&q.workspace_column);
    match &q.counted_when {
        Some(expr) => format!("({col}) IS NOT NULL AND ({expr})"),
        None => format!("({col}) IS NOT NULL"),
    }
}

/// One workspace's counted rows (the shared-memory path's first count, and the check while the
/// table is counted directly).
fn count_sql(relid: pg_sys::Oid, q: &TableQuota) -> String {
    let col = quote_identifier(&q.workspace_column);
    format!(
        "SELECT count(*) FROM {} WHERE {col} = $1 AND {}",
        qualified_name(relid),
        counted_condition(q)
    )
}

/// Raise 42501 unless the current user has the privileges of `tbl`'s owner (a superuser has).
fn require_owner(tbl: pg_sys::Oid, what: &str) -> Result<(), TenancyError> {
    // SAFETY: catalog lookups; pg_class_ownercheck raises 42P01 for a relation that is gone.
    let ok = unsafe { pg_sys::pg_class_ownercheck(tbl, pg_sys::GetUserId()) };
    if ok {
        return Ok(());
    }
    let table = regclass_text(tbl);
    Err(TenancyError::new(Code::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("must be owner of table {table} to {what}"))
        .detail(format!(
            "Quotas of a table are administered by its owner (or a member of the owning role) or a superuser; role {} is neither.",
            current_user_name()
        ))
        .hint("Ask the table's owner, or a superuser, to do it."))
}

fn current_user_name() -> String {
    // SAFETY: the name of the current user id, palloc'd; read at once.
    unsafe {
        let name = pg_sys::GetUserNameFromId(pg_sys::GetUserId(), true);
        if name.is_null() {
            return "?".into();
        }
        quote_identifier(&std::ffi::CStr::from_ptr(name).to_string_lossy())
    }
}

/// Raise 42703 / 42804 unless `relid` has a uuid column named `column` (catalog caches only).
fn check_workspace_column(relid: pg_sys::Oid, column: &str) -> Result<(), TenancyError> {
    let name = CString::new(column).unwrap_or_default();
    // SAFETY: syscache lookups; InvalidAttrNumber (0) for a missing or dropped column.
    let (attnum, typid) = unsafe {
        let attnum = pg_sys::get_attnum(relid, name.as_ptr());
        (attnum, if attnum > 0 { pg_sys::get_atttype(relid, attnum) } else { pg_sys::InvalidOid })
    };
    if attnum <= 0 {
        return Err(TenancyError::new(
            Code::ERRCODE_UNDEFINED_COLUMN,
            format!("workspace column {} of table {} does not exist", quote_identifier(column), regclass_text(relid)),
        )
        .hint("The column was dropped or renamed after tenancy.enforce_quota(): call enforce_quota() again (or release_quota())."));
    }
    if typid != pg_sys::UUIDOID {
        // SAFETY: syscache lookup; a palloc'd name, read at once.
        let type_name = unsafe { std::ffi::CStr::from_ptr(pg_sys::format_type_be(typid)).to_string_lossy().into_owned() };
        return Err(TenancyError::new(
            Code::ERRCODE_DATATYPE_MISMATCH,
            format!("workspace column {} of table {} has type {type_name}, not uuid", quote_identifier(column), regclass_text(relid)),
        )
        .hint("The column's type was changed after tenancy.enforce_quota(): change it back, or release_quota()."));
    }
    Ok(())
}

/// Owner of `relid` from pg_class (None: no such relation).
fn owner_of(relid: pg_sys::Oid) -> Result<Option<pg_sys::Oid>, TenancyError> {
    Ok(with_catalog_path(|| {
        crate::readonly::one::<pg_sys::Oid>("SELECT relowner FROM pg_catalog.pg_class WHERE oid = $1", &[DatumWithOid::from(relid)])
    })?)
}

/// `tenancy._quota_count(tbl, workspace_column, counted_when)`: the rows of `tbl` counted per
/// workspace (workspace column not NULL and `counted_when` true), under the caller's snapshot.
/// The count, and so `counted_when`, runs as the table's owner in a security-restricted
/// operation under `search_path = pg_catalog` (never with the caller's rights when the caller
/// is a superuser or the bookkeeping owner). The caller must have the table owner's privileges.
/// Used by enforce_quota (recount), quota_usage and quota_drift; not executable by PUBLIC.
#[pg_extern(volatile, parallel_unsafe, name = "_quota_count")]
fn quota_count(
    tbl: pg_sys::Oid,
    workspace_column: &str,
    counted_when: Option<&str>,
) -> Result<TableIterator<'static, (name!(workspace_id, pgrx::Uuid), name!(n, i64))>, pgrx::pg_sys::panic::ErrorReport> {
    require_owner(tbl, "count its quota rows")?;
    if let Some(cond) = counted_when {
        assert_expression(cond)?;
    }
    let owner = owner_of(tbl)?.ok_or_else(|| TenancyError::new(Code::ERRCODE_UNDEFINED_TABLE, format!("relation {} does not exist", u32::from(tbl))))?;
    check_workspace_column(tbl, workspace_column)?;
    let q = TableQuota {
        workspace_column: workspace_column.to_string(),
        counted_when: counted_when.map(str::to_string),
        default_limit: None,
        overrides: HashMap::new(),
        shared_counts: false,
    };
    let sql = format!(
        "SELECT {col}, count(*) FROM {} WHERE {} GROUP BY 1",
        qualified_name(tbl),
        counted_condition(&q),
        col = quote_identifier(workspace_column)
    );
    let qualified = qualified_name(tbl);
    let rows = Spi::connect(|client| {
        as_user(owner, || -> Result<Vec<(pgrx::Uuid, i64)>, TenancyError> {
            if let Some(cond) = counted_when {
                vet::vet(&qualified, cond, owner)?;
            }
            let mut out = Vec::new();
            for row in client.select(&sql, None, &[])? {
                out.push((row.get::<pgrx::Uuid>(1)?.expect("not null"), row.get::<i64>(2)?.expect("count")));
            }
            Ok(out)
        })
    })?;
    Ok(TableIterator::new(rows))
}

/// `tenancy._quota_admin(action, ...)`: the one way the administrative functions
/// (enforce_quota, set_quota, clear_quota, release_quota, all SECURITY INVOKER) write the
/// bookkeeping. It checks, with the caller's own identity, that the caller may execute the
/// public function of `action` (so `GRANT EXECUTE ON FUNCTION tenancy.set_quota ...` delegates
/// it) and owns the table (a non-owner never sets another owner's quotas or counted_when), then
/// runs the internal function as the owner of the bookkeeping tables, in a security-restricted
/// operation under `search_path = pg_catalog`; counted_when is only ever evaluated as the
/// table's owner (`_quota_count`, the quota trigger).
#[pg_extern(volatile, parallel_unsafe, name = "_quota_admin")]
fn quota_admin(
    action: &str,
    tbl: Option<pg_sys::Oid>,
    workspace_column: Option<&str>,
    counted_when: Option<&str>,
    max_rows: Option<i64>,
    workspace: Option<pgrx::Uuid>,
) -> Result<(), pgrx::pg_sys::panic::ErrorReport> {
    let tbl_arg = || DatumWithOid::from(tbl.map(RegClass));
    let (entry, sql, args, what) = match action {
        "enforce" => (
            "enforce_quota(pg_catalog.regclass, pg_catalog.name, pg_catalog.text)",
            "SELECT tenancy._enforce_quota($1, $2::pg_catalog.name, $3)",
            vec![tbl_arg(), DatumWithOid::from(workspace_column), DatumWithOid::from(counted_when)],
            "enforce a quota on it",
        ),
        "set" => (
            "set_quota(pg_catalog.regclass, pg_catalog.int8, pg_catalog.uuid)",
            "SELECT tenancy._set_quota($1, $2, $3)",
            vec![tbl_arg(), DatumWithOid::from(max_rows), DatumWithOid::from(workspace)],
            "set its quota",
        ),
        "clear" => (
            "clear_quota(pg_catalog.regclass, pg_catalog.uuid)",
            "SELECT tenancy._clear_quota($1, $2)",
            vec![tbl_arg(), DatumWithOid::from(workspace)],
            "clear its quota",
        ),
        "release" => ("release_quota(pg_catalog.regclass)", "SELECT tenancy._release_quota($1)", vec![tbl_arg()], "release its quota"),
        other => {
            return Err(TenancyError::new(Code::ERRCODE_INVALID_PARAMETER_VALUE, format!("unknown quota action \"{other}\""))
                .hint("Internal function: call tenancy.enforce_quota, set_quota, clear_quota or release_quota.")
                .into())
        }
    };
    let entry = format!("tenancy.{entry}");
    // writes: refused in a read-only transaction and on a standby as PostgreSQL refuses any
    // write there (25006), before anything would ask for a transaction id
    let command = CString::new(format!("tenancy.{}", entry.trim_start_matches("tenancy.").split('(').next().unwrap_or_default()))
        .expect("no NUL");
    // SAFETY: both raise a normal ERROR (25006) through pgrx's guard, or return.
    unsafe {
        pg_sys::PreventCommandIfReadOnly(command.as_ptr());
        pg_sys::PreventCommandDuringRecovery(command.as_ptr());
    }
    let may = with_catalog_path(|| {
        crate::readonly::one::<bool>(
            "SELECT pg_catalog.has_function_privilege($1::pg_catalog.regprocedure, 'EXECUTE')",
            &[DatumWithOid::from(entry.as_str())],
        )
    })
    .map_err(TenancyError::from)?;
    if may != Some(true) {
        let name = entry.split('(').next().unwrap_or_default();
        return Err(TenancyError::new(Code::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("permission denied for function {name}"))
            .detail(format!("Role {} has no EXECUTE privilege on {}.", current_user_name(), entry.replace("pg_catalog.", "")))
            .hint(format!("A superuser delegates it with GRANT EXECUTE ON FUNCTION {} TO <role>.", entry.replace("pg_catalog.", "")))
            .into());
    }
    if let Some(tbl) = tbl {
        // SAFETY: syscache lookup; NULL for a relation that no longer exists.
        let exists = unsafe { !pg_sys::get_rel_name(tbl).is_null() };
        if exists {
            require_owner(tbl, what)?;
        } else if !(action == "release" && unsafe { pg_sys::superuser() }) {
            // what is left of a table that is gone (nobody owns it any more): a superuser's
            return Err(TenancyError::new(Code::ERRCODE_UNDEFINED_TABLE, format!("relation with OID {} does not exist", u32::from(tbl)))
                .hint("A superuser removes what is left of a dropped table's quota with tenancy.release_quota(<oid>).")
                .into());
        }
    }
    let bookkeeper = owner_of(bookkeeping_table()?)?.expect("the bookkeeping table exists");
    as_user(bookkeeper, || Spi::run_with_args(sql, &args)).map_err(TenancyError::from)?;
    Ok(())
}

/// A regclass datum (an oid with the regclass type oid), for SPI parameters.
struct RegClass(pg_sys::Oid);

impl IntoDatum for RegClass {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0))
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::REGCLASSOID
    }
}

/// tenancy.quota_counter's oid: its owner is the bookkeeping owner.
fn bookkeeping_table() -> Result<pg_sys::Oid, TenancyError> {
    // SAFETY: syscache lookups of a namespace and a relation by name.
    let oid = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"tenancy".as_ptr(), true);
        pg_sys::get_relname_relid(c"quota_counter".as_ptr(), nsp)
    };
    if oid == pg_sys::InvalidOid {
        return Err(TenancyError::new(Code::ERRCODE_UNDEFINED_TABLE, "tenancy.quota_counter does not exist")
            .hint("Is the extension installed in this database? CREATE EXTENSION tenancy;"));
    }
    Ok(oid)
}

/// `tenancy._assert_expression(expr)`: raise 42601 unless `expr` is exactly one SQL
/// expression (used by enforce_quota to validate `counted_when` before it is ever
/// interpolated into a statement).
#[pg_extern(immutable, parallel_safe, name = "_assert_expression")]
fn assert_expression(expr: &str) -> Result<bool, pgrx::pg_sys::panic::ErrorReport> {
    let bad = |why: &str| -> pgrx::pg_sys::panic::ErrorReport {
        TenancyError::new(Code::ERRCODE_SYNTAX_ERROR, format!("counted_when is not a single SQL expression: {why}"))
            .detail(format!("counted_when: {expr}"))
            .hint("Pass a boolean expression over the table's columns, e.g. '\"resourceType\" = ''Declarative'''.")
            .into()
    };
    if expr.trim().is_empty() {
        return Err(bad("it is empty"));
    }
    let text = CString::new(format!("SELECT ({expr})")).map_err(|_| bad("it contains a NUL byte"))?;
    // SAFETY: raw_parser only reads the string; a syntax error is raised as a normal ERROR
    // (42601) through pgrx's FFI guard. The list is palloc'd in the current context.
    let n = unsafe {
        let list = pg_sys::raw_parser(text.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        if list.is_null() {
            0
        } else {
            (*list).length
        }
    };
    if n != 1 {
        return Err(bad("it ends the statement (a ';' outside a string?)"));
    }
    // Its parentheses must balance on their own: `a) OR (b` parses once wrapped in parentheses,
    // but would change the meaning of the conditions it is combined with. PostgreSQL's own
    // scanner tells parentheses from those inside strings, quoted names and comments.
    // SAFETY: the scanner reads `alone` (alive for the whole loop) and is finished before
    // return; the input already parsed, so the scanner raises no error.
    let alone = CString::new(expr).expect("checked above: no NUL");
    let balanced = unsafe {
        let mut extra: pg_sys::core_yy_extra_type = std::mem::zeroed();
        let scanner = pg_sys::scanner_init(
            alone.as_ptr(),
            &mut extra,
            &raw const pg_sys::ScanKeywords,
            pg_sys::ScanKeywordTokens.as_ptr(),
        );
        let mut depth = 0i32;
        let mut never_negative = true;
        loop {
            let mut lval: pg_sys::core_YYSTYPE = std::mem::zeroed();
            let mut lloc: std::ffi::c_int = 0;
            match pg_sys::core_yylex(&mut lval, &mut lloc, scanner) {
                0 => break,
                t if t == b'(' as i32 => depth += 1,
                t if t == b')' as i32 => {
                    depth -= 1;
                    never_negative &= depth >= 0;
                }
                _ => {}
            }
        }
        pg_sys::scanner_finish(scanner);
        never_negative && depth == 0
    };
    if !balanced {
        return Err(bad("its parentheses do not balance"));
    }
    Ok(true)
}

pgrx::extension_sql_file!(
    "../sql/quota.sql",
    name = "quota_sql",
    requires = ["context_sql", quota_trigger, quota_config_changed, assert_expression, quota_count, quota_admin, shared::quota_entries, shared::quota_shared, shared::quota_forget]
);

