//! Saving the statistics at clean shutdown and loading them at start (`pg_stat/tenancy_stats.json`,
//! as pg_stat_statements saves its file): written by the postmaster when it exits, read (then
//! removed) by the first startup, so a crash restarts empty.

use super::*;

/// Saved at clean shutdown, read (then removed) at start, as pg_stat_statements does: a crash
/// leaves no file behind, so statistics restart empty after one.
pub(super) const STATS_FILE: &str = "pg_stat/tenancy_stats.json";
pub(super) const STATS_TMP: &str = "pg_stat/tenancy_stats.json.tmp";
pub(super) const FILE_MAGIC: &str = "tenancy workspace statistics";
pub(super) const FILE_VERSION: u32 = 1;
/// The workspace name under which a database's other entry is saved.
const OTHER_NAME: &str = "_other";

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct StatsFile {
    magic: String,
    version: u32,
    saved_at_us: i64,
    reset_at_us: i64,
    evictions: u64,
    /// Absent from files written before it existed.
    #[serde(default)]
    refused: u64,
    entries: Vec<SavedEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct SavedEntry {
    dbid: u32,
    workspace: String,
    /// queries, nested, rows, exec_ns, plan_ns, cpu_ns, rows_added, rows_removed, rejections
    counters: [u64; 9],
    /// admitted, waited, rejected, timed_out, wait_ns (absent from files written before 0.4.0)
    #[serde(default)]
    admission: [u64; 5],
    last_activity_us: i64,
}

/// Read pg_stat/tenancy_stats.json into the empty table, then remove it. Anything wrong with
/// the file is logged and ignored: it never stops the server from starting.
pub(super) unsafe fn load_file(shared: &Shared, hash: *mut pg_sys::HTAB) {
    if !SAVE.get() {
        let _ = std::fs::remove_file(STATS_FILE);
        return;
    }
    let text = match std::fs::read(STATS_FILE) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            pgrx::log!("tenancy: could not read {STATS_FILE}: {e}; starting with empty workspace statistics");
            return;
        }
    };
    let _ = std::fs::remove_file(STATS_FILE);
    let file: StatsFile = match serde_json::from_slice(&text) {
        Ok(f) => f,
        Err(e) => {
            pgrx::log!("tenancy: ignoring corrupt {STATS_FILE} ({e}); starting with empty workspace statistics");
            return;
        }
    };
    if file.magic != FILE_MAGIC || file.version != FILE_VERSION {
        pgrx::log!(
            "tenancy: ignoring {STATS_FILE}: not a tenancy statistics file of version {FILE_VERSION}; starting with empty workspace statistics"
        );
        return;
    }
    let mut loaded = 0;
    for saved in &file.entries {
        // a database's other entry is saved as workspace "_other" (older versions skip it)
        let key = if saved.workspace == OTHER_NAME {
            if shared.others.load(Relaxed) >= OTHER_ENTRIES as i64 {
                continue;
            }
            Key::other(pg_sys::Oid::from(saved.dbid))
        } else {
            let Some(ws) = crate::uuid_text::parse(saved.workspace.as_bytes()) else {
                continue;
            };
            if loaded >= shared.max {
                continue;
            }
            Key::workspace(pg_sys::Oid::from(saved.dbid), ws)
        };
        let mut found = false;
        // SAFETY: single-threaded postmaster startup; nobody else uses the table yet.
        let e = unsafe {
            pg_sys::hash_search(
                hash,
                (&key as *const Key).cast(),
                pg_sys::HASHACTION::HASH_ENTER_NULL,
                &mut found,
            )
            .cast::<Entry>()
        };
        // SAFETY: e points to an entry of our table (key in place).
        let Some(e) = (unsafe { e.as_mut() }) else {
            break;
        };
        if found {
            continue; // a duplicate in the file
        }
        if key.kind == OTHER {
            shared.others.fetch_add(1, Relaxed);
        } else {
            loaded += 1;
        }
        let c = saved.counters;
        e.queries_top = AtomicU64::new(c[0]);
        e.queries_nested = AtomicU64::new(c[1]);
        e.rows = AtomicU64::new(c[2]);
        e.exec_ns = AtomicU64::new(c[3]);
        e.plan_ns = AtomicU64::new(c[4]);
        e.cpu_ns = AtomicU64::new(c[5]);
        e.rows_added = AtomicU64::new(c[6]);
        e.rows_removed = AtomicU64::new(c[7]);
        e.quota_rejections = AtomicU64::new(c[8]);
        let a = saved.admission;
        e.admitted = AtomicU64::new(a[0]);
        e.waited = AtomicU64::new(a[1]);
        e.rejected = AtomicU64::new(a[2]);
        e.timed_out = AtomicU64::new(a[3]);
        e.wait_ns = AtomicU64::new(a[4]);
        e.last_activity = AtomicI64::new(saved.last_activity_us);
    }
    shared.evictions.store(file.evictions, Relaxed);
    shared.refused.store(file.refused, Relaxed);
    shared.reset_at.store(file.reset_at_us, Relaxed);
    pgrx::log!("tenancy: loaded statistics of {loaded} workspaces from {STATS_FILE}");
}

/// Postmaster exit: save the table unless this is a crash or saving is off.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn shmem_shutdown(code: c_int, _arg: pg_sys::Datum) {
    if code != 0 || !SAVE.get() {
        return;
    }
    let Some(shared) = shared() else { return };
    let file = StatsFile {
        magic: FILE_MAGIC.to_string(),
        version: FILE_VERSION,
        // SAFETY: plain clock read.
        saved_at_us: unsafe { pg_sys::GetCurrentTimestamp() },
        reset_at_us: shared.reset_at.load(Relaxed),
        evictions: shared.evictions.load(Relaxed),
        refused: shared.refused.load(Relaxed),
        entries: copy_entries(shared, false)
            .into_iter()
            .map(|s| SavedEntry {
                dbid: u32::from(s.key.dbid),
                workspace: if s.key.kind == OTHER {
                    OTHER_NAME.to_string()
                } else {
                    crate::uuid_text::canonical(&s.key.ws)
                },
                counters: s.v[..9].try_into().expect("9 counters"),
                admission: s.v[9..].try_into().expect("5 counters"),
                last_activity_us: s.last,
            })
            .collect(),
    };
    let result = serde_json::to_vec(&file)
        .map_err(|e| e.to_string())
        .and_then(|bytes| std::fs::write(STATS_TMP, bytes).map_err(|e| e.to_string()))
        .and_then(|()| std::fs::rename(STATS_TMP, STATS_FILE).map_err(|e| e.to_string()));
    if let Err(e) = result {
        pgrx::log!("tenancy: could not save workspace statistics to {STATS_FILE}: {e}");
        let _ = std::fs::remove_file(STATS_TMP);
    }
}
