//! Reading a statement's transition tables without SPI: the per-workspace deltas of the
//! shared-memory path (see [`super::shared`]).
//!
//! Running a query over the transition tables (what the table path does) costs an SPI
//! connection, a snapshot and an executor start per statement, as much as the rest of a
//! single-row INSERT's trigger work together. Here the tuplestores are read directly: the
//! workspace column is taken by attribute number, and `counted_when` is compiled once per table
//! and backend into an `ExprState` (parsed and analysed by PostgreSQL against the table, then
//! planned with `expression_planner`, as a CHECK constraint is) and evaluated on each row. A
//! `counted_when` with a sub-query cannot be compiled this way: such a table keeps the SPI query.

use std::collections::BTreeMap;
use std::ffi::CString;

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode as Code;

use super::Event;
use crate::error::TenancyError;
use crate::pg::scope::as_user;

/// The compiled delta reader of one table. Owns a memory context (child of CacheMemoryContext)
/// holding the expression and its evaluation context.
pub(super) struct Deltas {
    ctx: pg_sys::MemoryContext,
    /// 1-based attribute number of the workspace column in the table's row type
    ws_attnum: i32,
    cond: Option<(*mut pg_sys::ExprState, *mut pg_sys::ExprContext)>,
}

/// Switches back to a memory context when dropped.
struct RestoreContext(pg_sys::MemoryContext);

impl Drop for RestoreContext {
    fn drop(&mut self) {
        // SAFETY: the context saved before switching away from it; still alive.
        unsafe { pg_sys::MemoryContextSwitchTo(self.0) };
    }
}

impl Drop for Deltas {
    fn drop(&mut self) {
        // SAFETY: the context was created by `compile` and nothing else refers to it.
        unsafe { pg_sys::MemoryContextDelete(self.ctx) };
    }
}

impl Deltas {
    /// Compile the reader for the trigger's relation. `qualified`: its quoted, schema-qualified
    /// name; `cond`: `counted_when` or None. Ok(None) when `counted_when` needs a sub-query.
    /// Must run inside an SPI connection.
    pub(super) fn compile(
        rel: pg_sys::Relation,
        ws_column: &str,
        cond: Option<&str>,
        qualified: &str,
    ) -> Result<Option<Deltas>, TenancyError> {
        // SAFETY: `rel` is the open trigger relation; its descriptor outlives this call.
        let ws_attnum = unsafe {
            let desc = (*rel).rd_att;
            (0..(*desc).natts as usize)
                .find(|&i| {
                    let att = (*desc).attrs.as_ptr().add(i);
                    !(*att).attisdropped
                        && std::ffi::CStr::from_ptr((*att).attname.data.as_ptr()).to_bytes()
                            == ws_column.as_bytes()
                })
                .map(|i| i as i32 + 1)
        };
        let Some(ws_attnum) = ws_attnum else {
            return Err(TenancyError::new(
                Code::ERRCODE_UNDEFINED_COLUMN,
                format!("workspace column \"{ws_column}\" of {qualified} does not exist"),
            )
            .hint("The column was dropped or renamed after tenancy.enforce_quota(): call enforce_quota() again."));
        };
        // SAFETY: memory context, parser and executor calls of PostgreSQL, made inside an SPI
        // connection (caller) from a trigger (a transaction is open). An ERROR raised inside
        // unwinds as a Rust panic through pgrx's guards and drops `out`, deleting the context.
        unsafe {
            let ctx = pg_sys::AllocSetContextCreateInternal(
                pg_sys::CacheMemoryContext,
                c"tenancy quota deltas".as_ptr(),
                pg_sys::ALLOCSET_SMALL_MINSIZE as usize,
                pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
                pg_sys::ALLOCSET_SMALL_MAXSIZE as usize,
            );
            let mut out = Deltas {
                ctx,
                ws_attnum,
                cond: None,
            };
            let Some(cond) = cond else {
                return Ok(Some(out));
            };
            let sql = CString::new(format!("SELECT ({cond})::boolean FROM ONLY {qualified}"))
                .expect("no NUL");
            let plan = pg_sys::SPI_prepare(sql.as_ptr(), 0, std::ptr::null_mut());
            if plan.is_null() {
                return Err(TenancyError::new(
                    Code::ERRCODE_INTERNAL_ERROR,
                    "tenancy: could not compile counted_when",
                )
                .detail(format!("counted_when: {cond}")));
            }
            let sources = pg_sys::SPI_plan_get_plan_sources(plan);
            let source = (*(*sources).elements)
                .ptr_value
                .cast::<pg_sys::CachedPlanSource>();
            let queries = (*source).query_list;
            let query = (*(*queries).elements).ptr_value.cast::<pg_sys::Query>();
            let target = (*(*(*query).targetList).elements)
                .ptr_value
                .cast::<pg_sys::TargetEntry>();
            let expr = (*target).expr;
            if pg_sys::contain_subplans(expr.cast()) {
                pg_sys::SPI_freeplan(plan);
                return Ok(None);
            }
            let old = pg_sys::MemoryContextSwitchTo(ctx);
            // declared after `out`, so dropped before it when an ERROR unwinds from here: the
            // context is never deleted while it is the current one
            let _restore = RestoreContext(old);
            let copied = pg_sys::copyObjectImpl(expr.cast()).cast::<pg_sys::Expr>();
            let planned = pg_sys::expression_planner(copied);
            let state = pg_sys::ExecInitExpr(planned, std::ptr::null_mut());
            let econtext = pg_sys::CreateStandaloneExprContext();
            pg_sys::MemoryContextSwitchTo(old);
            pg_sys::SPI_freeplan(plan);
            out.cond = Some((state, econtext));
            Ok(Some(out))
        }
    }

