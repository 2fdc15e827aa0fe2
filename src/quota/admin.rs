//! The administrative entry points: `_quota_admin` (privilege and ownership checks, then the
//! internal bodies as the bookkeeping owner), `_quota_count` (counting as the table's owner),
//! and the validation of `counted_when`.

use super::*;

/// Raise 42501 unless the current user has the privileges of `tbl`'s owner (a superuser has).
pub(super) fn require_owner(tbl: pg_sys::Oid, what: &str) -> Result<(), TenancyError> {
    // SAFETY: catalog lookups; pg_class_ownercheck raises 42P01 for a relation that is gone.
    let ok = unsafe { pg_sys::pg_class_ownercheck(tbl, pg_sys::GetUserId()) };
    if ok {
        return Ok(());
    }
    let table = regclass_text(tbl);
    Err(TenancyError::new(Code::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("must be owner of table {table} to {what}"))
        .detail(format!(
            "Quotas of a table are administered by its owner (or a member of the owning role) or a superuser; role {} is neither.",
            current_user_name()
        ))
        .hint("Ask the table's owner, or a superuser, to do it."))
}

pub(super) fn current_user_name() -> String {
    // SAFETY: reads the current user id.
    quote_identifier(&crate::pg::catalog::role_name(unsafe {
        pg_sys::GetUserId()
    }))
}

/// Raise 42703 / 42804 unless `relid` has a uuid column named `column` (catalog caches only).
pub(super) fn check_workspace_column(relid: pg_sys::Oid, column: &str) -> Result<(), TenancyError> {
    let Some(typid) = crate::pg::catalog::column_type(relid, column) else {
        return Err(TenancyError::new(
            Code::ERRCODE_UNDEFINED_COLUMN,
            format!("workspace column {} of table {} does not exist", quote_identifier(column), regclass_text(relid)),
        )
        .hint("The column was dropped or renamed after tenancy.enforce_quota(): call enforce_quota() again (or release_quota())."));
    };
    if typid != pg_sys::UUIDOID {
        let type_name = crate::pg::catalog::type_name(typid);
        return Err(TenancyError::new(
            Code::ERRCODE_DATATYPE_MISMATCH,
            format!("workspace column {} of table {} has type {type_name}, not uuid", quote_identifier(column), regclass_text(relid)),
        )
        .hint("The column's type was changed after tenancy.enforce_quota(): change it back, or release_quota()."));
    }
    Ok(())
}

/// Owner of `relid` (None: no such relation).
pub(super) fn owner_of(relid: pg_sys::Oid) -> Result<Option<pg_sys::Oid>, TenancyError> {
    Ok(crate::pg::catalog::rel_owner(relid)?)
}

/// `tenancy._quota_count(tbl, workspace_column, counted_when)`: the rows of `tbl` counted per
/// workspace (workspace column not NULL and `counted_when` true), under the caller's snapshot.
/// The count, and so `counted_when`, runs as the table's owner in a security-restricted
/// operation under `search_path = pg_catalog` (never with the caller's rights when the caller
/// is a superuser or the bookkeeping owner). The caller must have the table owner's privileges.
/// Used by enforce_quota (recount), quota_usage and quota_drift; not executable by PUBLIC.
#[pg_extern(volatile, parallel_unsafe, name = "_quota_count")]
pub(super) fn quota_count(
    tbl: pg_sys::Oid,
    workspace_column: &str,
    counted_when: Option<&str>,
) -> Result<
    TableIterator<'static, (name!(workspace_id, pgrx::Uuid), name!(n, i64))>,
    pgrx::pg_sys::panic::ErrorReport,
> {
    require_owner(tbl, "count its quota rows")?;
    if let Some(cond) = counted_when {
        assert_expression(cond)?;
    }
    let owner = owner_of(tbl)?.ok_or_else(|| {
        TenancyError::new(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("relation {} does not exist", u32::from(tbl)),
        )
    })?;
    check_workspace_column(tbl, workspace_column)?;
    let q = TableQuota {
        workspace_column: workspace_column.to_string(),
        counted_when: counted_when.map(str::to_string),
        default_limit: None,
        overrides: HashMap::new(),
        shared_counts: false,
        citus_shard: false,
    };
    let sql = format!(
        "SELECT {col}, count(*) FROM {} WHERE {} GROUP BY 1",
        qualified_name(tbl),
        counted_condition(&q),
        col = quote_identifier(workspace_column)
    );
    let qualified = qualified_name(tbl);
    let rows = Spi::connect(|client| {
        as_user(owner, || -> Result<Vec<(pgrx::Uuid, i64)>, TenancyError> {
            if let Some(cond) = counted_when {
                vet::vet(&qualified, cond, owner)?;
            }
            let mut out = Vec::new();
            for row in client.select(&sql, None, &[])? {
                out.push((
                    row.get::<pgrx::Uuid>(1)?.expect("not null"),
                    row.get::<i64>(2)?.expect("count"),
                ));
            }
            Ok(out)
        })
    })?;
    Ok(TableIterator::new(rows))
}

