//! Who may put code in `counted_when`.
//!
//! `counted_when` runs with the rights of the enforced table's owner (see [`super::as_user`]):
//! whoever can change the code it runs can act as that owner. So every function it calls
//! directly (functions, operators' functions, cast and I/O functions) and every domain it
//! coerces to must belong to a superuser or to a role that already has the table owner's
//! privileges (`pg_has_role(code_owner, table_owner, 'USAGE')`): redefining such a function
//! gains nobody anything. Checked whenever the expression is compiled or planned (after an
//! `ALTER FUNCTION ... OWNER TO`, a redefinition or a change of the table's owner, at the next
//! statement), and by every SQL-level count. What those functions call in turn is their
//! owners' business, as everywhere in PostgreSQL; under the `search_path = pg_catalog` the
//! evaluation runs with, an unqualified name in their bodies finds only the catalog's objects.

use std::ffi::{c_void, CString};

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::error::TenancyError;

#[derive(Default)]
struct Found {
    funcs: Vec<pg_sys::Oid>,
    types: Vec<pg_sys::Oid>,
    /// attribute numbers <= 0 of the table's own Vars (system columns, whole-row references)
    system: Vec<i16>,
    /// how many queries deep the walk is (the table is range entry 1 of the outermost)
    depth: u32,
}

#[pg_guard]
unsafe extern "C-unwind" fn collect_function(func: pg_sys::Oid, ctx: *mut c_void) -> bool {
    // SAFETY: ctx is the &mut Found passed to the walk below.
    unsafe { (*ctx.cast::<Found>()).funcs.push(func) };
    false
}

#[pg_guard]
unsafe extern "C-unwind" fn walk(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: a node of an analysed query tree; ctx is the &mut Found of `vet`.
    unsafe {
        pg_sys::check_functions_in_node(node, Some(collect_function), ctx);
        match (*node).type_ {
            pg_sys::NodeTag::T_Query => {
                let found = ctx.cast::<Found>();
                (*found).depth += 1;
                let r = pg_sys::query_tree_walker(node.cast(), Some(walk), ctx, 0);
                (*found).depth -= 1;
                return r;
            }
            pg_sys::NodeTag::T_Var => {
                let var = node.cast::<pg_sys::Var>();
                let depth = (*ctx.cast::<Found>()).depth;
                if (*var).varlevelsup + 1 == depth && (*var).varno == 1 && (*var).varattno <= 0 {
                    (*ctx.cast::<Found>()).system.push((*var).varattno);
                }
            }
            pg_sys::NodeTag::T_CoerceToDomain => {
                (*ctx.cast::<Found>())
                    .types
                    .push((*node.cast::<pg_sys::CoerceToDomain>()).resulttype);
            }
            _ => {}
        }
        pg_sys::expression_tree_walker(node, Some(walk), ctx)
    }
}

/// Refuse (42501) a `counted_when` of table `relid` (quoted, qualified name `qualified`) that
/// calls code owned by a role without the privileges of `table_owner`. Must run inside an SPI
/// connection, as the table owner under `search_path = pg_catalog` (as the evaluation does, so
/// names resolve alike).
pub(super) fn vet(
    qualified: &str,
    cond: &str,
    table_owner: pg_sys::Oid,
) -> Result<(), TenancyError> {
    let sql =
        CString::new(format!("SELECT ({cond})::boolean FROM ONLY {qualified}")).expect("no NUL");
    let mut found = Found::default();
    // SAFETY: SPI is connected (caller); the plan's analysed queries are walked read-only and
    // the plan freed before returning.
    unsafe {
        let plan = pg_sys::SPI_prepare(sql.as_ptr(), 0, std::ptr::null_mut());
        if plan.is_null() {
            return Err(TenancyError::new(
                Code::ERRCODE_INTERNAL_ERROR,
                "tenancy: could not analyse counted_when",
            )
            .detail(format!("counted_when: {cond}")));
        }
        let sources = pg_sys::SPI_plan_get_plan_sources(plan);
        for i in 0..(*sources).length as usize {
            let source = (*(*sources).elements.add(i))
                .ptr_value
                .cast::<pg_sys::CachedPlanSource>();
            let queries = (*source).query_list;
            for j in 0..(if queries.is_null() {
                0
            } else {
                (*queries).length as usize
            }) {
                let query = (*(*queries).elements.add(j))
                    .ptr_value
                    .cast::<pg_sys::Node>();
                walk(query, (&raw mut found).cast());
            }
        }
        pg_sys::SPI_freeplan(plan);
    }
    if let Some(&attnum) = found.system.first() {
        // the transition tables the trigger reads hold the rows' columns only
        let what = match attnum {
            0 => "a whole-row reference".to_string(),
            -1 => "system column ctid".into(),
            -2 => "system column xmin".into(),
            -3 => "system column cmin".into(),
            -4 => "system column xmax".into(),
            -5 => "system column cmax".into(),
            -6 => "system column tableoid".into(),
            n => format!("system attribute {n}"),
        };
        return Err(TenancyError::new(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("counted_when of table {qualified} uses {what}"),
        )
        .detail(format!("The quota trigger evaluates counted_when on the statement's transition tables, which hold the rows' columns only. counted_when: {cond}"))
        .hint("Use the table's own columns, by name."));
    }
    if found.funcs.is_empty() && found.types.is_empty() {
        return Ok(());
    }
    let bad: Option<(String, String)> = Spi::connect(
        |client| -> Result<Option<(String, String)>, pgrx::spi::Error> {
            let rows = client.select(
            "SELECT x.what, x.owner FROM (
                 SELECT pg_catalog.format('function %s', p.oid::pg_catalog.regprocedure) AS what, r.rolname::pg_catalog.text AS owner,
                        r.rolsuper OR pg_catalog.pg_has_role(p.proowner, $2, 'USAGE') AS trusted
                   FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
                  WHERE p.oid = ANY ($1)
                 UNION ALL
                 SELECT pg_catalog.format('type %s', t.oid::pg_catalog.regtype), r.rolname::pg_catalog.text,
                        r.rolsuper OR pg_catalog.pg_has_role(t.typowner, $2, 'USAGE')
                   FROM pg_catalog.pg_type t JOIN pg_catalog.pg_roles r ON r.oid = t.typowner
                  WHERE t.oid = ANY ($3)) x
              WHERE NOT x.trusted ORDER BY 1 LIMIT 1",
            None,
            &[DatumWithOid::from(found.funcs.clone()), DatumWithOid::from(table_owner), DatumWithOid::from(found.types.clone())],
        )?;
            if rows.is_empty() {
                return Ok(None);
            }
            Ok(match rows.first().get_two::<String, String>()? {
                (Some(what), Some(owner)) => Some((what, owner)),
                _ => None,
            })
        },
    )?;
    let Some((what, owner)) = bad else {
        return Ok(());
    };
    let table_owner_name = crate::pg::catalog::role_name(table_owner);
    Err(TenancyError::new(
        Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("counted_when of table {qualified} calls {what}, owned by role {owner}, which lacks the privileges of the table's owner {table_owner_name}"),
    )
    .detail(format!(
        "counted_when runs with the rights of the table's owner: whoever owns the code it calls could act as {table_owner_name} by redefining it. counted_when: {cond}"
    ))
    .hint(format!(
        "Call only code owned by {table_owner_name} (or a role with its privileges) or by a superuser, e.g. ALTER {} OWNER TO {table_owner_name}.",
        if what.starts_with("type") { "DOMAIN ..." } else { "FUNCTION ..." }
    )))
}