    /// Per-workspace net change of counted rows of one statement (new rows +1, old rows -1),
    /// in workspace order, zeros left out. `counted_when` is evaluated as `owner` (the table's
    /// owner) in a security-restricted operation under `search_path = pg_catalog`, as the SPI
    /// path runs it ([`as_user`]): a PL/pgSQL function it calls resolves the names in its body
    /// against the catalog, never against the writing session's search path.
    pub(super) fn deltas(
        &self,
        td: &pg_sys::TriggerData,
        event: Event,
        owner: pg_sys::Oid,
    ) -> Vec<([u8; 16], i64)> {
        if self.cond.is_some() {
            as_user(owner, || self.read(td, event))
        } else {
            self.read(td, event)
        }
    }

    fn read(&self, td: &pg_sys::TriggerData, event: Event) -> Vec<([u8; 16], i64)> {
        let mut map = BTreeMap::<[u8; 16], i64>::new();
        let stores: &[(*mut pg_sys::Tuplestorestate, i64)] = match event {
            Event::Insert => &[(td.tg_newtable, 1)],
            Event::Delete => &[(td.tg_oldtable, -1)],
            Event::Update => &[(td.tg_newtable, 1), (td.tg_oldtable, -1)],
            Event::Truncate => &[],
        };
        for &(store, sign) in stores {
            if store.is_null() {
                continue;
            }
            // SAFETY: the transition tuplestores of this firing hold rows of the trigger
            // relation's row type, deformed up to the workspace column.
            unsafe {
                crate::pg::trigger::each_row(store, td.tg_relation, self.ws_attnum, |slot| {
                    let Some(ws) = crate::pg::trigger::uuid_at(slot, self.ws_attnum) else {
                        return;
                    };
                    if let Some((state, econtext)) = self.cond {
                        (*econtext).ecxt_scantuple = slot;
                        let mut isnull = false;
                        let old = pg_sys::MemoryContextSwitchTo((*econtext).ecxt_per_tuple_memory);
                        let eval = (*state).evalfunc.expect("compiled expression");
                        let d = pgrx::pg_sys::ffi::pg_guard_ffi_boundary(|| {
                            eval(state, econtext, &mut isnull)
                        });
                        pg_sys::MemoryContextSwitchTo(old);
                        pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
                        if isnull || d.value() == 0 {
                            return;
                        }
                    }
                    *map.entry(ws).or_default() += sign;
                });
            }
        }
        map.into_iter().filter(|&(_, n)| n != 0).collect()
    }
}