/// `tenancy._quota_admin(action, ...)`: the one way the administrative functions
/// (enforce_quota, set_quota, clear_quota, release_quota, all SECURITY INVOKER) write the
/// bookkeeping. It checks, with the caller's own identity, that the caller may execute the
/// public function of `action` (so `GRANT EXECUTE ON FUNCTION tenancy.set_quota ...` delegates
/// it) and owns the table (a non-owner never sets another owner's quotas or counted_when), then
/// runs the internal function as the owner of the bookkeeping tables, in a security-restricted
/// operation under `search_path = pg_catalog`; counted_when is only ever evaluated as the
/// table's owner (`_quota_count`, the quota trigger).
#[pg_extern(volatile, parallel_unsafe, name = "_quota_admin")]
pub(super) fn quota_admin(
    action: &str,
    tbl: Option<pg_sys::Oid>,
    workspace_column: Option<&str>,
    counted_when: Option<&str>,
    max_rows: Option<i64>,
    workspace: Option<pgrx::Uuid>,
) -> Result<(), pgrx::pg_sys::panic::ErrorReport> {
    let tbl_arg = || DatumWithOid::from(tbl.map(RegClass));
    let (entry, sql, args, what) = match action {
        "enforce" => (
            "enforce_quota(pg_catalog.regclass, pg_catalog.name, pg_catalog.text)",
            "SELECT tenancy._enforce_quota($1, $2::pg_catalog.name, $3)",
            vec![tbl_arg(), DatumWithOid::from(workspace_column), DatumWithOid::from(counted_when)],
            "enforce a quota on it",
        ),
        "set" => (
            "set_quota(pg_catalog.regclass, pg_catalog.int8, pg_catalog.uuid)",
            "SELECT tenancy._set_quota($1, $2, $3)",
            vec![tbl_arg(), DatumWithOid::from(max_rows), DatumWithOid::from(workspace)],
            "set its quota",
        ),
        "clear" => (
            "clear_quota(pg_catalog.regclass, pg_catalog.uuid)",
            "SELECT tenancy._clear_quota($1, $2)",
            vec![tbl_arg(), DatumWithOid::from(workspace)],
            "clear its quota",
        ),
        "release" => ("release_quota(pg_catalog.regclass)", "SELECT tenancy._release_quota($1)", vec![tbl_arg()], "release its quota"),
        other => {
            return Err(TenancyError::new(Code::ERRCODE_INVALID_PARAMETER_VALUE, format!("unknown quota action \"{other}\""))
                .hint("Internal function: call tenancy.enforce_quota, set_quota, clear_quota or release_quota.")
                .into())
        }
    };
    let entry = format!("tenancy.{entry}");
    // writes: refused in a read-only transaction and on a standby as PostgreSQL refuses any
    // write there (25006), before anything would ask for a transaction id
    let command = CString::new(format!(
        "tenancy.{}",
        entry
            .trim_start_matches("tenancy.")
            .split('(')
            .next()
            .unwrap_or_default()
    ))
    .expect("no NUL");
    // SAFETY: both raise a normal ERROR (25006) through pgrx's guard, or return.
    unsafe {
        pg_sys::PreventCommandIfReadOnly(command.as_ptr());
        pg_sys::PreventCommandDuringRecovery(command.as_ptr());
    }
    let may = with_catalog_path(|| {
        crate::pg::spi::one::<bool>(
            "SELECT pg_catalog.has_function_privilege($1::pg_catalog.regprocedure, 'EXECUTE')",
            &[DatumWithOid::from(entry.as_str())],
        )
    })
    .map_err(TenancyError::from)?;
    if may != Some(true) {
        let name = entry.split('(').next().unwrap_or_default();
        return Err(TenancyError::new(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for function {name}"),
        )
        .detail(format!(
            "Role {} has no EXECUTE privilege on {}.",
            current_user_name(),
            entry.replace("pg_catalog.", "")
        ))
        .hint(format!(
            "A superuser delegates it with GRANT EXECUTE ON FUNCTION {} TO <role>.",
            entry.replace("pg_catalog.", "")
        ))
        .into());
    }
    if let Some(tbl) = tbl {
        // SAFETY: syscache lookup; NULL for a relation that no longer exists.
        let exists = unsafe { !pg_sys::get_rel_name(tbl).is_null() };
        if exists {
            require_owner(tbl, what)?;
        } else if !(action == "release" && unsafe { pg_sys::superuser() }) {
            // what is left of a table that is gone (nobody owns it any more): a superuser's
            return Err(TenancyError::new(Code::ERRCODE_UNDEFINED_TABLE, format!("relation with OID {} does not exist", u32::from(tbl)))
                .hint("A superuser removes what is left of a dropped table's quota with tenancy.release_quota(<oid>).")
                .into());
        }
    }
    let bookkeeper = owner_of(bookkeeping_table()?)?.expect("the bookkeeping table exists");
    as_user(bookkeeper, || Spi::run_with_args(sql, &args)).map_err(TenancyError::from)?;
    Ok(())
}

