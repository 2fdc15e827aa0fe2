//! The domain error type. Every error a user can meet is built here, so that each one carries
//! a precise, documented SQLSTATE (see the "Errors" table of docs/reference.md), a message naming the
//! object, and a detail or hint.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// A user-facing error: SQLSTATE, message, optional detail and hint.
#[derive(Debug, Clone)]
pub struct TenancyError {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl TenancyError {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Raise the error (ERROR level): never returns. Use this where a `Result` cannot carry
    /// the error to pgrx, for example inside triggers.
    pub fn raise(self) -> ! {
        ErrorReport::from(self).report(PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned")
    }
}

impl From<TenancyError> for ErrorReport {
    fn from(e: TenancyError) -> Self {
        let mut report = ErrorReport::new(e.code, e.message, "tenancy");
        if let Some(d) = e.detail {
            report = report.set_detail(d);
        }
        if let Some(h) = e.hint {
            report = report.set_hint(h);
        }
        report
    }
}

/// An SPI failure is an internal error of the extension (XX000), never the user's fault; keep
/// the SPI message as detail.
impl From<pgrx::spi::Error> for TenancyError {
    fn from(e: pgrx::spi::Error) -> Self {
        TenancyError::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "tenancy: internal SPI error",
        )
        .detail(e.to_string())
    }
}

pub type TenancyResult<T> = Result<T, TenancyError>;
