//! The SQL API of the statistics: the rows of `workspace_stats`, `stats_info` and
//! `reset_stats`, and who may read them.

use super::*;

pub(super) struct Snapshot {
    pub(super) key: Key,
    pub(super) v: [u64; 14],
    pub(super) last: i64,
}

/// Copy every entry out. `lock`: take the lock SHARED (false only at postmaster exit, where
/// no backend is left and the postmaster cannot take LWLocks).
pub(super) fn copy_entries(shared: &Shared, lock: bool) -> Vec<Snapshot> {
    let hash = HASH.load(Relaxed);
    let mut out = Vec::new();
    // SAFETY: shared lock held while iterating; entries are copied out before release.
    unsafe {
        let guard = lock.then(|| LwLockGuard::shared(shared.lock));
        out.reserve(pg_sys::hash_get_num_entries(hash) as usize);
        each_entry(hash, |e: &Entry| {
            out.push(Snapshot {
                key: e.key,
                v: e.counters().map(|c| c.load(Relaxed)),
                last: e.last_activity.load(Relaxed),
            })
        });
        drop(guard);
    }
    out
}

pub(super) fn sessions_by_key() -> std::collections::HashMap<(u32, [u8; 16]), i64> {
    let mut m = std::collections::HashMap::new();
    let slots = SLOTS.load(Relaxed);
    for i in 0..SLOT_COUNT.load(Relaxed) {
        // SAFETY: i < SLOT_COUNT; atomics read without lock (see the module header).
        let s = unsafe { &*slots.add(i as usize) };
        if s.set.load(Relaxed) {
            let mut ws = [0u8; 16];
            ws[..8].copy_from_slice(&s.hi.load(Relaxed).to_be_bytes());
            ws[8..].copy_from_slice(&s.lo.load(Relaxed).to_be_bytes());
            *m.entry((s.dbid.load(Relaxed) as u32, ws)).or_default() += 1;
        }
    }
    m
}

/// Who may read the rows of `workspace_stats`: roles with the privileges of `pg_read_all_stats`
/// (superusers have every role's) or of the extension's owner. The claimed context counts for
/// nothing: anyone can claim any workspace.
pub(super) fn can_read_stats() -> bool {
    // SAFETY: catalog lookups on the current user.
    let user = unsafe { pg_sys::GetUserId() };
    // SAFETY: as above.
    if unsafe { pg_sys::has_privs_of_role(user, pg_sys::Oid::from(pg_sys::ROLE_PG_READ_ALL_STATS)) }
    {
        return true;
    }
    let owner = crate::pg::local::internal(|| {
        crate::pg::spi::one::<pg_sys::Oid>(
            "SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'tenancy'",
            &[],
        )
    });
    // SAFETY: as above.
    matches!(owner, Ok(Some(owner)) if unsafe { pg_sys::has_privs_of_role(user, owner) })
}

#[allow(clippy::type_complexity)]
type StatsRow = (
    pgrx::Uuid,
    pg_sys::Oid,
    i64,
    i64,
    i64,
    f64,
    f64,
    f64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    f64,
    i64,
    i64,
);

fn stats_rows_all() -> Result<Vec<StatsRow>, pgrx::pg_sys::panic::ErrorReport> {
    let shared = require_preloaded()?;
    if !can_read_stats() {
        return Ok(Vec::new());
    }
    let sessions = sessions_by_key();
    Ok(copy_entries(shared, true)
        .into_iter()
        .filter(|s| s.key.kind == WORKSPACE)
        .map(|s| {
            let ms = |ns: u64| ns as f64 / 1e6;
            (
                pgrx::Uuid::from_bytes(s.key.ws),
                s.key.dbid,
                s.v[0] as i64,
                s.v[1] as i64,
                s.v[2] as i64,
                ms(s.v[3]),
                ms(s.v[4]),
                ms(s.v[5]),
                s.v[6] as i64,
                s.v[7] as i64,
                s.v[8] as i64,
                s.v[9] as i64,
                s.v[10] as i64,
                s.v[11] as i64,
                s.v[12] as i64,
                ms(s.v[13]),
                sessions
                    .get(&(u32::from(s.key.dbid), s.key.ws))
                    .copied()
                    .unwrap_or(0),
                s.last,
            )
        })
        .collect())
}

