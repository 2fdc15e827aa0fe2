//! Workspace hierarchy: the workspaces the current context may read under the hierarchy option
//! of the isolation policy (`tenancy.enable_rls(tbl, col, hierarchy => true)`).
//!
//! Dittofeed's hierarchy has one level: a `Parent` workspace acts on its `Active` `Child`
//! workspaces (`"parentWorkspaceId" = parent AND status = 'Active'`). The hierarchy policy reads
//! `col = ANY ((SELECT tenancy.readable_workspace_ids())::uuid[])`: the sub-select is an initplan, run
//! once per query, and `col = ANY (array)` is an index condition, so a parent's read stays an
//! index scan over its own and its children's rows. Writes stay scoped to the current workspace
//! (WITH CHECK and the restrictive UPDATE/DELETE policies use `current_workspace_id()`).
//!
//! The registry lookup is one prepared statement per backend, kept across calls and re-prepared
//! only when the `tenancy.registry_*` settings or the registry's oid change (PostgreSQL's plan
//! cache revalidates it when the registry table changes). The registry is resolved from the
//! catalog by schema and name (an unqualified setting means `public`), never on the session's
//! `search_path`, and the statement names it schema-qualified and runs under `search_path =
//! pg_catalog`: neither a temporary table named like the registry nor a session's own schema or
//! operator can redirect the lookup.
//!
//! Errors: 42P01 / 42703 when the configured registry table or a column does not exist.

use std::cell::RefCell;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, OwnedPreparedStatement};
use pgrx::{PgBuiltInOids, PgOid};

use crate::context::{self, Registry};
use crate::error::{TenancyError, TenancyResult};
use crate::pg::scope::with_catalog_path;
use pgrx::PgSqlErrorCode as Code;

thread_local! {
    /// The kept lookup statement and the settings it was prepared from.
    static LOOKUP: RefCell<Option<(String, OwnedPreparedStatement)>> = const { RefCell::new(None) };
}

/// The current workspace followed by its active children (when the registry has a parent
/// column), NULL when no workspace context is set: a policy comparing with it then admits no
/// row. A workspace that is not a parent reads only itself.
#[pg_extern(stable, parallel_safe)]
fn readable_workspace_ids() -> Result<Option<Vec<pgrx::Uuid>>, pgrx::pg_sys::panic::ErrorReport> {
    let Some(current) = context::current() else {
        return Ok(None);
    };
    let current = pgrx::Uuid::from_bytes(current);
    // Called once per row where the policy has no sub-select (the form for Citus): one lookup
    // per statement, as STABLE allows (same transaction, same command, same workspace).
    let stmt = statement_key(current);
    if let Some(ids) = MEMO.with(|m| {
        m.borrow()
            .as_ref()
            .filter(|(k, _)| *k == stmt)
            .map(|(_, ids)| ids.clone())
    }) {
        return Ok(Some(ids));
    }
    let ids =
        crate::pg::local::internal(|| crate::pg::citus::nested_allowed(|| readable(current)))?;
    MEMO.with(|m| *m.borrow_mut() = Some((stmt, ids.clone())));
    Ok(Some(ids))
}

/// (local transaction, command, statement start, workspace): what `readable_workspace_ids()`
/// may answer alike. A new statement (e.g. after a `SET LOCAL` of a registry setting) reads
/// again.
type StatementKey = (u32, u32, i64, [u8; 16]);

static MEMO: crate::pg::local::BackendLocal<Option<(StatementKey, Vec<pgrx::Uuid>)>> =
    crate::pg::local::BackendLocal::new(None);

fn statement_key(current: pgrx::Uuid) -> StatementKey {
    // SAFETY: MyProc is set for every backend that runs SQL; reading lxid is what
    // PostgreSQL's own code does; GetCurrentCommandId(false) only reads.
    unsafe {
        (
            (*pg_sys::MyProc).lxid,
            pg_sys::GetCurrentCommandId(false),
            pg_sys::GetCurrentStatementStartTimestamp(),
            *current.as_bytes(),
        )
    }
}

