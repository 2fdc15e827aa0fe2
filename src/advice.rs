//! Index advice from the observed workload: `tenancy._workload_advice()`, which
//! `tenancy.index_advice()` (sql/advice.sql) adds to the catalog advice.
//!
//! What it reads and runs (docs/index-advice.md):
//! - `pg_qualstats` (optional, detected at run time): the predicates the server evaluated, per
//!   query (`queryid`, needs `compute_query_id = on` or pg_stat_statements), the role that ran
//!   it and how often, and one example text per query;
//! - each observed query touching a tenant table is planned again (generic plan, `EXPLAIN
//!   (FORMAT JSON, VERBOSE) EXECUTE` of a prepared copy, parameters NULL) **as the role that ran
//!   it, in a security-restricted operation**: whatever its text calls runs with that role's
//!   rights, never the caller's; a text that fails to plan is skipped (subtransaction);
//! - from the predicates (equality, range) and the sort directly over the table's scan, a
//!   candidate index led by the workspace column ([`plan::candidate`]); none when an existing
//!   index serves it already ([`plan::serves`]); candidates of a table merged ([`plan::merge`]);
//! - `hypopg` (optional): each merged index is created hypothetically and the queries planned
//!   again: an index is advised only for the queries whose plan uses it at a lower estimated
//!   cost (at least [`MIN_GAIN`] lower), with their cost before and after. Without hypopg the
//!   candidates are advised unverified, and a note says so;
//! - an existing plain index that is a prefix of an advised one is reported redundant.
//!
//! Nothing is cached; hypothetical indexes and prepared statements are removed before return.

mod plan;

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

use crate::pg::scope::{in_subtransaction, with_settings};
use plan::Key;

/// An advised index must lower a query's estimated cost by at least this fraction.
const MIN_GAIN: f64 = 0.10;
/// Name of the prepared copy of an observed query (deallocated at once).
const STMT: &str = "tenancy_advice_query";

/// (relid, kind, reason, ddl, queries, calls, cost_before, cost_after): see `_workload_advice`.
type AdviceRow = (
    Option<pg_sys::Oid>,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<f64>,
    Option<f64>,
);

fn note(reason: String) -> AdviceRow {
    (None, "note".into(), reason, None, None, None, None, None)
}

pgrx::extension_sql!(
    r#"
REVOKE ALL ON FUNCTION @extschema@._workload_advice(text, integer) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._workload_advice(text, integer) IS
'Internal: the workload rows of index_advice() (kind workload_index, redundant_index or note), from pg_qualstats and verified with hypopg; plans observed queries as the roles that ran them.';
"#,
    name = "advice_sql",
    requires = [workload_advice]
);

/// Workload advice rows (see the module documentation); `max_queries`: the most frequent
/// observed queries considered.
#[pg_extern(volatile, parallel_unsafe, name = "_workload_advice")]
pub(crate) fn workload_advice(
    workspace_column: &str,
    max_queries: default!(i32, 200),
) -> Result<
    TableIterator<
        'static,
        (
            name!(relid, Option<pg_sys::Oid>),
            name!(kind, String),
            name!(reason, String),
            name!(ddl, Option<String>),
            name!(queries, Option<String>),
            name!(calls, Option<i64>),
            name!(cost_before, Option<f64>),
            name!(cost_after, Option<f64>),
        ),
    >,
    pgrx::spi::Error,
> {
    Ok(TableIterator::new(advise(
        workspace_column,
        max_queries.max(1) as usize,
    )?))
}

struct Tenant {
    workspace: i16,
    qualified: String,
    relname: String,
}

#[derive(Default)]
struct Quals {
    /// equality columns, with whether the operator is leakproof
    equal: Vec<(i16, bool)>,
    /// range columns with their occurrences (most used first once sorted) and leakproofness
    range: Vec<(i16, i64, bool)>,
}

struct Observed {
    userid: pg_sys::Oid,
    /// the search path the role's sessions start with; None: the role is gone
    path: Option<CString>,
    text: String,
    calls: i64,
    quals: HashMap<pg_sys::Oid, Quals>,
}

