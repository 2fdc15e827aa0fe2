//! Read-only SQL for the extension's own lookups: never assigns a transaction id.
//!
//! pgrx's `Spi::get_one*` and `Spi::run*` go through its "mutable" path, which asks PostgreSQL
//! for the current transaction id (assigning one): on a streaming standby that fails ("cannot
//! assign TransactionIds during recovery"), inside a parallel query too ("cannot assign XIDs
//! during a parallel operation"), and on a primary every request would burn an id and write a
//! commit record. Everything here runs `SELECT`s with `SPI_execute*(read_only)`.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

/// The first column of the first row of a read-only query (None: no row, or NULL).
pub(crate) fn one<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid<'_>]) -> Result<Option<T>, pgrx::spi::Error> {
    Spi::connect(|client| {
        let rows = client.select(sql, Some(1), args)?;
        if rows.is_empty() {
            return Ok(None);
        }
        rows.first().get_one::<T>()
    })
}