/// A regclass datum (an oid with the regclass type oid), for SPI parameters.
pub(super) struct RegClass(pg_sys::Oid);

impl IntoDatum for RegClass {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0))
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::REGCLASSOID
    }
}

/// tenancy.quota_counter's oid: its owner is the bookkeeping owner.
pub(super) fn bookkeeping_table() -> Result<pg_sys::Oid, TenancyError> {
    // SAFETY: syscache lookups of a namespace and a relation by name.
    let oid = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"tenancy".as_ptr(), true);
        pg_sys::get_relname_relid(c"quota_counter".as_ptr(), nsp)
    };
    if oid == pg_sys::InvalidOid {
        return Err(TenancyError::new(
            Code::ERRCODE_UNDEFINED_TABLE,
            "tenancy.quota_counter does not exist",
        )
        .hint("Is the extension installed in this database? CREATE EXTENSION tenancy;"));
    }
    Ok(oid)
}

/// `tenancy._assert_expression(expr)`: raise 42601 unless `expr` is exactly one SQL
/// expression (used by enforce_quota to validate `counted_when` before it is ever
/// interpolated into a statement).
#[pg_extern(immutable, parallel_safe, name = "_assert_expression")]
pub(super) fn assert_expression(expr: &str) -> Result<bool, pgrx::pg_sys::panic::ErrorReport> {
    let bad = |why: &str| -> pgrx::pg_sys::panic::ErrorReport {
        TenancyError::new(Code::ERRCODE_SYNTAX_ERROR, format!("counted_when is not a single SQL expression: {why}"))
            .detail(format!("counted_when: {expr}"))
            .hint("Pass a boolean expression over the table's columns, e.g. '\"resourceType\" = ''Declarative'''.")
            .into()
    };
    if expr.trim().is_empty() {
        return Err(bad("it is empty"));
    }
    let text =
        CString::new(format!("SELECT ({expr})")).map_err(|_| bad("it contains a NUL byte"))?;
    // SAFETY: raw_parser only reads the string; a syntax error is raised as a normal ERROR
    // (42601) through pgrx's FFI guard. The list is palloc'd in the current context.
    let n = unsafe {
        let list = pg_sys::raw_parser(text.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        if list.is_null() {
            0
        } else {
            (*list).length
        }
    };
    if n != 1 {
        return Err(bad("it ends the statement (a ';' outside a string?)"));
    }
    // Its parentheses must balance on their own: `a) OR (b` parses once wrapped in parentheses,
    // but would change the meaning of the conditions it is combined with. PostgreSQL's own
    // scanner tells parentheses from those inside strings, quoted names and comments.
    // SAFETY: the scanner reads `alone` (alive for the whole loop) and is finished before
    // return; the input already parsed, so the scanner raises no error.
    let alone = CString::new(expr).expect("checked above: no NUL");
    let balanced = unsafe {
        let mut extra: pg_sys::core_yy_extra_type = std::mem::zeroed();
        let scanner = pg_sys::scanner_init(
            alone.as_ptr(),
            &mut extra,
            &raw const pg_sys::ScanKeywords,
            pg_sys::ScanKeywordTokens.as_ptr(),
        );
        let mut depth = 0i32;
        let mut never_negative = true;
        loop {
            let mut lval: pg_sys::core_YYSTYPE = std::mem::zeroed();
            let mut lloc: std::ffi::c_int = 0;
            match pg_sys::core_yylex(&mut lval, &mut lloc, scanner) {
                0 => break,
                t if t == b'(' as i32 => depth += 1,
                t if t == b')' as i32 => {
                    depth -= 1;
                    never_negative &= depth >= 0;
                }
                _ => {}
            }
        }
        pg_sys::scanner_finish(scanner);
        never_negative && depth == 0
    };
    if !balanced {
        return Err(bad("its parentheses do not balance"));
    }
    Ok(true)
}