/// What one observed query wants of one table, before the columns are ordered.
struct Want {
    query: usize,
    relid: pg_sys::Oid,
    equal: Vec<i16>,
    range: Vec<i16>,
    sort: Option<Vec<Key>>,
    cost_before: f64,
}

struct Candidate {
    query: usize,
    relid: pg_sys::Oid,
    keys: Vec<Key>,
    cost_before: f64,
}

fn advise(workspace_column: &str, max_queries: usize) -> Result<Vec<AdviceRow>, pgrx::spi::Error> {
    let mut rows = Vec::new();
    let Some(qs) = extension_schema("pg_qualstats")? else {
        rows.push(note(
            "workload advice needs pg_qualstats, which is not installed in this database: apt-get install \
             postgresql-15-pg-qualstats postgresql-15-hypopg; shared_preload_libraries = 'tenancy, pg_qualstats' and \
             compute_query_id = on; restart; CREATE EXTENSION pg_qualstats; CREATE EXTENSION hypopg; let the workload run \
             (docs/index-advice.md). Until then: the catalog advice only."
                .into(),
        ));
        return Ok(rows);
    };
    let preload: String = crate::pg::spi::one(
        "SELECT pg_catalog.current_setting('shared_preload_libraries')",
        &[],
    )?
    .unwrap_or_default();
    if !preload
        .split(',')
        .any(|l| l.trim().trim_matches('"') == "pg_qualstats")
    {
        rows.push(note(
            "pg_qualstats is installed but not in shared_preload_libraries, so it observed nothing: add it (after tenancy) \
             and restart."
                .into(),
        ));
        return Ok(rows);
    }
    let hypopg = extension_schema("hypopg")?;
    let tenants = tenant_tables(workspace_column)?;
    let (observed, unlinked) = observe(&qs, &tenants, max_queries)?;
    if unlinked > 0 && observed.is_empty() {
        rows.push(note(format!(
            "pg_qualstats observed {unlinked} predicates on tenant tables without a query id: set compute_query_id = on \
             (or load pg_stat_statements) so that predicates can be tied to their query."
        )));
    }
    if observed.is_empty() {
        rows.push(note(
            "no observed query on a tenant table yet: let the workload run (pg_qualstats samples \
             pg_qualstats.sample_rate of the queries), then call index_advice() again."
                .into(),
        ));
        return Ok(rows);
    }
    if hypopg.is_none() {
        rows.push(note(
            "hypopg is not installed: the workload advice below is not verified by the planner (no cost before/after); \
             apt-get install postgresql-15-hypopg and CREATE EXTENSION hypopg."
                .into(),
        ));
    }

    // 1. each observed query, planned as it is
    let mut failures: Vec<String> = Vec::new();
    let mut candidates: Vec<Candidate> = Vec::new();
    let existing = existing_indexes(&tenants)?;
    let mut rls_applies: HashMap<(pg_sys::Oid, pg_sys::Oid), bool> = HashMap::new();
    let mut left_out: HashMap<pg_sys::Oid, std::collections::BTreeSet<i16>> = HashMap::new();
    let mut wants: Vec<Want> = Vec::new();
    for (qi, q) in observed.iter().enumerate() {
        let base = match explain(q, hypopg.as_deref(), &[]) {
            Ok(Some((p, _))) => p,
            Ok(None) => continue,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        for scan in &base.scans {
            let Some(relid) = relation(&scan.schema, &scan.relation) else {
                continue;
            };
            if !tenants.contains_key(&relid) {
                continue;
            }
            let Some(quals) = q.quals.get(&relid) else {
                continue;
            };
            let sort: Option<Vec<Key>> = (!scan.sort.is_empty()).then(|| {
                scan.sort
                    .iter()
                    .map(|k| {
                        let (col, desc) = plan::parse_sort_key(k, &scan.alias)?;
                        let attnum = attnum(relid, &col)?;
                        Some(Key { attnum, desc })
                    })
                    .collect::<Option<Vec<Key>>>()
                    .unwrap_or_default()
            });
            // under row-level security a predicate whose operator is not leakproof stays a filter
            // above the policy (it cannot become an index condition): leave its column out
            let rls = *rls_applies
                .entry((relid, q.userid))
                .or_insert_with(|| subject_to_rls(relid, q.userid).unwrap_or(true));
            let usable = |leakproof: bool| leakproof || !rls;
            // advice is for workspace-scoped access: the query (or the isolation policy) fixes the
            // workspace on this table; a join reaching it by another key is the primary key's job
            if !rls && !quals.equal.iter().any(|e| e.0 == tenants[&relid].workspace) {
                continue;
            }
            let equal: Vec<i16> = quals
                .equal
                .iter()
                .filter(|e| usable(e.1))
                .map(|e| e.0)
                .collect();
            let range: Vec<i16> = quals
                .range
                .iter()
                .filter(|r| usable(r.2))
                .map(|r| r.0)
                .collect();
            for e in quals.equal.iter().filter(|e| !usable(e.1)) {
                left_out.entry(relid).or_default().insert(e.0);
            }
            wants.push(Want {
                query: qi,
                relid,
                equal,
                range,
                sort,
                cost_before: base.cost,
            });
        }
    }
    // equality columns in the order of how many observed queries of the table use them (then
    // attribute order): queries that share columns then share index prefixes, and merge
    let mut uses: HashMap<(pg_sys::Oid, i16), usize> = HashMap::new();
    for w in &wants {
        for &a in w.equal.iter().collect::<std::collections::BTreeSet<_>>() {
            *uses.entry((w.relid, a)).or_default() += 1;
        }
    }
    for w in wants {
        let t = &tenants[&w.relid];
        let mut equal: Vec<i16> = w
            .equal
            .iter()
            .copied()
            .filter(|&a| a != t.workspace)
            .collect();
        equal.sort_unstable();
        equal.dedup();
        equal.sort_by_key(|&a| {
            (
                std::cmp::Reverse(uses.get(&(w.relid, a)).copied().unwrap_or(0)),
                a,
            )
        });
        let keys = plan::candidate(t.workspace, &equal, w.sort.as_deref(), &w.range);
        if keys.len() < 2 {
            continue; // the workspace column alone: the catalog advice covers it
        }
        let n_equal = 1 + equal.len();
        if existing.get(&w.relid).is_some_and(|ix| {
            ix.iter()
                .any(|e| e.usable && plan::serves(&e.keys, &keys, n_equal))
        }) {
            continue; // an existing index serves it already
        }
        candidates.push(Candidate {
            query: w.query,
            relid: w.relid,
            keys,
            cost_before: w.cost_before,
        });
    }
    if !failures.is_empty() {
        rows.push(note(format!(
            "{} observed queries could not be planned again and were skipped (first: {})",
            failures.len(),
            failures[0]
        )));
    }

    // 2. merged per table, verified with hypothetical indexes
    let mut by_table: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, c) in candidates.iter().enumerate() {
        by_table
            .entry(tenants[&c.relid].qualified.clone())
            .or_default()
            .push(i);
    }
    for idxs in by_table.values() {
        let relid = candidates[idxs[0]].relid;
        let t = &tenants[&relid];
        let keys: Vec<Vec<Key>> = idxs.iter().map(|&i| candidates[i].keys.clone()).collect();
        let merged = plan::merge(&keys);
        let defs: Vec<String> = merged.iter().map(|(k, _)| column_list(relid, k)).collect();
        // per advised index: (query, calls, before, after)
        let mut served: Vec<Vec<(usize, f64, Option<f64>)>> = vec![Vec::new(); merged.len()];
        for (m, (_, members)) in merged.iter().enumerate() {
            for &member in members {
                let c = &candidates[idxs[member]];
                if hypopg.is_none() {
                    served[m].push((c.query, c.cost_before, None));
                    continue;
                }
                let hypo: Vec<String> = defs
                    .iter()
                    .map(|d| format!("CREATE INDEX ON {} USING btree ({d})", t.qualified))
                    .collect();
                match explain(&observed[c.query], hypopg.as_deref(), &hypo) {
                    Ok(Some((after, names))) => {
                        // which advised index the scan of this table uses now, if any
                        let used = after
                            .scans
                            .iter()
                            .filter(|s| relation(&s.schema, &s.relation) == Some(relid))
                            .find_map(|s| {
                                let ix = s.index.as_deref()?;
                                names.iter().position(|n| n == ix)
                            });
                        if let Some(u) = used {
                            if after.cost <= c.cost_before * (1.0 - MIN_GAIN)
                                && !served[u].iter().any(|(q, ..)| *q == c.query)
                            {
                                served[u].push((c.query, c.cost_before, Some(after.cost)));
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => failures.push(e),
                }
            }
        }
        // fewer indexes where the planner agrees: drop an advised index (least called first) when
        // every query it serves does nearly as well (within 10%) with the others
        if hypopg.is_some() {
            loop {
                let mut live: Vec<usize> = (0..merged.len())
                    .filter(|&m| !served[m].is_empty())
                    .collect();
                if live.len() < 2 {
                    break;
                }
                live.sort_by_key(|&m| {
                    (
                        served[m]
                            .iter()
                            .map(|(q, ..)| observed[*q].calls)
                            .sum::<i64>(),
                        m,
                    )
                });
                let mut dropped = false;
                for &x in &live {
                    let others: Vec<usize> = live.iter().copied().filter(|&m| m != x).collect();
                    let hypo: Vec<String> = others
                        .iter()
                        .map(|&m| {
                            format!("CREATE INDEX ON {} USING btree ({})", t.qualified, defs[m])
                        })
                        .collect();
                    let mut moves = Vec::new();
                    for &(q, before, after) in &served[x] {
                        let Ok(Some((plan, names))) =
                            explain(&observed[q], hypopg.as_deref(), &hypo)
                        else {
                            break;
                        };
                        let used = plan
                            .scans
                            .iter()
                            .filter(|s| relation(&s.schema, &s.relation) == Some(relid))
                            .find_map(|s| {
                                let ix = s.index.as_deref()?;
                                names.iter().position(|n| n == ix)
                            });
                        match (used, after) {
                            (Some(u), Some(a))
                                if plan.cost <= a * (1.0 + MIN_GAIN)
                                    && plan.cost <= before * (1.0 - MIN_GAIN) =>
                            {
                                moves.push((others[u], (q, before, Some(plan.cost))))
                            }
                            _ => break,
                        }
                    }
                    if moves.len() == served[x].len() {
                        served[x].clear();
                        for (y, s) in moves {
                            if !served[y].iter().any(|(q, ..)| *q == s.0) {
                                served[y].push(s);
                            }
                        }
                        dropped = true;
                        break;
                    }
                }
                if !dropped {
                    break;
                }
            }
        }
        for (m, (keys, _)) in merged.iter().enumerate() {
            if served[m].is_empty() {
                continue;
            }
            let calls: i64 = served[m].iter().map(|(q, ..)| observed[*q].calls).sum();
            let weighted = |f: &dyn Fn(&(usize, f64, Option<f64>)) -> Option<f64>| -> Option<f64> {
                let mut sum = 0.0;
                for s in &served[m] {
                    sum += f(s)? * observed[s.0].calls as f64;
                }
                Some(sum / calls.max(1) as f64)
            };
            let before = weighted(&|s| Some(s.1));
            let after = weighted(&|s| s.2);
            let queries: Vec<String> = served[m]
                .iter()
                .map(|(q, ..)| {
                    format!(
                        "[{} calls] {}",
                        observed[*q].calls,
                        excerpt(&observed[*q].text)
                    )
                })
                .collect();
            let name = index_name(&t.relname, &names_of(relid, keys));
            rows.push((
                Some(relid),
                "workload_index".into(),
                format!(
                    "workload: {} observed quer{} ({} calls) filter{} by {}{}{}",
                    served[m].len(),
                    if served[m].len() == 1 { "y" } else { "ies" },
                    calls,
                    if served[m].len() == 1 { "s" } else { "" },
                    defs[m],
                    match (before, after) {
                        (Some(b), Some(a)) => format!("; estimated cost per execution {b:.1} -> {a:.1}"),
                        _ => "; not verified (hypopg missing)".into(),
                    },
                    match left_out.get(&relid) {
                        Some(cols) if !cols.is_empty() => format!(
                            "; left out: {} (compared with an operator that is not leakproof: under row-level security it stays a filter)",
                            names_of(relid, &cols.iter().map(|&attnum| Key { attnum, desc: false }).collect::<Vec<_>>()).iter().map(|n| quote_always(n)).collect::<Vec<_>>().join(", ")
                        ),
                        _ => String::new(),
                    }
                ),
                Some(format!("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({});", quote_always(&name), t.qualified, defs[m])),
                Some(queries.join("\n")),
                Some(calls),
                before,
                after,
            ));
            // existing plain indexes this one makes redundant
            for e in existing.get(&relid).into_iter().flatten() {
                if e.plain && plan::strict_prefix(&e.keys, keys) {
                    rows.push((
                        Some(relid),
                        "redundant_index".into(),
                        format!("index {} is a prefix of the advised {}: every scan it serves, the advised index serves", e.name, quote_always(&name)),
                        Some(format!("DROP INDEX CONCURRENTLY {};", e.name)),
                        None,
                        None,
                        None,
                        None,
                    ));
                }
            }
        }
    }
    Ok(rows)
}

/// (observed queries on tenant tables, most frequent first; predicates without a query id)
fn observe(
    qs: &str,
    tenants: &HashMap<pg_sys::Oid, Tenant>,
    max: usize,
) -> Result<(Vec<Observed>, i64), pgrx::spi::Error> {
    let relids: Vec<pg_sys::Oid> = tenants.keys().copied().collect();
    let schema = quote_always(qs);
    let sql = format!(
        "SELECT q.queryid, q.userid, q.lrelid, q.lattnum, o.oprname::text, sum(q.occurences)::bigint, p.proleakproof
           FROM {schema}.pg_qualstats() q
           JOIN pg_catalog.pg_operator o ON o.oid = q.opno
           JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
          WHERE q.dbid = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())
            AND q.rrelid IS NULL AND q.lrelid = ANY($1)
          GROUP BY 1, 2, 3, 4, 5, 7"
    );
    let texts_sql = format!("SELECT queryid, query FROM {schema}.pg_qualstats_example_queries()");
    Spi::connect(|client| {
        let mut by_query: HashMap<i64, Observed> = HashMap::new();
        let mut users: HashMap<i64, HashMap<pg_sys::Oid, i64>> = HashMap::new();
        let mut unlinked = 0i64;
        for row in client.select(&sql, None, &[DatumWithOid::from(relids.clone())])? {
            let queryid: Option<i64> = row.get(1)?;
            let (Some(userid), Some(relid), Some(attnum), Some(op), Some(n)) = (
                row.get::<pg_sys::Oid>(2)?,
                row.get::<pg_sys::Oid>(3)?,
                row.get::<i16>(4)?,
                row.get::<String>(5)?,
                row.get::<i64>(6)?,
            ) else {
                continue;
            };
            let leakproof = row.get::<bool>(7)?.unwrap_or(false);
            let Some(queryid) = queryid.filter(|&q| q != 0) else {
                unlinked += 1;
                continue;
            };
            *users.entry(queryid).or_default().entry(userid).or_default() += n;
            let o = by_query.entry(queryid).or_insert_with(|| Observed {
                userid,
                path: None,
                text: String::new(),
                calls: 0,
                quals: HashMap::new(),
            });
            o.calls = o.calls.max(n);
            let quals = o.quals.entry(relid).or_default();
            match op.as_str() {
                "=" => quals.equal.push((attnum, leakproof)),
                "<" | "<=" | ">" | ">=" => quals.range.push((attnum, n, leakproof)),
                _ => {}
            }
        }
        for row in client.select(&texts_sql, None, &[])? {
            let (Some(queryid), Some(text)) = (row.get::<i64>(1)?, row.get::<String>(2)?) else {
                continue;
            };
            if let Some(o) = by_query.get_mut(&queryid) {
                o.text = plan::strip_prepare(&text).to_string();
            }
        }
        let mut observed: Vec<(i64, Observed)> = by_query
            .into_iter()
            .filter(|(_, o)| !o.text.is_empty())
            .collect();
        for (queryid, o) in observed.iter_mut() {
            // the role that ran it most
            if let Some((&u, _)) = users[queryid]
                .iter()
                .max_by_key(|(u, n)| (**n, u32::from(**u)))
            {
                o.userid = u;
            }
            for q in o.quals.values_mut() {
                q.equal.sort_unstable();
                q.equal.dedup_by_key(|e| e.0);
                q.range.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                q.range.dedup_by_key(|r| r.0);
            }
        }
        observed.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then(a.0.cmp(&b.0)));
        observed.truncate(max);
        Ok((
            observed.into_iter().map(|(_, o)| o).collect::<Vec<_>>(),
            unlinked,
        ))
    })
    .and_then(|(mut observed, unlinked)| {
        // once per query: every plan of it is made under the same role and path
        for o in observed.iter_mut() {
            o.path = session_path(o.userid)?;
        }
        Ok((observed, unlinked))
    })
}

/// Plan an observed query as the role that ran it (generic plan), with hypothetical indexes
/// `hypo` (CREATE INDEX statements) present. Returns the plan and the hypothetical indexes' names
/// (as EXPLAIN shows them), or the error that made planning fail. None: the role is gone.
fn explain(
    q: &Observed,
    hypopg: Option<&str>,
    hypo: &[String],
) -> Result<Option<(plan::Plan, Vec<String>)>, String> {
    let Some(path) = q.path.as_ref() else {
        return Ok(None);
    };
    let text = q.text.trim().trim_end_matches(';').to_string();
    // pg_qualstats would count the plans made here as observations: off while they are made
    let quiet = [(c"pg_qualstats.enabled", c"off")];
    let result = in_subtransaction(|| -> Result<(plan::Plan, Vec<String>), pgrx::spi::Error> {
        with_settings(None, &quiet, || {
            Spi::connect_mut(|client| {
                let mut names = Vec::new();
                if let Some(schema) = hypopg {
                    client.update(
                        &format!("SELECT {}.hypopg_reset()", quote_always(schema)),
                        None,
                        &[],
                    )?;
                    for ddl in hypo {
                        let sql = format!(
                            "SELECT indexname::text FROM {}.hypopg_create_index($1)",
                            quote_always(schema)
                        );
                        for row in client.update(&sql, None, &[DatumWithOid::from(ddl.as_str())])? {
                            if let Some(n) = row.get::<String>(1)? {
                                names.push(n);
                            }
                        }
                    }
                }
                // PREPARE only parses (as the caller: no user code runs in parse analysis; PostgreSQL
                // refuses PREPARE in a security-restricted operation); the plan is made at EXPLAIN
                // EXECUTE as the role that ran the query, which re-analyses and rewrites the
                // statement for that role (its row-level security included) before planning.
                with_settings(None, &[(c"search_path", path.as_c_str())], || {
                    client.update(&format!("PREPARE {STMT} AS {text}"), None, &[])
                })?;
                let n: i64 = client
                .select("SELECT coalesce(cardinality(parameter_types), 0)::int8 FROM pg_catalog.pg_prepared_statements WHERE name = $1", None, &[DatumWithOid::from(STMT)])?
                .first()
                .get_one::<i64>()?
                .unwrap_or(0);
                let args = if n == 0 {
                    String::new()
                } else {
                    format!("({})", vec!["NULL"; n as usize].join(", "))
                };
                let settings = [
                    (c"plan_cache_mode", c"force_generic_plan"),
                    (c"search_path", path.as_c_str()),
                ];
                let json: Option<pgrx::Json> = with_settings(Some(q.userid), &settings, || {
                    client
                        .update(
                            &format!("EXPLAIN (FORMAT JSON, VERBOSE, COSTS) EXECUTE {STMT}{args}"),
                            None,
                            &[],
                        )?
                        .first()
                        .get_one::<pgrx::Json>()
                })?;
                client.update(&format!("DEALLOCATE {STMT}"), None, &[])?;
                if let Some(schema) = hypopg {
                    client.update(
                        &format!("SELECT {}.hypopg_reset()", quote_always(schema)),
                        None,
                        &[],
                    )?;
                }
                let plan = json
                    .and_then(|j| plan::parse_plan(&j.0))
                    .ok_or(pgrx::spi::Error::NoTupleTable)?;
                Ok((plan, names))
            })
        })
    });
    match result {
        Ok(Ok(r)) => Ok(Some(r)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(message) => {
            // a failed PREPARE or EXPLAIN: nothing may be left behind
            let _ = in_subtransaction(|| {
                Spi::connect_mut(|client| {
                    let _ = client.update(&format!("DEALLOCATE {STMT}"), None, &[]);
                    if let Some(schema) = hypopg {
                        let _ = client.update(
                            &format!("SELECT {}.hypopg_reset()", quote_always(schema)),
                            None,
                            &[],
                        );
                    }
                })
            });
            Err(format!("{}: {message}", excerpt(&q.text)))
        }
    }
}

/// Whether row-level security applies to `role` reading `relid` (enabled, and the role neither
/// superuser, BYPASSRLS, nor the owner of a table without FORCE).
fn subject_to_rls(relid: pg_sys::Oid, role: pg_sys::Oid) -> Result<bool, pgrx::spi::Error> {
    Ok(crate::pg::spi::one(
        "SELECT c.relrowsecurity AND NOT r.rolsuper AND NOT r.rolbypassrls
                AND (c.relforcerowsecurity OR NOT pg_catalog.pg_has_role(r.oid, c.relowner, 'USAGE'))
           FROM pg_catalog.pg_class c, pg_catalog.pg_roles r WHERE c.oid = $1 AND r.oid = $2",
        &[DatumWithOid::from(relid), DatumWithOid::from(role)],
    )?
    .unwrap_or(true))
}

/// The search path `userid`'s sessions start with (None: the role is gone).
fn session_path(userid: pg_sys::Oid) -> Result<Option<CString>, pgrx::spi::Error> {
    let role_exists: bool = crate::pg::spi::one(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE oid = $1)",
        &[DatumWithOid::from(userid)],
    )?
    .unwrap_or(false);
    if !role_exists {
        return Ok(None);
    }
    // the search path the role's sessions start with: its settings for this database, for every
    // database, the database's, else the server's default
    let path: String = crate::pg::spi::one(
        "SELECT coalesce(
                    (SELECT substr(c, 13) FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c
                      WHERE s.setrole = $1 AND s.setdatabase = d.oid AND c LIKE 'search\\_path=%'),
                    (SELECT substr(c, 13) FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c
                      WHERE s.setrole = $1 AND s.setdatabase = 0 AND c LIKE 'search\\_path=%'),
                    (SELECT substr(c, 13) FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c
                      WHERE s.setrole = 0 AND s.setdatabase = d.oid AND c LIKE 'search\\_path=%'),
                    (SELECT boot_val FROM pg_catalog.pg_settings WHERE name = 'search_path'))
           FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()",
        &[DatumWithOid::from(userid)],
    )?
    .unwrap_or_else(|| "\"$user\", public".into());
    Ok(CString::new(path).ok())
}

