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
                bump(shared, &keys);
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

/// The change trigger: statement-level AFTER INSERT, UPDATE, DELETE (with transition tables)
/// and TRUNCATE. Argument: the workspace column. Notes the workspaces the statement touched.
/// Without preload it does nothing (the stamps are not kept; `change_stamp` says so).
///
/// # Safety
/// `td` is the TriggerData of a statement-level AFTER trigger firing.
unsafe fn change_trigger(td: &pg_sys::TriggerData) {
    if shared().is_none() {
        return;
    }
    // SAFETY: see the function's obligations.
    unsafe {
        let rel = td.tg_relation;
        let relid = (*rel).rd_id;
        let event = td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
        if event == pg_sys::TRIGGER_EVENT_TRUNCATE {
            note(Key::new(relid, None));
            return;
        }
        let trigger = &*td.tg_trigger;
        if trigger.tgnargs < 1 {
            TenancyError::new(
                Code::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
                "tenancy._change_trigger() needs the workspace column as its argument",
            )
            .hint("Install it with tenancy.track_changes(); do not create the trigger by hand.")
            .raise();
        }
        let column = *trigger.tgargs;
        let attnum = pg_sys::get_attnum(relid, column);
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
        for store in [td.tg_newtable, td.tg_oldtable] {
            if !store.is_null() {
                crate::pg::transition::each_uuid(store, rel, attnum as i32, |ws| {
                    note(Key::new(relid, Some(ws)))
                });
            }
        }
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
        let context = (*fcinfo).context;
        let is_trigger = !context.is_null() && (*context).type_ == pg_sys::NodeTag::T_TriggerData;
        if !is_trigger {
            TenancyError::new(
                Code::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "trigger functions can only be called as triggers",
            )
            .detail("tenancy._change_trigger() was called directly.")
            .hint("tenancy.track_changes() installs it.")
            .raise();
        }
        let td = &*context.cast::<pg_sys::TriggerData>();
        let event = td.tg_event;
        if event & pg_sys::TRIGGER_EVENT_ROW != 0
            || event & pg_sys::TRIGGER_EVENT_TIMINGMASK != pg_sys::TRIGGER_EVENT_AFTER
        {
            TenancyError::new(
                Code::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
                "tenancy._change_trigger() must be fired AFTER ... FOR EACH STATEMENT",
            )
            .hint("Install it with tenancy.track_changes(); do not create the trigger by hand.")
            .raise();
        }
        change_trigger(td);
        pg_sys::Datum::from(0)
    }
}
