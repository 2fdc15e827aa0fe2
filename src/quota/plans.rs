//! Plans kept for the life of the backend and run with a snapshot of our own
//! (`SPI_execute_snapshot`, which pgrx's prepared statements do not offer).

use super::*;

/// A plan prepared with SPI_prepare and kept (SPI_keepplan) for the life of the backend, or
/// until the caches are dropped. Raw SPI because it runs with a snapshot of our own
/// (SPI_execute_snapshot), which pgrx's prepared statements do not offer.
pub(super) struct KeptPlan(pub(super) pg_sys::SPIPlanPtr);

impl KeptPlan {
    /// Prepare `sql` with one uuid parameter. Must run inside an SPI connection.
    pub(super) fn prepare_uuid(sql: &str) -> Result<KeptPlan, TenancyError> {
        let text = CString::new(sql).expect("no NUL in generated SQL");
        let mut types = [pg_sys::UUIDOID];
        // SAFETY: SPI is connected (caller); SPI_prepare raises an ERROR on a bad statement.
        unsafe {
            let plan = pg_sys::SPI_prepare(text.as_ptr(), 1, types.as_mut_ptr());
            if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
                return Err(TenancyError::new(Code::ERRCODE_INTERNAL_ERROR, "tenancy: could not prepare a quota count")
                    .detail(sql.to_string()));
            }
            Ok(KeptPlan(plan))
        }
    }

    /// Run the count for workspace `ws`: with `snapshot`, or (None) with a fresh snapshot that
    /// sees everything committed and every change of this transaction, the triggering
    /// statement's included. Returns the count.
    pub(super) fn count(&self, ws: &[u8; 16], snapshot: Option<pg_sys::Snapshot>) -> Result<i64, TenancyError> {
        let uuid = pgrx::Uuid::from_bytes(*ws);
        let value = uuid.into_datum().expect("uuid datum");
        let snap = snapshot.unwrap_or_else(|| {
            // SAFETY: makes the triggering statement's rows visible to the snapshot taken next.
            unsafe {
                pg_sys::CommandCounterIncrement();
                pg_sys::GetLatestSnapshot()
            }
        });
        // SAFETY: SPI is connected (caller); the uuid datum points into `uuid`, alive for the call.
        let rows = unsafe { execute_with_snapshot(self.0, &mut [value], snap)? };
        match rows.as_slice() {
            [row] => Ok(row[0].map_or(0, |d| d.value() as i64)),
            _ => Err(TenancyError::new(Code::ERRCODE_INTERNAL_ERROR, "tenancy: quota count failed")
                .detail(format!("{} rows", rows.len()))),
        }
    }
}

/// Run `plan` read-only with `snapshot` and `values` (none NULL); each row's datums (None for
/// NULL), valid until the SPI connection closes.
///
/// # Safety
/// SPI is connected; `values` match the plan's parameter types.
pub(super) unsafe fn execute_with_snapshot(
    plan: pg_sys::SPIPlanPtr,
    values: &mut [pg_sys::Datum],
    snapshot: pg_sys::Snapshot,
) -> Result<Vec<Vec<Option<pg_sys::Datum>>>, TenancyError> {
    let nulls = vec![b' ' as std::ffi::c_char; values.len()];
    // SAFETY: see the function's obligations; SPI copies the snapshot when it pushes it.
    unsafe {
        let rc = pg_sys::SPI_execute_snapshot(plan, values.as_mut_ptr(), nulls.as_ptr(), snapshot, std::ptr::null_mut(), true, false, 0);
        let table = pg_sys::SPI_tuptable;
        if rc != pg_sys::SPI_OK_SELECT as i32 || table.is_null() {
            return Err(TenancyError::new(Code::ERRCODE_INTERNAL_ERROR, "tenancy: internal query failed")
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

impl Drop for KeptPlan {
    fn drop(&mut self) {
        // SAFETY: frees a plan kept by SPI_keepplan; never used afterwards.
        unsafe { pg_sys::SPI_freeplan(self.0) };
    }
}


/// Run a read-only query with a fresh snapshot (everything committed, and this transaction's
/// earlier commands), whatever the isolation level. Returns each row's datums (None for NULL),
/// valid until the SPI connection closes. Must run inside an SPI connection.
pub(super) fn select_latest(sql: &str, args: &[(pg_sys::Oid, pg_sys::Datum)]) -> Result<Vec<Vec<Option<pg_sys::Datum>>>, TenancyError> {
    let text = CString::new(sql).expect("no NUL in our SQL");
    let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.0).collect();
    let mut values: Vec<pg_sys::Datum> = args.iter().map(|a| a.1).collect();
    // SAFETY: SPI is connected (caller); the plan is freed before returning (the rows live in
    // SPI's tuple table, not in the plan).
    unsafe {
        let plan = pg_sys::SPI_prepare(text.as_ptr(), args.len() as i32, types.as_mut_ptr());
        if plan.is_null() {
            return Err(TenancyError::new(Code::ERRCODE_INTERNAL_ERROR, "tenancy: could not prepare a settings query"));
        }
        let rows = execute_with_snapshot(plan, &mut values, pg_sys::GetLatestSnapshot());
        pg_sys::SPI_freeplan(plan);
        rows
    }
}

/// A text datum as a Rust string.
pub(super) fn text_of(d: Option<pg_sys::Datum>) -> Option<String> {
    // SAFETY: callers pass datums of text columns.
    d.and_then(|d| unsafe { String::from_datum(d, false) })
}