fn extension_schema(name: &str) -> Result<Option<String>, pgrx::spi::Error> {
    crate::pg::spi::one(
        "SELECT n.nspname::text FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = $1",
        &[DatumWithOid::from(name)],
    )
}

fn tenant_tables(workspace_column: &str) -> Result<HashMap<pg_sys::Oid, Tenant>, pgrx::spi::Error> {
    Spi::connect(|client| {
        let mut out = HashMap::new();
        for row in client.select(
            "SELECT relid, attnum, qualified, relname::text FROM tenancy._tenant_tables($1)",
            None,
            &[DatumWithOid::from(workspace_column)],
        )? {
            if let (Some(relid), Some(workspace), Some(qualified), Some(relname)) = (
                row.get::<pg_sys::Oid>(1)?,
                row.get::<i16>(2)?,
                row.get::<String>(3)?,
                row.get::<String>(4)?,
            ) {
                out.insert(
                    relid,
                    Tenant {
                        workspace,
                        qualified,
                        relname,
                    },
                );
            }
        }
        Ok(out)
    })
}

struct Existing {
    name: String,
    keys: Vec<Key>,
    /// valid btree on plain columns, no predicate: can serve a candidate
    usable: bool,
    /// usable, not unique, backs no constraint: can be dropped when made redundant
    plain: bool,
}

