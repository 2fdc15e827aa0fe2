//! Trigger functions in C: refusing a direct call, and reading a statement's transition tables
//! (the tuplestores of an AFTER ... FOR EACH STATEMENT trigger with REFERENCING NEW/OLD TABLE)
//! directly, without SPI.

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode as Code;

use crate::error::TenancyError;

/// The C entry point of a trigger function: a direct call, not a trigger's, is refused as
/// PL/pgSQL refuses it (39P01), naming the function; `hint` says what installs it.
///
/// # Safety
/// `fcinfo` comes from PostgreSQL's function manager.
pub(crate) unsafe fn require_trigger_call(
    fcinfo: pg_sys::FunctionCallInfo,
    name: &str,
    hint: &str,
) -> *mut pg_sys::TriggerData {
    // SAFETY: see the function's obligations.
    let context = unsafe { (*fcinfo).context };
    // SAFETY: a non-null context node has a valid tag.
    if context.is_null() || unsafe { (*context).type_ } != pg_sys::NodeTag::T_TriggerData {
        TenancyError::new(
            Code::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            "trigger functions can only be called as triggers",
        )
        .detail(format!("{name} was called directly."))
        .hint(hint)
        .raise();
    }
    context.cast()
}

/// Visit every row of `store` (rows of `rel`'s row type) in a slot whose attributes up to
/// `attnum` (1-based) are deformed. A read pointer of our own (as NamedTuplestoreScan takes one)
/// leaves other readers of the store alone.
///
/// # Safety
/// `store` is a transition tuplestore of the current trigger firing on `rel`.
pub(crate) unsafe fn each_row(
    store: *mut pg_sys::Tuplestorestate,
    rel: pg_sys::Relation,
    attnum: i32,
    mut f: impl FnMut(*mut pg_sys::TupleTableSlot),
) {
    // SAFETY: see the function's obligations; the slot is dropped before returning.
    unsafe {
        let desc = (*rel).rd_att;
        let slot = pg_sys::MakeSingleTupleTableSlot(desc, &raw const pg_sys::TTSOpsMinimalTuple);
        let reader = pg_sys::tuplestore_alloc_read_pointer(store, pg_sys::EXEC_FLAG_REWIND as i32);
        pg_sys::tuplestore_select_read_pointer(store, reader);
        pg_sys::tuplestore_rescan(store);
        while pg_sys::tuplestore_gettupleslot(store, true, false, slot) {
            if ((*slot).tts_nvalid as i32) < attnum {
                pg_sys::slot_getsomeattrs_int(slot, attnum);
            }
            f(slot);
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
    }
}

/// The value of the uuid attribute `attnum` of a deformed slot; None when NULL.
///
/// # Safety
/// `slot` holds a row whose attribute `attnum` is a deformed uuid.
pub(crate) unsafe fn uuid_at(slot: *mut pg_sys::TupleTableSlot, attnum: i32) -> Option<[u8; 16]> {
    let at = (attnum - 1) as usize;
    // SAFETY: see the function's obligations (a uuid Datum points to its 16 bytes).
    unsafe {
        if *(*slot).tts_isnull.add(at) {
            None
        } else {
            Some(*(*(*slot).tts_values.add(at)).cast_mut_ptr::<[u8; 16]>())
        }
    }
}