/// `tenancy._workspace_stats()` since 0.4.0 (C symbol `stats_rows_v2_wrapper`): with the
/// admission counters.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_restricted, name = "_workspace_stats")]
pub(super) fn stats_rows_v2() -> Result<
    TableIterator<
        'static,
        (
            name!(workspace_id, pgrx::Uuid),
            name!(dbid, pg_sys::Oid),
            name!(queries, i64),
            name!(nested_queries, i64),
            name!(rows, i64),
            name!(exec_time_ms, f64),
            name!(plan_time_ms, f64),
            name!(cpu_time_ms, f64),
            name!(quota_rows_added, i64),
            name!(quota_rows_removed, i64),
            name!(quota_rejections, i64),
            name!(statements_admitted, i64),
            name!(statements_waited, i64),
            name!(admission_rejections, i64),
            name!(statement_timeouts, i64),
            name!(wait_time_ms, f64),
            name!(sessions, i64),
            name!(last_activity_us, i64),
        ),
    >,
    pgrx::pg_sys::panic::ErrorReport,
> {
    Ok(TableIterator::new(stats_rows_all()?))
}

/// `tenancy._workspace_stats_other()` (0.6.0): per database, the figures of its evicted
/// workspaces and of the statements that got no entry of their own (the rows of
/// `tenancy.workspace_stats_other`). Visible to the readers of `workspace_stats`.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_restricted, name = "_workspace_stats_other")]
pub(super) fn stats_other() -> Result<
    TableIterator<
        'static,
        (
            name!(dbid, pg_sys::Oid),
            name!(queries, i64),
            name!(nested_queries, i64),
            name!(rows, i64),
            name!(exec_time_ms, f64),
            name!(plan_time_ms, f64),
            name!(cpu_time_ms, f64),
            name!(quota_rows_added, i64),
            name!(quota_rows_removed, i64),
            name!(quota_rejections, i64),
            name!(statements_admitted, i64),
            name!(statements_waited, i64),
            name!(admission_rejections, i64),
            name!(statement_timeouts, i64),
            name!(wait_time_ms, f64),
            name!(last_activity_us, i64),
        ),
    >,
    pgrx::pg_sys::panic::ErrorReport,