fn existing_indexes(
    tenants: &HashMap<pg_sys::Oid, Tenant>,
) -> Result<HashMap<pg_sys::Oid, Vec<Existing>>, pgrx::spi::Error> {
    let relids: Vec<pg_sys::Oid> = tenants.keys().copied().collect();
    Spi::connect(|client| {
        let mut out: HashMap<pg_sys::Oid, Vec<Existing>> = HashMap::new();
        for row in client.select(
            "SELECT i.indrelid, tenancy._qualified_name(i.indexrelid), (i.indkey::int2[])[0:i.indnkeyatts - 1], (i.indoption::int2[])[0:i.indnkeyatts - 1],
                    am.amname = 'btree' AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL,
                    NOT i.indisunique AND NOT EXISTS (SELECT FROM pg_catalog.pg_constraint c WHERE c.conindid = i.indexrelid)
               FROM pg_catalog.pg_index i
               JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
               JOIN pg_catalog.pg_am am ON am.oid = ic.relam
              WHERE i.indrelid = ANY($1)
              ORDER BY 2",
            None,
            &[DatumWithOid::from(relids)],
        )? {
            let (Some(relid), Some(name), Some(cols), Some(opts), Some(usable), Some(plain)) = (
                row.get::<pg_sys::Oid>(1)?,
                row.get::<String>(2)?,
                row.get::<Vec<i16>>(3)?,
                row.get::<Vec<i16>>(4)?,
                row.get::<bool>(5)?,
                row.get::<bool>(6)?,
            ) else {
                continue;
            };
            let keys = cols.iter().zip(opts.iter()).map(|(&attnum, &o)| Key { attnum, desc: o & 1 != 0 }).collect();
            out.entry(relid).or_default().push(Existing { name, keys, usable, plain: usable && plain });
        }
        Ok(out)
    })
}

