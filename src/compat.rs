//! A database whose tenancy SQL is older than the library: what keeps it working until
//! `ALTER EXTENSION tenancy UPDATE` runs there, and what tells the operator to run it.
//!
//! A new library is installed on the server (package upgrade, restart) before each database's
//! SQL objects are updated, and a database may stay at the old version for a while. So
//! (docs/releasing.md):
//! - every C symbol named by a released install or upgrade script (`sql/tenancy--*.sql`) stays
//!   exported, with the arguments and result that script declares: a function whose SQL shape
//!   changes gets a new symbol in the new version, and the old symbol keeps the old shape
//!   (`stats::_stats_info`: `stats_info_wrapper` is 0.1.0's six columns, `stats_info_v2_wrapper`
//!   0.2.0's seven). The upgrade test installs the oldest kept version with the current library
//!   and uses it;
//! - code reachable from an old version's SQL (the context functions, the quota triggers, the
//!   statement hooks) uses only SQL objects that version has;
//! - a backend that finds its database's SQL at another version than the library's says so once,
//!   with a WARNING naming the command to run (below): a function the old SQL lacks then fails
//!   with PostgreSQL's "function ... does not exist" after that warning.

use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

use crate::pg::local::BackendLocal;

/// The version of this library (and of the SQL it ships: `tenancy--<version>.sql`).
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

static WARNED: BackendLocal<bool> = BackendLocal::new(false);

/// In a transaction of a database where the extension is installed: warn once per backend when
/// its SQL is at another version than the library. Cheap after the first call.
pub(crate) fn check_sql_version() {
    if WARNED.with(|w| *w.borrow()) {
        return;
    }
    let Some(installed) = crate::pg::catalog::extension_version(c"tenancy") else {
        return;
    };
    WARNED.with(|w| *w.borrow_mut() = true);
    if installed == LIBRARY_VERSION {
        return;
    }
    let database = database_name();
    let (detail, hint) = if older(&installed, LIBRARY_VERSION) {
        (
            format!(
                "The server runs the tenancy library {LIBRARY_VERSION}; the SQL objects of database \"{database}\" \
                 are those of {installed}. Workspace context, quotas and isolation keep working; functions and \
                 columns added after {installed} are missing until the update."
            ),
            format!("Run ALTER EXTENSION tenancy UPDATE; in database \"{database}\" (as the extension's owner)."),
        )
    } else {
        (
            format!(
                "The server runs the tenancy library {LIBRARY_VERSION}, older than the SQL objects of database \
                 \"{database}\" ({installed})."
            ),
            format!("Install the tenancy {installed} package (or newer) on this server and restart it."),
        )
    };
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_WARNING,
        format!("tenancy's SQL in database \"{database}\" is version {installed}, the library is {LIBRARY_VERSION}"),
        "tenancy",
    )
    .set_detail(detail)
    .set_hint(hint)
    .report(PgLogLevel::WARNING);
}

/// Whether version `a` is older than `b` (dotted numbers; a part that is not a number compares
/// as 0).
pub(crate) fn older(a: &str, b: &str) -> bool {
    let parts = |v: &str| {
        v.split('.')
            .map(|p| p.parse::<u64>().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    parts(a) < parts(b)
}

fn database_name() -> String {
    // SAFETY: MyDatabaseId is set in a backend connected to a database; the name is a palloc'd
    // copy (NULL if the database was dropped concurrently).
    unsafe {
        let name = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        if name.is_null() {
            return format!("oid {}", u32::from(pg_sys::MyDatabaseId));
        }
        CStr::from_ptr(name).to_string_lossy().into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::older;

    #[test]
    fn versions_compare_by_number() {
        assert!(older("0.1.0", "0.2.0"));
        assert!(older("0.9.0", "0.10.0"));
        assert!(!older("0.2.0", "0.2.0"));
        assert!(!older("1.0.0", "0.10.0"));
        assert!(older("0.2", "0.2.1"));
    }
}
