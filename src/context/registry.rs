//! The workspace registry as the `tenancy.registry_*` settings configure it: resolved from the
//! catalog by schema and name (never on the session's search path) and read with read-only SQL
//! under `search_path = pg_catalog`.

use super::*;

/// The workspace registry as configured by the `tenancy.registry_*` settings.
pub(crate) struct Registry {
    pub(crate) table: String,
    pub(crate) id_column: String,
    pub(crate) status_column: Option<String>,
    pub(crate) deleted_status: Option<String>,
    pub(crate) parent_column: Option<String>,
    pub(crate) active_status: Option<String>,
}

pub(super) fn setting(s: &GucSetting<Option<CString>>) -> Option<String> {
    s.get()
        .map(|c| c.to_string_lossy().into_owned())
        .filter(|v| !v.is_empty())
}

impl Registry {
    pub(crate) fn from_settings() -> Self {
        Registry {
            table: setting(&REGISTRY_TABLE).unwrap_or_default(),
            id_column: setting(&REGISTRY_ID_COLUMN).unwrap_or_default(),
            status_column: setting(&REGISTRY_STATUS_COLUMN),
            deleted_status: setting(&REGISTRY_DELETED_STATUS),
            parent_column: setting(&REGISTRY_PARENT_COLUMN),
            active_status: setting(&REGISTRY_ACTIVE_STATUS),
        }
    }

    /// The registry table's oid and schema-qualified, quoted name, after checking that it and
    /// the given columns exist (42P01 / 42703 with a hint naming the settings). The name is
    /// resolved from the catalog alone, never on the session's `search_path` (a temporary table
    /// or a schema of the session's own named like the registry must not stand in for it): an
    /// unqualified `tenancy.registry_table` means schema `public`.
    pub(crate) fn resolve(&self, columns: &[&str]) -> TenancyResult<(pg_sys::Oid, String)> {
        let missing = || {
            TenancyError::new(
                Code::ERRCODE_UNDEFINED_TABLE,
                format!("workspace registry table \"{}\" does not exist", self.table),
            )
            .detail("tenancy.set_workspace() and tenancy.readable_workspace_ids() read the workspaces from tenancy.registry_table (an unqualified name means schema public; the search path is not used).")
            .hint(
                "A superuser sets the registry with ALTER DATABASE ... SET tenancy.registry_table \
                 (and tenancy.registry_id_column, tenancy.registry_status_column).",
            )
        };
        let (schema, name) = split_qualified(&self.table).ok_or_else(missing)?;
        let (Ok(c_schema), Ok(c_name)) =
            (CString::new(schema.as_str()), CString::new(name.as_str()))
        else {
            return Err(missing());
        };
        // SAFETY: syscache lookups by name; no error is raised for a missing object.
        let relid = unsafe {
            let nsp = pg_sys::get_namespace_oid(c_schema.as_ptr(), true);
            if nsp == pg_sys::InvalidOid {
                pg_sys::InvalidOid
            } else {
                pg_sys::get_relname_relid(c_name.as_ptr(), nsp)
            }
        };
        if relid == pg_sys::InvalidOid {
            return Err(missing());
        }
        let table = crate::pg::catalog::qualified_name(relid);
        for col in columns {
            let Some(typid) = crate::pg::catalog::column_type(relid, col) else {
                return Err(TenancyError::new(
                    Code::ERRCODE_UNDEFINED_COLUMN,
                    format!("column \"{col}\" of workspace registry table {table} does not exist"),
                )
                .hint(
                    "Check the tenancy.registry_* settings (SHOW tenancy.registry_id_column; ...).",
                ));
            };
            // the id and parent columns are compared with uuids
            let is_id =
                *col == self.id_column.as_str() || Some(*col) == self.parent_column.as_deref();
            if is_id && typid != pg_sys::UUIDOID {
                let type_name = crate::pg::catalog::type_name(typid);
                return Err(TenancyError::new(
                    Code::ERRCODE_DATATYPE_MISMATCH,
                    format!("column \"{col}\" of workspace registry table {table} has type {type_name}, not uuid"),
                )
                .detail("tenancy.registry_id_column and tenancy.registry_parent_column name uuid columns: workspace ids are uuids.")
                .hint("Check the tenancy.registry_* settings (SHOW tenancy.registry_id_column; ...)."));
            }
        }
        Ok((relid, table))
    }

    /// `None`: no such workspace. `Some(status)`: it exists (status NULL or unchecked: `None`).
    /// From this backend's cache while the workspace's registry stamp is unchanged
    /// ([`super::cache`]), otherwise read from the registry.
    pub(crate) fn lookup_status(
        &self,
        workspace: pgrx::Uuid,
    ) -> TenancyResult<Option<Option<String>>> {
        let mut columns = vec![self.id_column.as_str()];
        columns.extend(self.status_column.as_deref());
        let (relid, table) = self.resolve(&columns)?;
        let shape = format!(
            "{}\0{}\0{:?}\0{}",
            self.table,
            self.id_column,
            self.status_column,
            u32::from(relid)
        );
        super::cache::cached(
            &STATUS,
            &shape,
            relid,
            &self.id_column,
            *workspace.as_bytes(),
            true,
            || self.read_status(&table, workspace),
        )
    }

    fn read_status(
        &self,
        table: &str,
        workspace: pgrx::Uuid,
    ) -> TenancyResult<Option<Option<String>>> {
        let status_expr = match &self.status_column {
            Some(c) => format!("{}::text", quote_identifier(c)),
            None => "NULL::text".to_string(),
        };
        let query = format!(
            "SELECT {status_expr} FROM {table} WHERE {} = $1 LIMIT 1",
            quote_identifier(&self.id_column)
        );
        // `=` and the cast resolve to the catalog's, whatever the session's search path
        with_catalog_path(|| {
            Spi::connect(|client| {
                let rows = client.select(&query, Some(1), &[DatumWithOid::from(workspace)])?;
                if rows.is_empty() {
                    return Ok(None);
                }
                Ok(Some(rows.first().get_one::<String>()?))
            })
        })
    }
}

/// `set_workspace()`'s lookups: per workspace, whether it exists and its status.
static STATUS: super::cache::Cache<Option<Option<String>>> = super::cache::Cache::new(None);

/// `schema.name` or `name` (schema `public`) as PostgreSQL splits a qualified name: double
/// quotes keep case and dots, unquoted parts are folded to lower case. None when malformed.
pub(super) fn split_qualified(text: &str) -> Option<(String, String)> {
    let raw = CString::new(text).ok()?;
    // SAFETY: SplitIdentifierString splits a palloc'd copy in place and returns a List of
    // pointers into it; both are read before this function returns.
    let parts: Vec<String> = unsafe {
        let copy = pg_sys::pstrdup(raw.as_ptr());
        let mut list: *mut pg_sys::List = std::ptr::null_mut();
        if !pg_sys::SplitIdentifierString(copy, b'.' as std::ffi::c_char, &mut list)
            || list.is_null()
        {
            return None;
        }
        (0..(*list).length as usize)
            .map(|i| {
                CStr::from_ptr((*(*list).elements.add(i)).ptr_value.cast())
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    };
    match parts.as_slice() {
        [name] if !name.is_empty() => Some(("public".to_string(), name.clone())),
        [schema, name] if !schema.is_empty() && !name.is_empty() => {
            Some((schema.clone(), name.clone()))
        }
        _ => None,
    }
}
