//! The SQL the quota trigger prepares: delta statements over the transition tables, counts,
//! the counter update of the table path.

use super::*;

/// The table's schema-qualified, quoted name, from the catalog caches (no SQL: nothing the
/// session's search path could redirect). Plans kept across search_path changes must not
/// resolve the name again.
pub(super) use crate::pg::catalog::qualified_name;

/// The delta statement for one event: per workspace, rows counted after minus before, applied
/// to the counters in workspace order; returns (workspace_id, used, delta) for every workspace
/// that changed (only those with delta > 0 can go over a limit).
pub(super) fn delta_sql(
    relid: pg_sys::Oid,
    event: Event,
    q: &TableQuota,
    shared_path: bool,
) -> String {
    let col = quote_identifier(&q.workspace_column);
    let cond = counted_condition(q);
    let source = match event {
        Event::Insert => {
            format!("SELECT {col} AS ws, count(*) AS n FROM {NEW_TABLE} WHERE {cond} GROUP BY 1")
        }
        Event::Delete => {
            format!("SELECT {col} AS ws, -count(*) AS n FROM {OLD_TABLE} WHERE {cond} GROUP BY 1")
        }
        Event::Update => format!(
            "SELECT ws, sum(n)::bigint AS n FROM (
                 SELECT {col} AS ws, 1 AS n FROM {NEW_TABLE} WHERE {cond}
                 UNION ALL
                 SELECT {col}, -1 FROM {OLD_TABLE} WHERE {cond}) u
              GROUP BY 1"
        ),
        Event::Truncate => {
            return format!(
                "DELETE FROM tenancy.quota_counter WHERE tbl = {}::oid",
                u32::from(relid)
            )
        }
    };
    // Evaluated as the table's owner; the table path then hands the deltas to APPLY_SQL, run
    // as the bookkeeping owner (so counted_when never runs with the bookkeeping owner's rights).
    let _ = shared_path;
    format!("SELECT ws, 0::bigint, n::bigint FROM ({source}) d WHERE n <> 0 ORDER BY ws")
}

/// The table path's counter update: the statement's per-workspace deltas ($2, $3, in workspace
/// order) added to the counter rows of table $1, locked in that order. `last_delta` hands each
/// workspace's delta back through RETURNING, which cannot see `excluded`.
pub(super) const APPLY_SQL: &str = "INSERT INTO tenancy.quota_counter AS c (tbl, workspace_id, used, last_delta)
     SELECT $1::oid, d.ws, d.n, d.n FROM ROWS FROM (pg_catalog.unnest($2::uuid[]), pg_catalog.unnest($3::bigint[])) WITH ORDINALITY AS d(ws, n, i) ORDER BY d.i
     ON CONFLICT (tbl, workspace_id) DO UPDATE SET used = c.used + excluded.used, last_delta = excluded.used
     RETURNING workspace_id, used, last_delta";

/// `(col) IS NOT NULL AND (counted_when)`: which rows count.
pub(super) fn counted_condition(q: &TableQuota) -> String {
    let col = quote_identifier(&q.workspace_column);
    match &q.counted_when {
        Some(expr) => format!("({col}) IS NOT NULL AND ({expr})"),
        None => format!("({col}) IS NOT NULL"),
    }
}

/// One workspace's counted rows (the shared-memory path's first count, and the check while the
/// table is counted directly).
pub(super) fn count_sql(relid: pg_sys::Oid, q: &TableQuota) -> String {
    let col = quote_identifier(&q.workspace_column);
    format!(
        "SELECT count(*) FROM {} WHERE {col} = $1 AND {}",
        qualified_name(relid),
        counted_condition(q)
    )
}
