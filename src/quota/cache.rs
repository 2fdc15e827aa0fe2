//! The backend-local quota caches: per enforced table, its settings and limits (read with a
//! fresh snapshot), the delta and count plans and the compiled transition reader; bounded to
//! the most recently written tables, dropped on invalidation (relcache: the config tables and
//! the table itself; syscache: functions and types, so that counted_when is checked again).

use super::*;

#[derive(Default)]
pub(super) struct Caches {
    /// `None`: looked up, not enforced.
    pub(super) tables: HashMap<pg_sys::Oid, Option<TableQuota>>,
    pub(super) plans: HashMap<(pg_sys::Oid, Event), OwnedPreparedStatement>,
    /// Per table: `SELECT count(*) ... WHERE workspace = $1 AND counted` (shared-memory path).
    pub(super) counts: HashMap<pg_sys::Oid, KeptPlan>,
    /// Per table: the compiled transition-table reader (shared-memory path); `None`: its
    /// counted_when needs the SPI query.
    pub(super) readers: HashMap<pg_sys::Oid, Option<transition::Deltas>>,
    /// The extension's config tables, whose invalidations drop the caches.
    pub(super) watched: Vec<pg_sys::Oid>,
    /// Owner of tenancy.quota_counter: the bookkeeping (settings reads, counter writes) runs as
    /// this role; `counted_when` never does (it runs as the enforced table's owner).
    pub(super) counter_owner: Option<pg_sys::Oid>,
    /// The table path's counter update ([`APPLY_SQL`]), prepared once.
    pub(super) apply: Option<OwnedPreparedStatement>,
    /// When each cached table was last written (a tick of `clock`): beyond
    /// [`MAX_CACHED_TABLES`] the least recently written table's entries are dropped.
    pub(super) last_used: HashMap<pg_sys::Oid, u64>,
    pub(super) clock: u64,
}

/// Enforced tables whose settings, plans and compiled readers one backend keeps (about 60 kB
/// each): a connection that writes thousands of enforced tables stays within a few MB; a
/// table dropped from the cache is read and compiled again at its next write.
pub(super) const MAX_CACHED_TABLES: usize = 128;

thread_local! {
    pub(super) static CACHES: RefCell<Caches> = RefCell::new(Caches::default());
}

/// Relcache invalidation callback: an invalidation of a config table (or of all relations)
/// drops every cached limit and plan. Must not raise errors or run queries.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
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
pub(super) unsafe extern "C-unwind" fn syscache_callback(
    _arg: pg_sys::Datum,
    _cache: std::ffi::c_int,
    _hash: u32,
) {
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
    pub(super) static PENDING_CLEAR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

pub(super) fn take_pending_clear(c: &mut Caches) {
    let mark_lost = shared::MARK_LOST.swap(false, std::sync::atomic::Ordering::Relaxed);
    if PENDING_CLEAR.with(|p| p.replace(false)) || mark_lost {
        c.clear();
    }
}

impl Caches {
    pub(super) fn clear(&mut self) {
        self.tables.clear();
        self.plans.clear();
        self.counts.clear();
        self.readers.clear();
        self.apply = None;
        self.counter_owner = None;
        self.last_used.clear();
    }

    pub(super) fn forget(&mut self, relid: pg_sys::Oid) {
        self.tables.remove(&relid);
        self.plans.retain(|(r, _), _| *r != relid);
        self.counts.remove(&relid);
        self.readers.remove(&relid);
        self.last_used.remove(&relid);
    }

    /// `relid` is being written: mark it used, and keep at most [`MAX_CACHED_TABLES`] tables.
    pub(super) fn touch(&mut self, relid: pg_sys::Oid) {
        self.clock += 1;
        self.last_used.insert(relid, self.clock);
        if self.last_used.len() > MAX_CACHED_TABLES {
            let oldest = self
                .last_used
                .iter()
                .min_by_key(|(_, &t)| t)
                .map(|(&r, _)| r);
            if let Some(oldest) = oldest {
                self.forget(oldest);
            }
        }
    }
}

/// Load the table's settings and limits (and the watched oids) into the cache if absent.
pub(super) fn ensure_loaded(
    caches: &mut Caches,
    client: &mut pgrx::spi::SpiClient<'_>,
    relid: pg_sys::Oid,
    qrel: pg_sys::Oid,
    citus: Option<&citus::CitusQuota>,
) -> Result<(), TenancyError> {
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
        caches.counter_owner =
            Some(owner.unwrap_or(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID)));
        caches.tables.clear();
        caches.plans.clear();
        caches.counts.clear();
    }
    if let Some(c) = citus {
        // a shard of a Citus table: its limits are read again at every firing
        let owner = caches.counter_owner.expect("set above");
        caches
            .tables
            .insert(relid, Some(citus::table_quota(c, owner)?));
        return Ok(());
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
        // a partition's settings and limits are its partitioned table's (`qrel`)
        let arg = [(pg_sys::OIDOID, pg_sys::Datum::from(qrel))];
        let cfg = crate::pg::spi::select_latest(
            "SELECT workspace_column::text, counted_when,
                    EXISTS (SELECT FROM tenancy.quota_shared_mark m WHERE m.tbl = t.tbl)
               FROM tenancy.quota_table t WHERE t.tbl = $1",
            &arg,
        )?;
        let Some(row) = cfg.first() else {
            return Ok(None);
        };
        let workspace_column = text_of(row[0]).expect("workspace_column");
        let counted_when = text_of(row[1]);
        let mut shared_counts = row[2].is_some_and(|d| d.value() != 0);
        if shared::enabled() && !shared_counts {
            // From now on tenancy.quota_counter goes stale: say so, for the day the server runs
            // without preloading tenancy (the table path refuses stale counters). An INSERT into
            // a table without unique keys never waits for anybody; if this (sub)transaction
            // rolls back, the mark goes with it and the caches are dropped, to mark again.
            client.update(
                "INSERT INTO tenancy.quota_shared_mark (tbl) VALUES ($1)",
                None,
                &[DatumWithOid::from(qrel)],
            )?;
            shared::mark_inserted();
            shared_counts = true;
        }
        let mut q = TableQuota {
            workspace_column,
            counted_when,
            default_limit: None,
            overrides: HashMap::new(),
            shared_counts,
            citus_shard: false,
        };
        q.add_limits(crate::pg::spi::select_latest(
            "SELECT workspace_id, max_rows FROM tenancy.quota_limit WHERE tbl = $1",
            &arg,
        )?);
        Ok(Some(q))
    })?;
    caches.tables.insert(relid, entry);
    Ok(())
}
