//! Quotas on Citus distributed tables (issue 19): counted where the rows land.
//!
//! A table hash-distributed by the workspace column keeps all the rows of one workspace in one
//! shard, on one node. `enforce_quota()` on the coordinator creates the quota triggers on the
//! distributed table with three arguments; Citus creates them on every shard (and on the shards
//! a split or a move makes later). On a worker the trigger then fires on the shard the rows land
//! in, whoever wrote them (through the coordinator or on the worker itself), and counts them in
//! that worker's shared memory per (shard, workspace), exactly as on one server: compare-and-swap
//! reservations, the first count of a workspace from the shard's rows.
//!
//! The arguments: the table's oid on the coordinator (the key of its limits), the workspace
//! column, `counted_when` ('' for none). The limits are in `tenancy.quota_limit_citus`, a Citus
//! reference table (a copy on every node) that `set_quota()` and `clear_quota()` rewrite on the
//! coordinator in the same transaction (Citus commits it on every node with two-phase commit);
//! the trigger reads them from its node's copy at every firing.

use super::*;

/// What `enforce_quota()` gives the triggers of a distributed table (see the module docs).
pub(super) struct CitusQuota {
    key: i64,
    workspace_column: String,
    counted_when: Option<String>,
}

/// The trigger's Citus arguments, if it has them (the triggers of a table that is not
/// distributed have none).
pub(super) fn from_trigger(t: &PgTrigger<'_>) -> Option<CitusQuota> {
    let args = t.extra_args().ok()?;
    if args.len() != 3 {
        return None;
    }
    let Ok(key) = args[0].parse::<i64>() else {
        TenancyError::new(
            Code::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
            "tenancy.quota_trigger(): malformed arguments",
        )
        .detail(format!(
            "The first argument is {:?}, not a table key.",
            args[0]
        ))
        .hint("Install the triggers with tenancy.enforce_quota(); do not create them by hand.")
        .raise();
    };
    Some(CitusQuota {
        key,
        workspace_column: args[1].clone(),
        counted_when: (!args[2].is_empty()).then(|| args[2].clone()),
    })
}

/// The table's settings (from the arguments) and its limits, read from this node's copy of
/// `tenancy.quota_limit_citus` with a fresh snapshot, as the bookkeeping owner. SPI connected.
pub(super) fn table_quota(c: &CitusQuota, owner: pg_sys::Oid) -> Result<TableQuota, TenancyError> {
    let rows = crate::pg::citus::nested_allowed(|| {
        as_user(owner, || {
            crate::pg::spi::select_latest(
                "SELECT workspace_id, max_rows FROM tenancy.quota_limit_citus WHERE table_key = $1",
                &[(pg_sys::INT8OID, pg_sys::Datum::from(c.key))],
            )
        })
    })?;
    let mut q = TableQuota {
        workspace_column: c.workspace_column.clone(),
        counted_when: c.counted_when.clone(),
        default_limit: None,
        overrides: HashMap::new(),
        // counted in shared memory only: nothing reads tenancy.quota_counter for a shard
        shared_counts: true,
        citus_shard: true,
    };
    q.add_limits(rows);
    Ok(q)
}

/// The distributed table's name from its shard's: Citus names a shard `<table>_<shard id>`.
pub(super) fn logical_name(shard: &str) -> String {
    let (body, quoted) = match shard.strip_suffix('"') {
        Some(b) => (b, true),
        None => (shard, false),
    };
    match body.rfind('_') {
        Some(i) if i + 1 < body.len() && body[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            let mut name = body[..i].to_string();
            if quoted {
                name.push('"');
            }
            name
        }
        _ => shard.to_string(),
    }
}

/// Quotas on Citus need the shared-memory counters on the node the trigger fires on.
pub(super) fn not_preloaded(relid: pg_sys::Oid) -> TenancyError {
    TenancyError::new(
        Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!(
            "quota on {} needs tenancy in shared_preload_libraries on this node",
            regclass_text(relid)
        ),
    )
    .detail("The quota of a Citus distributed table is counted in the shared memory of the node that holds each shard.")
    .hint("Set shared_preload_libraries = 'citus,tenancy' on every node and restart it.")
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    #[pgrx::pg_test]
    fn shard_names_map_to_their_table() {
        use super::logical_name;
        assert_eq!(logical_name("\"Segment_102045\""), "\"Segment\"");
        assert_eq!(
            logical_name("public.\"Segment_102045\""),
            "public.\"Segment\""
        );
        assert_eq!(logical_name("journey_7"), "journey");
        assert_eq!(logical_name("\"Segment_x\""), "\"Segment_x\"");
        assert_eq!(logical_name("plain"), "plain");
    }
}
