//! Read-only SQL for the extension's own lookups: never assigns a transaction id.
//!
//! pgrx's `Spi::get_one*` and `Spi::run*` go through its "mutable" path, which asks PostgreSQL
//! for the current transaction id (assigning one): on a streaming standby that fails ("cannot
//! assign TransactionIds during recovery"), inside a parallel query too ("cannot assign XIDs
//! during a parallel operation"), and on a primary every request would burn an id and write a
//! commit record. Everything here runs `SELECT`s with `SPI_execute*(read_only)`.

use std::ffi::CString;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::error::TenancyError;

/// The first column of the first row of a read-only query (None: no row, or NULL).
pub(crate) fn one<T: FromDatum + IntoDatum>(
    sql: &str,
    args: &[DatumWithOid<'_>],
) -> Result<Option<T>, pgrx::spi::Error> {
    Spi::connect(|client| {
        let rows = client.select(sql, Some(1), args)?;
        if rows.is_empty() {
            return Ok(None);
        }
        rows.first().get_one::<T>()
    })
}

/// Run `plan` read-only with `snapshot` and `values` (none NULL); each row's datums (None for
/// NULL), valid until the SPI connection closes.
///
/// # Safety
/// SPI is connected; `values` match the plan's parameter types.
pub(crate) unsafe fn execute_with_snapshot(
    plan: pg_sys::SPIPlanPtr,
    values: &mut [pg_sys::Datum],
    snapshot: pg_sys::Snapshot,
) -> Result<Vec<Vec<Option<pg_sys::Datum>>>, TenancyError> {
    let nulls = vec![b' ' as std::ffi::c_char; values.len()];
    // SAFETY: see the function's obligations; SPI copies the snapshot when it pushes it.
    unsafe {
        let rc = pg_sys::SPI_execute_snapshot(
            plan,
            values.as_mut_ptr(),
            nulls.as_ptr(),
            snapshot,
            std::ptr::null_mut(),
            true,
            false,
            0,
        );
        let table = pg_sys::SPI_tuptable;
        if rc != pg_sys::SPI_OK_SELECT as i32 || table.is_null() {
            return Err(TenancyError::new(
                Code::ERRCODE_INTERNAL_ERROR,
                "tenancy: internal query failed",
            )
            .detail(format!("SPI result {rc}")));
        }
        let desc = (*table).tupdesc;
        let rows = (0..pg_sys::SPI_processed as usize)
            .map(|i| {
                let tuple = *(*table).vals.add(i);
                (1..=(*desc).natts)
                    .map(|col| {
                        let mut isnull = false;
                        let d = pg_sys::SPI_getbinval(tuple, desc, col, &mut isnull);
                        (!isnull).then_some(d)
                    })
                    .collect()
            })
            .collect();
        Ok(rows)
    }
}

/// Run a read-only query with a fresh snapshot (everything committed, and this transaction's
/// earlier commands), whatever the isolation level. Returns each row's datums (None for NULL),
/// valid until the SPI connection closes. Must run inside an SPI connection.
pub(crate) fn select_latest(
    sql: &str,
    args: &[(pg_sys::Oid, pg_sys::Datum)],
) -> Result<Vec<Vec<Option<pg_sys::Datum>>>, TenancyError> {
    let text = CString::new(sql).expect("no NUL in our SQL");
    let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.0).collect();
    let mut values: Vec<pg_sys::Datum> = args.iter().map(|a| a.1).collect();
    // SAFETY: SPI is connected (caller); the plan is freed before returning (the rows live in
    // SPI's tuple table, not in the plan).
    unsafe {
        let plan = pg_sys::SPI_prepare(text.as_ptr(), args.len() as i32, types.as_mut_ptr());
        if plan.is_null() {
            return Err(TenancyError::new(
                Code::ERRCODE_INTERNAL_ERROR,
                "tenancy: could not prepare a settings query",
            ));
        }
        let rows = execute_with_snapshot(plan, &mut values, pg_sys::GetLatestSnapshot());
        pg_sys::SPI_freeplan(plan);
        rows
    }
}
