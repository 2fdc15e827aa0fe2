//! Two-phase commit. Citus commits a transaction that wrote more than one shard with `PREPARE
//! TRANSACTION` on each worker, then `COMMIT PREPARED` (or `ROLLBACK PREPARED`), normally on the
//! same connection, so in the same backend; after a failure its recovery, or a person, may
//! finish it from another backend, or after a restart.
//!
//! At `PREPARE` the transaction's notes are settled the way that can only over-count: its
//! reservations stay in `used` (as if it commits), its removals are not subtracted (as if it
//! rolls back), the inserts its own removals covered (offsets) are added, and the entries it
//! touched stay held (`in_flight`, so they are not evicted and recounted while its rows are
//! invisible). This backend keeps what is left to do under the transaction's GID: `COMMIT
//! PREPARED` subtracts the removals, `ROLLBACK PREPARED` the reservations and offsets, and both
//! let go of the entries. A GID this backend did not prepare (another backend's, one from
//! before a restart) makes the database's idle entries be recounted on next use; the entries
//! held by a transaction another backend prepared stay as they are (over-counted, never
//! under: a workspace may be refused a row it could have had, never given one too many), until
//! the server restarts.

use super::*;

struct Prepared {
    gid: String,
    /// removals, subtracted at COMMIT PREPARED
    deferred: Vec<(Key, i64)>,
    /// reservations and offsets, subtracted at ROLLBACK PREPARED
    undo: Vec<(Key, i64)>,
    /// entries held until the transaction is finished
    touched: Vec<Key>,
}

#[derive(Default)]
struct State {
    /// the GID of the PREPARE TRANSACTION running now
    preparing: Option<String>,
    /// COMMIT PREPARED (true) or ROLLBACK PREPARED (false) of a GID, running now
    finishing: Option<(bool, String)>,
    prepared: Vec<Prepared>,
}

static STATE: BackendLocal<State> = BackendLocal::new(State {
    preparing: None,
    finishing: None,
    prepared: Vec::new(),
});

/// A utility statement is about to run (tenancy's ProcessUtility hook): note the GID of a
/// PREPARE TRANSACTION, COMMIT PREPARED or ROLLBACK PREPARED.
pub(crate) fn on_utility(pstmt: *mut pg_sys::PlannedStmt) {
    // SAFETY: the statement PostgreSQL is about to run; utilityStmt is a Node.
    unsafe {
        let stmt = (*pstmt).utilityStmt;
        if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_TransactionStmt {
            return;
        }
        let t = stmt.cast::<pg_sys::TransactionStmt>();
        if (*t).gid.is_null() {
            return;
        }
        let gid = std::ffi::CStr::from_ptr((*t).gid)
            .to_string_lossy()
            .into_owned();
        use pg_sys::TransactionStmtKind::*;
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            match (*t).kind {
                TRANS_STMT_PREPARE => s.preparing = Some(gid),
                TRANS_STMT_COMMIT_PREPARED => s.finishing = Some((true, gid)),
                TRANS_STMT_ROLLBACK_PREPARED => s.finishing = Some((false, gid)),
                _ => {}
            }
        });
    }
}

/// XACT_EVENT_PREPARE: settle the notes as described in the module docs.
pub(super) fn prepare(local: Local) {
    let gid = STATE.with(|s| s.borrow_mut().preparing.take());
    let mut p = Prepared {
        gid: gid.unwrap_or_default(),
        deferred: Vec::new(),
        undo: Vec::new(),
        touched: local.touched.iter().map(|(k, _)| *k).collect(),
    };
    for op in &local.ops {
        match op.kind {
            Kind::Reserve => p.undo.push((op.key, op.n)),
            Kind::Offset => {
                with_entry(&op.key, |e| e.used.fetch_add(op.n, Relaxed));
                p.undo.push((op.key, op.n));
            }
            Kind::Release => p.deferred.push((op.key, op.n)),
        }
    }
    for (relid, _) in &local.exclusive {
        remove_table(*relid);
    }
    // kept even without notes: its COMMIT PREPARED here must not be taken for one prepared
    // elsewhere (Citus prepares every distributed DDL and multi-shard write on the workers)
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.prepared.push(p);
        if s.prepared.len() > MAX_EMPTY_KEPT {
            if let Some(i) = s.prepared.iter().position(|p| p.touched.is_empty()) {
                s.prepared.remove(i);
            }
        }
    });
}

/// GIDs of prepared transactions without notes one backend remembers (the oldest forgotten
/// first; one finished here after that recounts the database's idle counters, which is safe).
const MAX_EMPTY_KEPT: usize = 256;

/// XACT_EVENT_COMMIT: the transaction that just committed may have finished a prepared one.
pub(super) fn finish_on_commit() {
    let Some((commit, gid)) = STATE.with(|s| s.borrow_mut().finishing.take()) else {
        return;
    };
    let mine = STATE.with(|s| {
        let mut s = s.borrow_mut();
        let at = s.prepared.iter().position(|p| p.gid == gid);
        at.map(|i| s.prepared.swap_remove(i))
    });
    let Some(p) = mine else {
        remove_database_idle();
        return;
    };
    for (key, n) in if commit { &p.deferred } else { &p.undo } {
        with_entry(key, |e| e.used.fetch_sub(*n, Relaxed));
    }
    for key in &p.touched {
        with_entry(key, |e| e.in_flight.fetch_sub(1, Relaxed));
    }
}

/// XACT_EVENT_ABORT: a PREPARE or a COMMIT/ROLLBACK PREPARED that failed did nothing.
pub(super) fn forget_statement() {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.preparing = None;
        s.finishing = None;
    });
}
