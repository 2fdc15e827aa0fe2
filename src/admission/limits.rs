//! The limits of `tenancy.workspace_limit`, cached per backend: the whole table is read once
//! (as its owner, with a fresh snapshot) and kept until a change commits (the table's statement
//! trigger invalidates its relcache entry in every backend) or the extension is created or
//! dropped. A database without the table (extension not installed, or its SQL older than
//! 0.4.0) has no limits.

use std::collections::HashMap;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::pg::local::BackendLocal;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub max_active: Option<u32>,
    pub max_wait_ms: Option<u64>,
    pub statement_timeout_ms: Option<u64>,
}

impl Limits {
    fn any(&self) -> bool {
        self.max_active.is_some() || self.statement_timeout_ms.is_some()
    }
}

#[derive(Default)]
struct Cache {
    loaded: bool,
    /// oid of tenancy.workspace_limit (InvalidOid: no such table here)
    table: pg_sys::Oid,
    default: Option<Limits>,
    own: HashMap<[u8; 16], Limits>,
}

static CACHE: BackendLocal<Option<Cache>> = BackendLocal::new(None);

/// Relcache invalidation: the limits table (or everything) changed.
pub(super) fn invalidate(relid: pg_sys::Oid) {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let drop_it = match c.as_ref() {
            Some(cache) => {
                relid == pg_sys::InvalidOid
                    || relid == cache.table
                    || cache.table == pg_sys::InvalidOid
            }
            None => false,
        };
        if drop_it {
            *c = None;
            super::tenancy_admission_none.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    });
}

/// The limits that apply to `ws` (None: none). In a transaction.
pub(super) fn of(ws: &[u8; 16]) -> Option<Limits> {
    let cached = CACHE.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|c| c.loaded)
            .map(|c| c.own.get(ws).copied().or(c.default))
    });
    if let Some(l) = cached {
        return l.filter(Limits::any);
    }
    // tenancy's own queries (not admitted: no recursion into this lookup)
    let cache = crate::pg::local::internal(load);
    let none = cache.default.is_none_or(|d| !d.any()) && !cache.own.values().any(Limits::any);
    super::tenancy_admission_none.store(none as u32, std::sync::atomic::Ordering::Relaxed);
    let l = cache.own.get(ws).copied().or(cache.default);
    CACHE.with(|c| *c.borrow_mut() = Some(cache));
    l.filter(Limits::any)
}

fn load() -> Cache {
    let mut cache = Cache {
        loaded: true,
        ..Default::default()
    };
    // SAFETY: catalog cache lookups in a transaction.
    let (table, owner) = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"tenancy".as_ptr(), true);
        let rel = if nsp == pg_sys::InvalidOid {
            pg_sys::InvalidOid
        } else {
            pg_sys::get_relname_relid(c"workspace_limit".as_ptr(), nsp)
        };
        (rel, rel_owner(rel))
    };
    cache.table = table;
    // SAFETY: catalog lookup in a transaction.
    if table == pg_sys::InvalidOid
        || unsafe { pg_sys::get_extension_oid(c"tenancy".as_ptr(), true) } == pg_sys::InvalidOid
    {
        return cache;
    }
    // As the table's owner (application roles have no privilege on it), with a fresh snapshot
    // (what is cached outlives this transaction); the caller runs this as tenancy's own query.
    let rows = {
        crate::pg::scope::as_user(owner, || {
            Spi::connect(|_client| {
                crate::pg::spi::select_latest(
                    "SELECT workspace_id::text, max_active::int8,
                            (extract(epoch FROM max_wait) * 1000)::int8,
                            (extract(epoch FROM statement_timeout) * 1000)::int8
                       FROM tenancy.workspace_limit",
                    &[],
                )
                .map(|rows| {
                    rows.into_iter()
                        .map(|r| {
                            // SAFETY: datums of the columns selected above (text, then int8s).
                            let ws = r[0].and_then(|d| unsafe { String::from_datum(d, false) });
                            let int = |i: usize| r[i].map(|d| d.value() as i64);
                            (ws, int(1), int(2), int(3))
                        })
                        .collect::<Vec<_>>()
                })
            })
        })
    };
    let Ok(rows) = rows else { return cache };
    for (ws, max_active, max_wait, timeout) in rows {
        let ws = match ws {
            None => None,
            Some(text) => match crate::uuid_text::parse(text.as_bytes()) {
                Some(ws) => Some(ws),
                None => continue,
            },
        };
        let limits = Limits {
            max_active: max_active.map(|m| m.clamp(1, u32::MAX as i64) as u32),
            max_wait_ms: max_wait.map(|m| m.max(0) as u64),
            statement_timeout_ms: timeout.map(|m| m.max(1) as u64),
        };
        match ws {
            None => cache.default = Some(limits),
            Some(ws) => {
                cache.own.insert(ws, limits);
            }
        }
    }
    cache
}

fn rel_owner(rel: pg_sys::Oid) -> pg_sys::Oid {
    let superuser = pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID);
    if rel == pg_sys::InvalidOid {
        return superuser;
    }
    crate::pg::catalog::rel_owner(rel)
        .ok()
        .flatten()
        .unwrap_or(superuser)
}