fn readable(current: pgrx::Uuid) -> TenancyResult<Vec<pgrx::Uuid>> {
    let registry = Registry::from_settings();
    let Some(parent_column) = registry.parent_column.as_deref() else {
        return Ok(vec![current]); // hierarchy disabled by configuration
    };
    // The settings that shape the statement; a change re-prepares it.
    let key = format!(
        "{}\0{}\0{parent_column}\0{:?}\0{:?}\0{:?}",
        registry.table,
        registry.id_column,
        registry.status_column,
        registry.active_status,
        registry.deleted_status
    );
    // The registry is resolved at every call (catalog cache lookups, no SQL): the kept plan
    // belongs to one table oid, whatever the session's search path says or later says.
    let mut columns = vec![registry.id_column.as_str(), parent_column];
    columns.extend(registry.status_column.as_deref());
    let (relid, table) = registry.resolve(&columns)?;
    let key = format!("{key}\0{}", u32::from(relid));
    // from this backend's cache while no registry row changed (any row: a child's parent or
    // status), otherwise read
    crate::context::cache::cached(
        &READABLE,
        &key,
        relid,
        &registry.id_column,
        *current.as_bytes(),
        false,
        || lookup(current, &key, &table, &registry, parent_column),
    )
}

/// `readable_workspace_ids()` per current workspace.
static READABLE: crate::context::cache::Cache<Vec<pgrx::Uuid>> =
    crate::context::cache::Cache::new(None);

/// Read the current workspace's active children with the kept statement.
fn lookup(
    current: pgrx::Uuid,
    key: &str,
    table: &str,
    registry: &Registry,
    parent_column: &str,
) -> TenancyResult<Vec<pgrx::Uuid>> {
    let mut ids = vec![current];
    // prepared and run under search_path = pg_catalog: `=` and the casts are the catalog's
    LOOKUP.with(|cell| -> TenancyResult<()> {
        let Ok(mut kept) = cell.try_borrow_mut() else {
            // the lookup itself called readable_workspace_ids() (a policy on the registry that
            // uses it): it would recurse without end
            return Err(TenancyError::new(
                Code::ERRCODE_INVALID_OBJECT_DEFINITION,
                "infinite recursion detected in tenancy.readable_workspace_ids()",
            )
            .detail(format!("Reading the workspace registry {table} called tenancy.readable_workspace_ids() again, e.g. through a row-level security policy on the registry."))
            .hint("A policy on the registry table must not use readable_workspace_ids() (or the hierarchy policy)."));
        };
        with_catalog_path(|| Spi::connect(|client| -> TenancyResult<()> {
            if kept.as_ref().map(|(k, _)| k != key).unwrap_or(true) {
                let sql = lookup_sql(table, registry, parent_column);
                let plan = client.prepare(sql.as_str(), &[PgOid::BuiltIn(PgBuiltInOids::UUIDOID)])?.keep();
                *kept = Some((key.to_string(), plan));
            }
            let (_, plan) = kept.as_ref().expect("prepared above");
            for row in client.select(plan, None, &[DatumWithOid::from(current)])? {
                if let Some(id) = row.get::<pgrx::Uuid>(1)? {
                    if id != current {
                        ids.push(id);
                    }
                }
            }
            Ok(())
        }))
    })?;
    Ok(ids)
}

/// `SELECT id FROM registry WHERE parent = $1 [AND status filter]`, identifiers quoted, the
/// status values as literals (they come from superuser-only settings; quoted all the same).
fn lookup_sql(table: &str, registry: &Registry, parent_column: &str) -> String {
    // `table`: the registry's quoted, schema-qualified name.
    let mut sql = format!(
        "SELECT {id} FROM {table} WHERE {parent} = $1",
        id = quote_identifier(&registry.id_column),
        parent = quote_identifier(parent_column),
    );
    if let Some(status) = registry.status_column.as_deref() {
        let status_col = quote_identifier(status);
        if let Some(active) = registry.active_status.as_deref() {
            sql.push_str(&format!(
                " AND {status_col}::text = {}",
                quote_literal(active)
            ));
        } else if let Some(deleted) = registry.deleted_status.as_deref() {
            sql.push_str(&format!(
                " AND {status_col}::text IS DISTINCT FROM {}",
                quote_literal(deleted)
            ));
        }
    }
    sql
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pgrx::extension_sql!(
    r#"
COMMENT ON FUNCTION @extschema@.readable_workspace_ids() IS
'The workspaces the current context may read under the hierarchy option: the current workspace and its active children (registry rows whose tenancy.registry_parent_column is it and whose status is tenancy.registry_active_status). NULL when no context is set. Used by the hierarchy policy as col = ANY ((SELECT tenancy.readable_workspace_ids())::uuid[]).';
"#,
    name = "hierarchy_sql",
    requires = [readable_workspace_ids]
);
