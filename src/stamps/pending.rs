//! What this transaction changed, noted by the change trigger and bumped at commit: per key,
//! the outermost subtransaction that noted it (a rolled-back savepoint drops what only it
//! noted; a released one hands it to its parent).

use std::collections::BTreeMap;

use super::*;
use crate::pg::local::BackendLocal;

static PENDING: BackendLocal<BTreeMap<Key, pg_sys::SubTransactionId>> =
    BackendLocal::new(BTreeMap::new());

fn note(key: Key) {
    // SAFETY: reading the current subtransaction id.
    let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
    PENDING.with(|p| {
        p.borrow_mut().entry(key).or_insert(sub);
    });
}

/// Whether this transaction noted a change of `relid` (in this database).
pub(super) fn wrote(relid: pg_sys::Oid) -> bool {
    let first = Key::new(relid, None);
    let low = Key { kind: 0, ..first };
    let high = Key {
        kind: u32::MAX,
        _pad: u32::MAX,
        ws: [0xff; 16],
        ..first
    };
    PENDING.with(|p| p.borrow().range(low..=high).next().is_some())
}

/// Check hook of `tenancy.change_channel`: empty, or a name NOTIFY accepts (shorter than
/// NAMEDATALEN), so that no commit can fail on it later.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn check_channel(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to a (possibly null) NUL-terminated string.
    let len = unsafe {
        if (*newval).is_null() {
            0
        } else {
            CStr::from_ptr(*newval).to_bytes().len()
        }
    };
    if len >= pg_sys::NAMEDATALEN as usize {
        // SAFETY: the GUC_check_* globals are meant to be set by check hooks.
        unsafe {
            pg_sys::GUC_check_errcode(Code::ERRCODE_INVALID_PARAMETER_VALUE as i32);
            pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(
                c"tenancy.change_channel must be shorter than 64 bytes (a NOTIFY channel name)."
                    .as_ptr(),
            );
        }
        return false;
    }
    true
}

/// Before commit: one NOTIFY per noted key on `tenancy.change_channel`, if set. PostgreSQL
/// queues them now and delivers them only if the transaction commits (after it is visible), and
/// drops duplicates within a transaction.
fn notify() {
    let Some(channel) = CHANNEL.get() else { return };
    if channel.as_bytes().is_empty() {
        return;
    }
    let keys: Vec<Key> = PENDING.with(|p| p.borrow().keys().copied().collect());
    for key in keys {
        let table = crate::pg::catalog::qualified_name(pg_sys::Oid::from(key.relid));
        let workspace = (key.kind == WORKSPACE).then(|| crate::uuid_text::canonical(&key.ws));
        let payload = serde_json::json!({ "table": table, "workspace": workspace }).to_string();
        let payload = std::ffi::CString::new(payload).expect("JSON has no NUL");
        // SAFETY: a channel name the check hook accepted and a short payload, in a transaction.
        unsafe { crate::pg::ffi::async_notify(&channel, &payload) };
    }
}

pub(crate) fn register_xact_callbacks() {
    // SAFETY: registering 'static callbacks, once per process that loads the library.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if PENDING.with(|p| p.borrow().is_empty()) {
        return;
    }
    match event {
        XACT_EVENT_PRE_COMMIT => {
            if let Some(shared) = shared() {
                if let Err(e) = prepare_commit(shared) {
                    e.raise();
                }
                notify();
            }
        }
        XACT_EVENT_PRE_PREPARE => {
            TenancyError::new(
                Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                "cannot PREPARE a transaction that changed rows of a table with change stamps",
            )
            .detail("Its commit would happen in another session, which could not move the stamps of what it changed.")
            .hint("Commit the transaction instead, or untrack the table (tenancy.untrack_changes).")
            .raise();
        }
        XACT_EVENT_COMMIT => {
            let keys: Vec<Key> =
                PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()).into_keys().collect());
            if let Some(shared) = shared() {
                bump(shared, keys);
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PREPARE => PENDING.with(|p| p.borrow_mut().clear()),
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    my: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    match event {
        SUBXACT_EVENT_ABORT_SUB => PENDING.with(|p| p.borrow_mut().retain(|_, s| *s != my)),
        SUBXACT_EVENT_COMMIT_SUB => PENDING.with(|p| {
            for s in p.borrow_mut().values_mut() {
                if *s == my {
                    *s = parent;
                }
            }
        }),
        _ => {}
    }
}

/// Backend-local: the workspace column's attribute number per (relation, column name): a row
/// trigger runs per row, so the syscache lookup by name is done once per relation and column.
/// Dropped on any relcache invalidation of the relation (a column dropped or added changes it).
static ATTNUMS: BackendLocal<Vec<(u32, std::ffi::CString, i32)>> = BackendLocal::new(Vec::new());

/// Its part of tenancy's one relcache callback (`crate::hooks`).
pub(crate) fn on_relcache(relid: pg_sys::Oid) {
    // SAFETY: called from tenancy's relcache callback with PostgreSQL's arguments.
    unsafe { relcache_callback(pg_sys::Datum::from(0), relid) }
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let relid = u32::from(relid);
    ATTNUMS.with(|a| a.borrow_mut().retain(|(r, _, _)| relid != 0 && *r != relid));
}

