//! Settling reservations at transaction and subtransaction end, and tables whose rows change
//! wholesale in a transaction (counted directly until it ends).

use super::*;

/// The table's rows change wholesale in this transaction (TRUNCATE, recount, release, drop),
/// under a lock that excludes every other writer: count it directly until the transaction
/// ends, then drop its entries.
pub(crate) fn forget_table(relid: pg_sys::Oid) {
    if !enabled() {
        return;
    }
    let lvl = level();
    LOCAL.with(|l| {
        let mut local = l.borrow_mut();
        if !local.exclusive.iter().any(|(r, _)| *r == relid) {
            local.exclusive.push((relid, lvl));
        }
    });
}

/// Settle the notes at the end of the top-level transaction.
pub(super) fn settle(commit: bool) {
    let local = LOCAL.with(|l| std::mem::take(&mut *l.borrow_mut()));
    if !commit && !local.marks.is_empty() {
        MARK_LOST.store(true, Relaxed);
    }
    if local.ops.is_empty() && local.touched.is_empty() && local.exclusive.is_empty() {
        return;
    }
    for op in &local.ops {
        let delta = match (commit, op.kind) {
            (true, Kind::Release) => -op.n,
            (true, Kind::Offset) => op.n,
            (false, Kind::Reserve) => -op.n,
            _ => continue,
        };
        with_entry(&op.key, |e| e.used.fetch_add(delta, Relaxed));
    }
    for (key, _) in &local.touched {
        with_entry(key, |e| e.in_flight.fetch_sub(1, Relaxed));
    }
    for (relid, _) in &local.exclusive {
        remove_table(*relid);
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => {
            settle(true);
            prepared::finish_on_commit();
        }
        XACT_EVENT_PREPARE => {
            let local = LOCAL.with(|l| std::mem::take(&mut *l.borrow_mut()));
            prepared::prepare(local);
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            settle(false);
            prepared::forget_statement();
        }
        _ => {}
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    _my_subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    use pg_sys::SubXactEvent::*;
    let lvl = level();
    match event {
        SUBXACT_EVENT_ABORT_SUB => {
            let (undo, released) = LOCAL.with(|l| {
                let mut l = l.borrow_mut();
                l.exclusive.retain(|(_, at)| *at < lvl);
                if l.marks.iter().any(|at| *at >= lvl) {
                    l.marks.retain(|at| *at < lvl);
                    MARK_LOST.store(true, Relaxed);
                }
                let (undo, keep): (Vec<Op>, Vec<Op>) =
                    l.ops.drain(..).partition(|o| o.level >= lvl);
                l.ops = keep;
                // every op on a key first touched at this level or deeper is in `undo`
                let (released, kept): (Vec<_>, Vec<_>) =
                    l.touched.drain(..).partition(|(_, at)| *at >= lvl);
                l.touched = kept;
                (undo, released)
            });
            for op in undo.iter().filter(|o| o.kind == Kind::Reserve) {
                with_entry(&op.key, |e| e.used.fetch_sub(op.n, Relaxed));
            }
            for (key, _) in &released {
                with_entry(key, |e| e.in_flight.fetch_sub(1, Relaxed));
            }
        }
        SUBXACT_EVENT_COMMIT_SUB => LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            for op in l.ops.iter_mut().filter(|o| o.level >= lvl) {
                op.level = lvl - 1;
            }
            for (_, at) in l.touched.iter_mut().filter(|(_, at)| *at >= lvl) {
                *at = lvl - 1;
            }
            for (_, at) in l.exclusive.iter_mut().filter(|(_, at)| *at >= lvl) {
                *at = lvl - 1;
            }
            for at in l.marks.iter_mut().filter(|at| **at >= lvl) {
                *at = lvl - 1;
            }
        }),
        _ => {}
    }
}