> {
    let shared = require_preloaded()?;
    if !can_read_stats() {
        return Ok(TableIterator::new(Vec::new()));
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    let rows: Vec<_> = copy_entries(shared, true)
        .into_iter()
        .filter(|s| s.key.kind == OTHER)
        .map(|s| {
            let v = s.v.map(|x| x as i64);
            (
                s.key.dbid,
                v[0],
                v[1],
                v[2],
                ms(s.v[3]),
                ms(s.v[4]),
                ms(s.v[5]),
                v[6],
                v[7],
                v[8],
                v[9],
                v[10],
                v[11],
                v[12],
                ms(s.v[13]),
                s.last,
            )
        })
        .collect();
    Ok(TableIterator::new(rows))
}

/// `tenancy._workspace_stats()` as the SQL of 0.1.0 to 0.3.0 declares it (C symbol
/// `stats_rows_wrapper`, without the admission counters): kept for databases not yet updated
/// (see `crate::compat`).
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
pub(super) fn stats_rows() -> Result<
    TableIterator<
        'static,
        (
            name!(workspace_id, pgrx::Uuid),
            name!(dbid, pg_sys::Oid),
            name!(queries, i64),
            name!(nested_queries, i64),
            name!(rows, i64),
            name!(exec_time_ms, f64),
            name!(plan_time_ms, f64),
            name!(cpu_time_ms, f64),
            name!(quota_rows_added, i64),
            name!(quota_rows_removed, i64),
            name!(quota_rejections, i64),
            name!(sessions, i64),
            name!(last_activity_us, i64),
        ),
    >,
    pgrx::pg_sys::panic::ErrorReport,
> {
    Ok(TableIterator::new(stats_rows_all()?.into_iter().map(|r| {
        (
            r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9, r.10, r.16, r.17,
        )
    })))
}

/// `tenancy._stats_info()` since 0.2.0 (C symbol `stats_info_v2_wrapper`).
#[pg_extern(volatile, parallel_restricted, name = "_stats_info")]
pub(super) fn stats_info_v2() -> Result<
    TableIterator<
        'static,
        (
            name!(capacity, i64),
            name!(entries, i64),
            name!(evictions, i64),
            name!(refused_statements, i64),
            name!(shared_memory_bytes, i64),
            name!(bytes_per_entry, i64),
            name!(last_reset_us, i64),
        ),
    >,
    pgrx::pg_sys::panic::ErrorReport,
> {
    let shared = require_preloaded()?;
    let hash = HASH.load(Relaxed);
    // SAFETY: shared lock for a consistent entry count.
    let entries = unsafe {
        let _lock = LwLockGuard::shared(shared.lock);
        workspace_entries(shared, hash)
    };
    let per_entry = {
        // SAFETY: pure size computations.
        let big = unsafe { pg_sys::hash_estimate_size(100_000, std::mem::size_of::<Entry>()) };
        (big / 100_000) as i64
    };
    let reset = shared.reset_at.load(Relaxed);
    Ok(TableIterator::once((
        shared.max,
        entries,
        shared.evictions.load(Relaxed) as i64,
        shared.refused.load(Relaxed) as i64,
        shared_size() as i64,
        per_entry,
        reset,
    )))
}

/// `tenancy._stats_info()` as 0.1.0's SQL declares it (C symbol `stats_info_wrapper`, six
/// columns, no `refused_statements`): kept for databases not yet updated (see `crate::compat`).
#[pg_extern(sql = false)]
pub(super) fn stats_info() -> Result<
    TableIterator<
        'static,
        (
            name!(capacity, i64),
            name!(entries, i64),
            name!(evictions, i64),
            name!(shared_memory_bytes, i64),
            name!(bytes_per_entry, i64),
            name!(last_reset_us, i64),
        ),
    >,
    pgrx::pg_sys::panic::ErrorReport,
> {
    let (capacity, entries, evictions, _refused, bytes, per_entry, reset) =
        stats_info_v2()?.next().expect("one row");
    Ok(TableIterator::once((
        capacity, entries, evictions, bytes, per_entry, reset,
    )))
}

/// Remove the statistics of one workspace (all databases), or of everything when NULL.
#[pg_extern(volatile, parallel_unsafe)]
pub(super) fn reset_stats(
    workspace: default!(Option<pgrx::Uuid>, "NULL"),
) -> Result<(), pgrx::pg_sys::panic::ErrorReport> {
    let shared = require_preloaded()?;
    let hash = HASH.load(Relaxed);
    let target = workspace.map(|w| *w.as_bytes());
    // SAFETY: exclusive lock while removing entries.
    unsafe {
        let _lock = LwLockGuard::exclusive(shared.lock);
        let mut keys = Vec::new();
        each_entry(hash, |e: &Entry| {
            // all: the other entries too; one workspace: its entries in every database
            if target.is_none() || (e.key.kind == WORKSPACE && target == Some(e.key.ws)) {
                keys.push(e.key);
            }
        });
        crate::pg::shmem::remove_keys(hash, &keys);
        let others = keys.iter().filter(|k| k.kind == OTHER).count() as i64;
        shared.others.fetch_sub(others, Relaxed);
        if target.is_none() {
            shared
                .reset_at
                .store(pg_sys::GetCurrentTimestamp(), Relaxed);
        }
    }
    Ok(())
}