fn relation(schema: &str, relation: &str) -> Option<pg_sys::Oid> {
    let (s, r) = (CString::new(schema).ok()?, CString::new(relation).ok()?);
    // SAFETY: catalog cache lookups in a transaction.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(s.as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return None;
        }
        let rel = pg_sys::get_relname_relid(r.as_ptr(), nsp);
        (rel != pg_sys::InvalidOid).then_some(rel)
    }
}

fn attnum(relid: pg_sys::Oid, column: &str) -> Option<i16> {
    let c = CString::new(column).ok()?;
    // SAFETY: catalog cache lookup; 0 (InvalidAttrNumber) for a missing or dropped column.
    let n = unsafe { pg_sys::get_attnum(relid, c.as_ptr()) };
    (n > 0).then_some(n)
}

fn names_of(relid: pg_sys::Oid, keys: &[Key]) -> Vec<String> {
    keys.iter()
        .map(|k| {
            crate::pg::catalog::column_name(relid, k.attnum).unwrap_or_else(|| k.attnum.to_string())
        })
        .collect()
}

/// `"col", "other" DESC`: always-quoted columns with their directions.
fn column_list(relid: pg_sys::Oid, keys: &[Key]) -> String {
    names_of(relid, keys)
        .iter()
        .zip(keys)
        .map(|(n, k)| format!("{}{}", quote_always(n), if k.desc { " DESC" } else { "" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `<table>_<columns>_tenancy_idx`, at most 63 bytes (a hash of the full name keeps long ones apart).
fn index_name(relname: &str, columns: &[String]) -> String {
    const SUFFIX: &str = "_tenancy_idx";
    let full = format!("{relname}_{}", columns.join("_"));
    if full.len() + SUFFIX.len() <= 63 {
        return format!("{full}{SUFFIX}");
    }
    let hash = full.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    let mut cut = 63 - SUFFIX.len() - 9;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{:08x}{SUFFIX}", &full[..cut], hash as u32)
}

fn quote_always(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn excerpt(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= 160 {
        one_line
    } else {
        format!("{}…", one_line.chars().take(160).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn index_names_fit_and_stay_apart() {
        let short = super::index_name("Segment", &["workspaceId".into(), "status".into()]);
        assert_eq!(short, "Segment_workspaceId_status_tenancy_idx");
        let long1 = super::index_name(&"x".repeat(60), &["a".into()]);
        let long2 = super::index_name(&"x".repeat(60), &["b".into()]);
        assert!(long1.len() <= 63 && long2.len() <= 63);
        assert_ne!(long1, long2);
        assert!(long1.ends_with("_tenancy_idx"));
    }
}
