//! Catalog lookups through PostgreSQL's caches (no SQL, nothing a search path could redirect).

use std::ffi::{CStr, CString};

use pgrx::pg_sys;
use pgrx::spi::quote_identifier;

/// A relation's schema-qualified, quoted name (`pg_catalog."relation N"` for one that is gone).
pub(crate) fn qualified_name(relid: pg_sys::Oid) -> String {
    // SAFETY: lsyscache lookups; the returned C strings are palloc'd copies, read at once.
    unsafe {
        let rel = pg_sys::get_rel_name(relid);
        let nsp = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid));
        if rel.is_null() || nsp.is_null() {
            return format!("pg_catalog.\"relation {}\"", u32::from(relid));
        }
        let rel = CStr::from_ptr(rel).to_string_lossy();
        let nsp = CStr::from_ptr(nsp).to_string_lossy();
        format!("{}.{}", quote_identifier(&nsp), quote_identifier(&rel))
    }
}

/// The name of column `attnum` of `relid` (None: no such column, or dropped).
pub(crate) fn column_name(relid: pg_sys::Oid, attnum: i16) -> Option<String> {
    // SAFETY: syscache lookup; missing_ok returns NULL instead of raising.
    unsafe {
        let name = pg_sys::get_attname(relid, attnum, true);
        (!name.is_null()).then(|| CStr::from_ptr(name).to_string_lossy().into_owned())
    }
}

/// The type of column `column` of `relid`; None when it does not exist or was dropped.
pub(crate) fn column_type(relid: pg_sys::Oid, column: &str) -> Option<pg_sys::Oid> {
    let name = CString::new(column).ok()?;
    // SAFETY: syscache lookups; InvalidAttrNumber (0) for a missing or dropped column.
    unsafe {
        let attnum = pg_sys::get_attnum(relid, name.as_ptr());
        (attnum > 0).then(|| pg_sys::get_atttype(relid, attnum))
    }
}

/// A type's name as SQL writes it (`text`, `character varying`, ...).
pub(crate) fn type_name(typid: pg_sys::Oid) -> String {
    // SAFETY: syscache lookup; a palloc'd name, read at once.
    unsafe {
        CStr::from_ptr(pg_sys::format_type_be(typid))
            .to_string_lossy()
            .into_owned()
    }
}

/// A role's name, unquoted ("?" for a role that is gone).
pub(crate) fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: syscache lookup; a palloc'd name, read at once.
    unsafe {
        let name = pg_sys::GetUserNameFromId(role, true);
        if name.is_null() {
            "?".into()
        } else {
            CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }
}

/// The installed version of extension `name` in this database (`pg_extension.extversion`), or
/// None when it is not installed. Reads the catalog through its index (no SQL); in a transaction.
pub(crate) fn extension_version(name: &CStr) -> Option<String> {
    // SAFETY: a catalog index scan in a transaction with the standard open/scan/close protocol;
    // every call is guarded by pgrx (an ERROR unwinds as a panic), the lock and the scan are
    // released by the transaction's abort otherwise.
    unsafe {
        let ext = pg_sys::get_extension_oid(name.as_ptr(), true);
        if ext == pg_sys::InvalidOid {
            return None;
        }
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let rel = pg_sys::table_open(pg_sys::ExtensionRelationId, lock);
        let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut key,
            pg_sys::Anum_pg_extension_oid as pg_sys::AttrNumber,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::F_OIDEQ.into(),
            pg_sys::Datum::from(ext),
        );
        let scan = pg_sys::systable_beginscan(
            rel,
            pg_sys::ExtensionOidIndexId.into(),
            true,
            std::ptr::null_mut(),
            1,
            &mut key,
        );
        let tuple = pg_sys::systable_getnext(scan);
        let version = if tuple.is_null() {
            None
        } else {
            let attno = std::num::NonZeroUsize::new(pg_sys::Anum_pg_extension_extversion as usize)
                .expect("attribute number");
            pgrx::heap_getattr_raw(tuple, attno, (*rel).rd_att)
                .and_then(|d| <String as pgrx::FromDatum>::from_datum(d, false))
        };
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(rel, lock);
        version
    }
}

/// The owner of relation `relid` from pg_class (None: no such relation). Read-only SQL under a
/// `pg_catalog`-only search path.
pub(crate) fn rel_owner(relid: pg_sys::Oid) -> Result<Option<pg_sys::Oid>, pgrx::spi::Error> {
    super::scope::with_catalog_path(|| {
        super::spi::one::<pg_sys::Oid>(
            "SELECT relowner FROM pg_catalog.pg_class WHERE oid = $1",
            &[pgrx::datum::DatumWithOid::from(relid)],
        )
    })
}

/// The owner of relation `relid` from the relcache (no SQL; None: no such relation).
pub(crate) fn rel_owner_cached(relid: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: relcache lookup by oid, reference released before returning.
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        if rel.is_null() {
            return None;
        }
        let owner = (*(*rel).rd_rel).relowner;
        pg_sys::RelationClose(rel);
        Some(owner)
    }
}
