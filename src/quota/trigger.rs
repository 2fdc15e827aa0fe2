//! The quota triggers: the statement-level trigger on enforced tables, the config-change
//! trigger on the bookkeeping tables, their C entry points, and applying a statement's deltas
//! on the shared-memory or the counter-row path.

use super::*;

/// Statement trigger on tenancy.quota_table and tenancy.quota_limit: queue a relcache
/// invalidation so that every backend drops its cached limits (at commit for the others).
#[pg_trigger]
pub(super) fn quota_config_changed<'a>(
    t: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, impl WhoAllocated>>, PgHeapTupleError> {
    let relid = t.relid().expect("trigger relation");
    // SAFETY: relid is the trigger's table; queues a transactional invalidation message.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    Ok(None::<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>)
}

/// The quota trigger: statement-level AFTER INSERT/DELETE/UPDATE/TRUNCATE on enforced tables.
#[pg_trigger]
pub(super) fn quota_trigger<'a>(
    t: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, impl WhoAllocated>>, PgHeapTupleError> {
    let relid = t.relid().expect("trigger relation");
    let event = match t.op() {
        Ok(PgTriggerOperation::Insert) => Event::Insert,
        Ok(PgTriggerOperation::Delete) => Event::Delete,
        Ok(PgTriggerOperation::Update) => Event::Update,
        Ok(PgTriggerOperation::Truncate) => Event::Truncate,
        Err(e) => TenancyError::new(
            Code::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
            "tenancy.quota_trigger(): unexpected event",
        )
        .detail(e.to_string())
        .raise(),
    };
    if !matches!(t.level(), PgTriggerLevel::Statement)
        || !matches!(t.when(), Ok(PgTriggerWhen::After))
    {
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
/// sql/quota.sql) refuse a direct call (39P01) before pgrx's trigger wrapper would fail with an
/// internal error.
unsafe fn require_trigger_call(fcinfo: pg_sys::FunctionCallInfo, name: &str) {
    // SAFETY: as the caller's.
    unsafe {
        crate::pg::trigger::require_trigger_call(
            fcinfo,
            name,
            "tenancy.enforce_quota() installs the quota triggers; do not call their function yourself.",
        )
    };
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_tenancy_quota_trigger() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn tenancy_quota_trigger(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
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
pub unsafe extern "C-unwind" fn tenancy_quota_config_changed(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: as above, for `quota_config_changed`.
    unsafe {
        require_trigger_call(fcinfo, "tenancy.quota_config_changed()");
        quota_config_changed_wrapper(fcinfo)
    }
}

/// Per-workspace changes of one statement: (workspace, used after, delta), or the first
/// workspace that went over its limit and the error to raise. (`used` is the table counter's
/// value on the table path, 0 on the shared-memory path, where nothing reads it.)
pub(super) type Deltas = Result<Vec<([u8; 16], i64, i64)>, ([u8; 16], TenancyError)>;

/// Apply the statement's deltas; return the error to raise when a workspace went over its limit.
pub(super) fn apply_deltas(
    t: &PgTrigger<'_>,
    relid: pg_sys::Oid,
    event: Event,
) -> Option<TenancyError> {
    let shared_path = shared::enabled();
    let citus = citus::from_trigger(t);
    if citus.is_some() && !shared_path {
        return Some(citus::not_preloaded(relid));
    }
    // the relation the quota belongs to: a partition's partitioned table (its counters, its
    // settings and limits), the table itself otherwise
    let qrel = quota_relation(relid);
    if shared_path && event == Event::Truncate {
        shared::forget_table(qrel);
        return None;
    }
    if !shared_path && event == Event::Truncate && qrel != relid {
        return Some(truncate_partition_without_preload(relid, qrel));
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
        if let (true, Some(Some(reader)), None) = (shared_path, caches.readers.get(&relid), &citus) {
            // the common case: no SPI at all unless a counter must be counted first
            let rel = t.trigger_data().tg_relation;
            let table_owner = relation_owner(rel);
            let rows = reader.deltas(t.trigger_data(), event, table_owner).into_iter().map(|(ws, n)| (ws, 0, n)).collect();
            let quota = caches.tables.get(&relid).and_then(Option::as_ref).expect("loaded with the reader");
            let counter = caches.counts.get(&relid).expect("prepared with the reader");
            return crate::pg::local::internal(|| apply_shared(rel, qrel, quota, counter, table_owner, rows));
        }
        crate::pg::local::internal(|| Spi::connect_mut(|client| -> Result<Deltas, TenancyError> {
            // SAFETY: registers this firing's transition tables with the SPI connection just
            // opened, as PL/pgSQL does; the TriggerData outlives the connection.
            unsafe {
                let td = t.trigger_data() as *const pg_sys::TriggerData as *mut pg_sys::TriggerData;
                pg_sys::SPI_register_trigger_data(td);
            }
            ensure_loaded(&mut caches, client, relid, qrel, citus.as_ref())?;
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
                let count = shared_path.then(|| count_sql(qrel, quota));
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
                return Err(stale_counters(qrel, quota));
            }
            let plan = caches.plans.get(&key).expect("just inserted");
            let runner = if event == Event::Truncate { owner } else { table_owner };
            let mut rows = as_user(runner, || delta_rows(client.select(plan, None, &[])?))?;
            if shared_path {
                let counter = caches.counts.get(&relid).expect("prepared with the plans");
                return apply_shared(t.trigger_data().tg_relation, qrel, quota, counter, table_owner, rows);
            }
            if event != Event::Truncate && !rows.is_empty() {
                // the counted deltas (computed as the table owner) go to the counter rows as the
                // bookkeeping owner, in workspace order
                let apply = caches.apply.as_ref().expect("prepared with the plans");
                let ids: Vec<pgrx::Uuid> = rows.iter().map(|r| pgrx::Uuid::from_bytes(r.0)).collect();
                let deltas: Vec<i64> = rows.iter().map(|r| r.2).collect();
                let args = [DatumWithOid::from(qrel), DatumWithOid::from(ids), DatumWithOid::from(deltas)];
                rows = as_user(owner, || delta_rows(client.update(apply, None, &args)?))?;
            }
            for &(ws, used, added) in &rows {
                if added <= 0 {
                    continue;
                }
                if let Some(limit) = quota.limit_for(&ws) {
                    if used > limit {
                        return Ok(Err((ws, over_quota(qrel, quota, &ws, limit, used, added))));
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
                        e.rows_added
                            .fetch_add(delta as u64, std::sync::atomic::Ordering::Relaxed);
                    } else {
                        e.rows_removed
                            .fetch_add(delta.unsigned_abs(), std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
            None
        }
        Ok(Err((ws, err))) => {
            crate::stats::record(ws, |e| {
                e.quota_rejections
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            });
            Some(err)
        }
        Err(e) => Some(e),
    }
}

/// The (workspace_id, used, delta) rows of a delta statement or of the counter update.
pub(super) fn delta_rows(
    table: pgrx::spi::SpiTupleTable<'_>,
) -> Result<Vec<([u8; 16], i64, i64)>, pgrx::spi::Error> {
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
/// shared memory, counting the table for a counter not there yet. `rel` is the trigger's
/// relation, `relid` the quota's ([`quota_relation`]: a partition's partitioned table).
pub(super) fn apply_shared(
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
                    return Ok(Err((ws, over_quota(relid, quota, &ws, limit, used, n))));
                }
            }
            continue;
        }
        let mut count =
            || Spi::connect(|_| as_user(owner, || counter.count(&ws, Some(snapshot_of_others()))));
        if let Err(over) = shared::apply(shared::key(relid, ws), n, limit, &mut count)? {
            let limit = limit.expect("only a limit rejects");
            return Ok(Err((
                ws,
                over_quota(
                    relid,
                    quota,
                    &ws,
                    limit,
                    over.would_be,
                    over.would_be - over.used,
                ),
            )));
        }
    }
    Ok(Ok(rows))
}

/// The relation's current owner (from its relcache entry): `counted_when` runs as this role,
/// as PostgreSQL's foreign-key triggers run their queries as the table's owner.
pub(super) fn relation_owner(rel: pg_sys::Relation) -> pg_sys::Oid {
    // SAFETY: the trigger's open relation; rd_rel is its pg_class row.
    unsafe { (*(*rel).rd_rel).relowner }
}

/// Was the relation created, or given new storage (TRUNCATE, a rewriting ALTER TABLE), in this
/// transaction?
pub(super) fn storage_new_in_this_transaction(rel: pg_sys::Relation) -> bool {
    const INVALID_SUBTRANSACTION_ID: pg_sys::SubTransactionId = 0;
    // SAFETY: the trigger's open relation.
    unsafe {
        (*rel).rd_createSubid != INVALID_SUBTRANSACTION_ID
            || (*rel).rd_firstRelfilenodeSubid != INVALID_SUBTRANSACTION_ID
    }
}

/// A fresh snapshot that sees what other transactions committed and nothing of this one (its
/// command id is 0, so every row this transaction inserted is "not yet" visible and every row
/// it deleted still is): the count a shared counter starts from, to which this transaction's
/// statements then add their own deltas.
pub(super) fn snapshot_of_others() -> pg_sys::Snapshot {
    // SAFETY: GetLatestSnapshot returns the static secondary snapshot; SPI_execute_snapshot
    // copies it when pushing it, so changing its command id affects only this use.
    unsafe {
        let snap = pg_sys::GetLatestSnapshot();
        (*snap).curcid = 0;
        snap
    }
}

pub(super) fn stale_counters(relid: pg_sys::Oid, quota: &TableQuota) -> TenancyError {
    let table = regclass_text(relid);
    let mut call = format!(
        "SELECT tenancy.enforce_quota('{}', '{}'",
        table.replace('\'', "''"),
        quota.workspace_column.replace('\'', "''")
    );
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

pub(super) fn over_quota(
    relid: pg_sys::Oid,
    quota: &TableQuota,
    ws: &[u8; 16],
    limit: i64,
    used: i64,
    added: i64,
) -> TenancyError {
    // (a shard's name only when the error is raised: not on every firing)
    let table = if quota.citus_shard {
        citus::logical_name(&regclass_text(relid))
    } else {
        regclass_text(relid)
    };
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

/// The relation a quota belongs to: the partitioned table at the root of a partition's tree,
/// the table itself otherwise.
pub(super) fn quota_relation(relid: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: a catalog cache lookup, and pg_partition_root() of the trigger's open relation.
    unsafe {
        if !pg_sys::get_rel_relispartition(relid) {
            return relid;
        }
        pgrx::direct_function_call::<pg_sys::Oid>(
            pg_sys::pg_partition_root,
            &[Some(pg_sys::Datum::from(relid))],
        )
        .unwrap_or(relid)
    }
}

/// The counter-row path cannot take a partition's rows away from its partitioned table's
/// counters at TRUNCATE (the statement trigger sees none of them).
pub(super) fn truncate_partition_without_preload(
    relid: pg_sys::Oid,
    qrel: pg_sys::Oid,
) -> TenancyError {
    TenancyError::new(
        Code::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!(
            "cannot TRUNCATE partition {} of quota-enforced table {} without tenancy in shared_preload_libraries",
            regclass_text(relid),
            regclass_text(qrel)
        ),
    )
    .detail("Without the preload the quota counters are rows, and a TRUNCATE trigger does not see the rows it removes.")
    .hint("DELETE the rows instead, TRUNCATE the partitioned table, or add tenancy to shared_preload_libraries.")
}

pub(super) fn regclass_text(relid: pg_sys::Oid) -> String {
    crate::pg::spi::one::<String>(
        "SELECT $1::pg_catalog.regclass::pg_catalog.text",
        &[DatumWithOid::from(relid)],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| format!("relation {}", u32::from(relid)))
}
