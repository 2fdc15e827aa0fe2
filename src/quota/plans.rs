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
                return Err(TenancyError::new(
                    Code::ERRCODE_INTERNAL_ERROR,
                    "tenancy: could not prepare a quota count",
                )
                .detail(sql.to_string()));
            }
            Ok(KeptPlan(plan))
        }
    }

    /// Run the count for workspace `ws`: with `snapshot`, or (None) with a fresh snapshot that
    /// sees everything committed and every change of this transaction, the triggering
    /// statement's included. Returns the count.
    pub(super) fn count(
        &self,
        ws: &[u8; 16],
        snapshot: Option<pg_sys::Snapshot>,
    ) -> Result<i64, TenancyError> {
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
        let rows = unsafe { crate::pg::spi::execute_with_snapshot(self.0, &mut [value], snap)? };
        match rows.as_slice() {
            [row] => Ok(row[0].map_or(0, |d| d.value() as i64)),
            _ => Err(TenancyError::new(
                Code::ERRCODE_INTERNAL_ERROR,
                "tenancy: quota count failed",
            )
            .detail(format!("{} rows", rows.len()))),
        }
    }
}

impl Drop for KeptPlan {
    fn drop(&mut self) {
        // SAFETY: frees a plan kept by SPI_keepplan; never used afterwards.
        unsafe { pg_sys::SPI_freeplan(self.0) };
    }
}

/// A text datum as a Rust string.
pub(super) fn text_of(d: Option<pg_sys::Datum>) -> Option<String> {
    // SAFETY: callers pass datums of text columns.
    d.and_then(|d| unsafe { String::from_datum(d, false) })
}