/// # Safety
/// `rel` is the open trigger relation; `column` a NUL-terminated trigger argument.
unsafe fn attnum_of(rel: pg_sys::Relation, column: *const std::ffi::c_char) -> i32 {
    // SAFETY: see the function's obligations.
    unsafe {
        let relid = u32::from((*rel).rd_id);
        let name = CStr::from_ptr(column);
        if let Some(n) = ATTNUMS.with(|a| {
            a.borrow()
                .iter()
                .find(|(r, c, _)| *r == relid && c.as_c_str() == name)
                .map(|e| e.2)
        }) {
            return n;
        }
        let n = i32::from(pg_sys::get_attnum((*rel).rd_id, column));
        if n > 0 {
            ATTNUMS.with(|a| {
                let mut a = a.borrow_mut();
                if a.len() >= 256 {
                    a.clear(); // bounded: a backend rarely writes that many tracked tables
                }
                a.push((relid, name.to_owned(), n));
            });
        }
        n
    }
}

/// The change trigger: BEFORE INSERT, UPDATE, DELETE FOR EACH ROW (no transition tables, no
/// after-trigger queue: the cheapest form) and AFTER TRUNCATE FOR EACH STATEMENT. Arguments: the
/// workspace column and the tracked table's oid (a partition's cloned trigger notes the
/// partitioned table). Notes the row's workspace (both of an UPDATE that moves it). Without
/// preload it does nothing (the stamps are not kept; `change_stamp` says so). Returns the row
/// the statement goes on with.
///
/// # Safety
/// `td` is the TriggerData of a firing of a trigger installed by `track_changes()`.
unsafe fn change_trigger(td: &pg_sys::TriggerData) -> pg_sys::Datum {
    // SAFETY: see the function's obligations.
    unsafe {
        let event = td.tg_event;
        let op = event & pg_sys::TRIGGER_EVENT_OPMASK;
        let is_row = event & pg_sys::TRIGGER_EVENT_ROW != 0;
        let before = event & pg_sys::TRIGGER_EVENT_TIMINGMASK == pg_sys::TRIGGER_EVENT_BEFORE;
        // the row to go on with
        let result = if op == pg_sys::TRIGGER_EVENT_UPDATE {
            td.tg_newtuple
        } else {
            td.tg_trigtuple
        };
        let valid = if op == pg_sys::TRIGGER_EVENT_TRUNCATE {
            !is_row && !before
        } else {
            is_row && before
        };
        let trigger = &*td.tg_trigger;
        if !valid || trigger.tgnargs < 1 {
            TenancyError::new(
                Code::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
                "tenancy._change_trigger() must be fired as tenancy.track_changes() installs it",
            )
            .detail("BEFORE INSERT, UPDATE or DELETE FOR EACH ROW, or AFTER TRUNCATE FOR EACH STATEMENT, with the workspace column as argument.")
            .hint("Install it with tenancy.track_changes(); do not create the trigger by hand.")
            .raise();
        }
        if shared().is_none() {
            return pg_sys::Datum::from(result);
        }
        let rel = td.tg_relation;
        let tracked = if trigger.tgnargs >= 2 {
            CStr::from_ptr(*trigger.tgargs.add(1))
                .to_str()
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
                .map(pg_sys::Oid::from)
                .unwrap_or((*rel).rd_id)
        } else {
            (*rel).rd_id
        };
        if op == pg_sys::TRIGGER_EVENT_TRUNCATE {
            note(Key::new(tracked, None));
            return pg_sys::Datum::from(0);
        }
        let column = *trigger.tgargs;
        let attnum = attnum_of(rel, column);
        if attnum <= 0 {
            TenancyError::new(
                Code::ERRCODE_UNDEFINED_COLUMN,
                format!(
                    "the workspace column {:?} of change tracking no longer exists",
                    CStr::from_ptr(column).to_string_lossy()
                ),
            )
            .hint("Track the table again with tenancy.track_changes(table, column).")
            .raise();
        }
        let desc = (*rel).rd_att;
        let rows: &[*mut pg_sys::HeapTupleData] = if op == pg_sys::TRIGGER_EVENT_UPDATE {
            &[td.tg_trigtuple, td.tg_newtuple]
        } else {
            &[td.tg_trigtuple]
        };
        for &tuple in rows {
            if tuple.is_null() {
                continue;
            }
            let mut isnull = false;
            let d = pg_sys::heap_getattr(tuple, attnum, desc, &mut isnull);
            if !isnull {
                note(Key::new(tracked, Some(*d.cast_mut_ptr::<[u8; 16]>())));
            }
        }
        pg_sys::Datum::from(result)
    }
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_tenancy_change_trigger() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn tenancy_change_trigger(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: a call from the function manager.
    unsafe {
        let td = crate::pg::trigger::require_trigger_call(
            fcinfo,
            "tenancy._change_trigger()",
            "tenancy.track_changes() installs it.",
        );
        change_trigger(&*td)
    }
}
