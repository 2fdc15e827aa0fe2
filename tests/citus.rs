//! tenancy on a real Citus 13.2.2 cluster (issue 19, item 1): a coordinator and two workers on
//! loopback ports (25483-25485), each with `shared_preload_libraries = 'citus,tenancy'`, the
//! Dittofeed-shaped fixture distributed the way the docs say (`shard_readiness()` fixes, then
//! `shard_plan()`), the README's migration applied unchanged on the distributed tables, then:
//! the isolation matrix as a non-owner application role (multi-shard and router queries, writes
//! into another workspace, no context) in both policy forms; the hierarchy form where Citus
//! would turn restrictive policies permissive; concurrent clients while a worker restarts.
//!
//! Citus comes from `../shared/citus` (scripts/setup.sh runs its install.sh); the test fails,
//! never skips, when it is not installed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenancy_it::*;

const DB: &str = "citus_it";
const APP: &str = "citus_app";

struct Citus {
    coordinator: Cluster,
    workers: Vec<Cluster>,
}

fn pkglibdir() -> String {
    let out = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_config")
        .arg("--pkglibdir")
        .output()
        .expect("pg_config");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn start_citus(name: &str, ports: [u16; 3]) -> Citus {
    let lib = format!("{}/citus.so", pkglibdir());
    assert!(
        std::path::Path::new(&lib).exists(),
        "Citus is not installed ({lib} is missing): scripts/setup.sh installs it from \
         ../shared/citus beside the checkout (or the folder TENANCY_CITUS_DIR names)"
    );
    let conf = [
        "--conf",
        "shared_preload_libraries = 'citus,tenancy'",
        // Citus commits multi-node DDL and writes with two-phase commit
        "--conf",
        "max_prepared_transactions = 200",
        // a connection opened while a worker shuts down (Citus reconnecting during the restart)
        // keeps the postmaster waiting for its startup packet up to authentication_timeout:
        // once it was the whole minute pg_ctl waits, and the restart failed
        "--conf",
        "authentication_timeout = '5s'",
    ];
    let coordinator = Cluster::start(&format!("it-citus-{name}-coordinator"), ports[0], &conf);
    let workers = vec![
        Cluster::start(&format!("it-citus-{name}-worker-1"), ports[1], &conf),
        Cluster::start(&format!("it-citus-{name}-worker-2"), ports[2], &conf),
    ];
    for node in std::iter::once(&coordinator).chain(&workers) {
        node.connect("postgres")
            .batch_execute(&format!("CREATE DATABASE {DB}"))
            .unwrap();
        node.connect(DB)
            .batch_execute("CREATE EXTENSION citus")
            .unwrap();
    }
    let mut c = coordinator.connect(DB);
    c.execute(
        "SELECT citus_set_coordinator_host('127.0.0.1', $1)",
        &[&(ports[0] as i32)],
    )
    .unwrap();
    for w in &workers {
        c.execute(
            "SELECT citus_add_node('127.0.0.1', $1)",
            &[&(w.port as i32)],
        )
        .unwrap();
    }
    // propagated by Citus to the workers
    c.batch_execute("CREATE EXTENSION tenancy").unwrap();
    for w in &workers {
        let v: Option<String> = w
            .connect(DB)
            .query_one(
                "SELECT extversion FROM pg_extension WHERE extname = 'tenancy'",
                &[],
            )
            .map(|r| r.get(0))
            .ok();
        assert!(v.is_some(), "tenancy not propagated to worker {}", w.port);
    }
    Citus {
        coordinator,
        workers,
    }
}

/// The readiness fixes in order, the plan statement by statement.
fn distribute(c: &mut Client) {
    assert!(apply_shard_fixes(c) > 0);
    let plan: String = c
        .query_one("SELECT tenancy.shard_plan()", &[])
        .unwrap()
        .get(0);
    // one statement per line that is not a comment (create_distributed_table with a foreign key
    // to a reference table must not run in a transaction block)
    for stmt in plan
        .lines()
        .filter(|l| !l.starts_with("--") && !l.trim().is_empty())
    {
        c.batch_execute(stmt)
            .unwrap_or_else(|e| panic!("{stmt}: {e}\n{plan}"));
    }
    let (hash, reference, tenant): (i64, i64, i64) = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_dist_partition WHERE partmethod = 'h'),
                    (SELECT count(*) FROM pg_dist_partition WHERE partmethod = 'n'
                        AND logicalrelid::regclass::text <> 'tenancy.quota_limit_citus'),
                    (SELECT count(*) FROM tenancy._shard_tables('workspaceId') WHERE tenant)",
            &[],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(
        (hash, reference),
        (tenant, 1),
        "every tenant table distributed"
    );
    assert_eq!(tenant, 11);
}

/// The tenant tables, quoted and qualified.
fn tenant_tables(c: &mut Client) -> Vec<String> {
    c.query(
        "SELECT format('%I.%I', n.nspname, cl.relname) FROM pg_dist_partition p
           JOIN pg_class cl ON cl.oid = p.logicalrelid JOIN pg_namespace n ON n.oid = cl.relnamespace
          WHERE p.partmethod = 'h' ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Rows per (table, workspace) as the superuser sees them.
fn owner_count(c: &mut Client, table: &str, ws: &str) -> i64 {
    c.query_one(
        &format!("SELECT count(*) FROM {table} WHERE \"workspaceId\" = $1::text::uuid"),
        &[&ws],
    )
    .unwrap()
    .get(0)
}

fn children(c: &mut Client, parent: &str) -> Vec<String> {
    c.query(
        "SELECT id::text FROM \"Workspace\" WHERE \"parentWorkspaceId\" = $1::text::uuid AND status = 'Active' ORDER BY 1",
        &[&parent],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The isolation matrix for the standard form: multi-shard and router reads, writes into
/// another workspace, no context.
fn standard_matrix(admin: &mut Client, app: &mut Client, tables: &[String], wss: &[String]) {
    for (i, w) in wss.iter().enumerate() {
        let other = &wss[(i + 1) % wss.len()];
        let mut tx = app.transaction().unwrap();
        tx.execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[w])
            .unwrap();
        for t in tables {
            let expected = owner_count(admin, t, w);
            // multi-shard: every shard, on both workers
            let (n, foreign): (i64, i64) = tx
                .query_one(
                    &format!("SELECT count(*), count(*) FILTER (WHERE \"workspaceId\" <> $1::text::uuid) FROM {t}"),
                    &[w],
                )
                .map(|r| (r.get(0), r.get(1)))
                .unwrap();
            assert_eq!(
                (n, foreign),
                (expected, 0),
                "{t}, workspace {w}, multi-shard"
            );
            // router: the shard of the other workspace
            let n: i64 = tx
                .query_one(
                    &format!("SELECT count(*) FROM {t} WHERE \"workspaceId\" = $1::text::uuid"),
                    &[other],
                )
                .unwrap()
                .get(0);
            assert_eq!(n, 0, "{t}, workspace {w} reading {other}");
            let n: i64 = tx
                .query_one(
                    &format!("SELECT count(*) FROM {t} WHERE \"workspaceId\" = $1::text::uuid"),
                    &[w],
                )
                .unwrap()
                .get(0);
            assert_eq!(n, expected, "{t}, workspace {w}, router");
            let n = tx
                .execute(
                    &format!("UPDATE {t} SET \"workspaceId\" = \"workspaceId\" WHERE \"workspaceId\" = $1::text::uuid"),
                    &[other],
                )
                .unwrap();
            assert_eq!(n, 0, "{t}: update of {other} from {w}");
            let n = tx
                .execute(
                    &format!("DELETE FROM {t} WHERE \"workspaceId\" = $1::text::uuid"),
                    &[other],
                )
                .unwrap();
            assert_eq!(n, 0, "{t}: delete of {other} from {w}");
        }
        tx.commit().unwrap();
        // writing into another workspace: 42501, router (VALUES) and through INSERT ... SELECT
        let mut tx = app.transaction().unwrap();
        tx.execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[w])
            .unwrap();
        let err = tx
            .execute(
                "INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ($1::text::uuid, 'intruder')",
                &[other],
            )
            .unwrap_err();
        assert_eq!(sqlstate(&err), "42501", "{err}");
        tx.rollback().unwrap();
        let mut tx = app.transaction().unwrap();
        tx.execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[w])
            .unwrap();
        let err = tx
            .execute(
                "UPDATE \"Segment\" SET \"workspaceId\" = $1::text::uuid WHERE \"workspaceId\" = $2::text::uuid",
                &[other, w],
            )
            .unwrap_err();
        // moving a row to another shard is refused by Citus (the distribution column) or by
        // the policy: either way nothing moves
        assert!(
            ["42501", "0A000"].contains(&sqlstate(&err).as_str()),
            "{err}"
        );
        tx.rollback().unwrap();
    }
    // no context: nothing visible, nothing written
    let mut tx = app.transaction().unwrap();
    for t in tables {
        let n: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{t} without context");
    }
    let err = tx
        .execute(
            "INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ($1::text::uuid, 'nobody')",
            &[&wss[0]],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{err}");
    tx.rollback().unwrap();
    // outside a transaction block the context ends with its statement, on every node
    app.execute(
        "SELECT tenancy.set_workspace($1::text::uuid, true)",
        &[&wss[0]],
    )
    .unwrap();
    let n: i64 = app
        .query_one("SELECT count(*) FROM \"Segment\"", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a context set by an earlier statement outside BEGIN");
    // within one statement it is that statement's context on the workers too
    let n: i64 = app
        .query_one(
            "SELECT count(*) FROM (SELECT tenancy.set_workspace($1::text::uuid, true)) s, \"Segment\"",
            &[&wss[0]],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, owner_count(admin, "public.\"Segment\"", &wss[0]));
    // a session-wide context would not reach the workers: refused
    let err = app
        .execute(
            "SELECT tenancy.set_workspace($1::text::uuid, false)",
            &[&wss[0]],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&err), "0A000", "{err}");
}

/// The hierarchy form: a parent reads its active children's rows and writes only its own.
fn hierarchy_matrix(admin: &mut Client, app: &mut Client, tables: &[String], parent: &str) {
    let kids = children(admin, parent);
    assert_eq!(kids.len(), 2);
    let mut tx = app.transaction().unwrap();
    tx.execute(
        "SELECT tenancy.set_workspace($1::text::uuid, true)",
        &[&parent],
    )
    .unwrap();
    for t in tables {
        let expected: i64 = std::iter::once(parent.to_string())
            .chain(kids.iter().cloned())
            .map(|w| owner_count(admin, t, &w))
            .sum();
        let n: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .unwrap()
            .get(0);
        assert_eq!(n, expected, "{t}: parent reads itself and its children");
        for k in &kids {
            // Citus creates shard policies without AS RESTRICTIVE: with restrictive companions
            // this DELETE would remove the child's rows (it did, before the Citus form)
            let mut sp = tx.transaction().unwrap();
            let n = sp
                .execute(
                    &format!("DELETE FROM {t} WHERE \"workspaceId\" = $1::text::uuid"),
                    &[k],
                )
                .unwrap();
            assert_eq!(n, 0, "{t}: parent deleted child {k}'s rows");
            let n = sp
                .execute(
                    &format!("UPDATE {t} SET \"workspaceId\" = \"workspaceId\" WHERE \"workspaceId\" = $1::text::uuid"),
                    &[k],
                )
                .unwrap();
            assert_eq!(n, 0, "{t}: parent updated child {k}'s rows");
            sp.rollback().unwrap();
        }
    }
    let mut sp = tx.transaction().unwrap();
    let err = sp
        .execute(
            "INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ($1::text::uuid, 'into child')",
            &[&kids[0]],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{err}");
    sp.rollback().unwrap();
    tx.rollback().unwrap();
}

fn audit_fails(c: &mut Client) -> Vec<String> {
    c.query(
        "SELECT \"check\" || ' ' || object FROM tenancy.audit() WHERE severity = 'fail'",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn dittofeed_on_a_citus_cluster() {
    let citus = start_citus("a", [25483, 25484, 25485]);
    let mut admin = citus.coordinator.connect(DB);
    load_fixture(&mut admin);
    distribute(&mut admin);
    let tables = tenant_tables(&mut admin);

    // the README's migration, unchanged (docs/dittofeed.md), hierarchy form first
    admin
        .batch_execute(&format!(
            "SELECT tenancy.create_app_role('{APP}');
             SELECT count(*) FROM tenancy.enable_rls_all(hierarchy => true);"
        ))
        .unwrap();
    assert_eq!(audit_fails(&mut admin), Vec::<String>::new());
    let policies: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_policy WHERE NOT polpermissive",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        policies, 0,
        "no restrictive policy where Citus is installed"
    );
    let mut app = citus.coordinator.connect_as(DB, APP);
    let parent = ws_id(&mut admin, "parent", 1);
    hierarchy_matrix(&mut admin, &mut app, &tables, &parent);

    // a restrictive policy of one's own: audit() fails it (Citus makes it permissive on shards)
    admin
        .batch_execute(
            "CREATE POLICY own_rule ON \"Segment\" AS RESTRICTIVE FOR DELETE TO PUBLIC USING (name <> '')",
        )
        .unwrap();
    let fails = audit_fails(&mut admin);
    assert_eq!(
        fails,
        vec!["restrictive_policy_citus policy \"own_rule\" on \"public\".\"Segment\"".to_string()]
    );
    admin
        .batch_execute("DROP POLICY own_rule ON \"Segment\"")
        .unwrap();

    // the standard form
    admin
        .batch_execute("SELECT count(*) FROM tenancy.enable_rls_all()")
        .unwrap();
    assert_eq!(audit_fails(&mut admin), Vec::<String>::new());
    let wss: Vec<String> = (1..=3)
        .map(|n| ws_id(&mut admin, "root", n))
        .chain([parent.clone()])
        .collect();
    standard_matrix(&mut admin, &mut app, &tables, &wss);

    concurrent_clients_through_a_worker_restart(&citus, &mut admin, &wss);
    quotas(&citus, &mut admin, &wss);
}

/// 16 clients, 4 per workspace, each transaction inserting a row of its workspace and reading
/// every workspace's rows back through the coordinator, while worker 2 restarts: a failed
/// transaction is retried, but no read ever returns a row of another workspace, and every
/// committed row is there afterwards.
fn concurrent_clients_through_a_worker_restart(citus: &Citus, admin: &mut Client, wss: &[String]) {
    let before: Vec<i64> = wss
        .iter()
        .map(|w| owner_count(admin, "public.\"Journey\"", w))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let committed: Arc<Vec<AtomicU64>> = Arc::new(wss.iter().map(|_| AtomicU64::new(0)).collect());
    let uncertain: Arc<Vec<AtomicU64>> = Arc::new(wss.iter().map(|_| AtomicU64::new(0)).collect());
    let failures = Arc::new(AtomicU64::new(0));
    let port = citus.coordinator.port;
    let mut handles = Vec::new();
    for i in 0..16 {
        let w = wss[i % wss.len()].clone();
        let k = i % wss.len();
        let (stop, committed, failures, uncertain) = (
            stop.clone(),
            committed.clone(),
            failures.clone(),
            uncertain.clone(),
        );
        handles.push(std::thread::spawn(move || {
            let connect = || {
                Client::connect(
                    &format!("host=127.0.0.1 port={port} user={APP} dbname={DB}"),
                    NoTls,
                )
            };
            let mut c = connect().unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) || n < 20 {
                let r = (|| -> Result<(), postgres::Error> {
                    let mut tx = c.transaction()?;
                    tx.execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[&w])?;
                    tx.execute(
                        "INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ($1::text::uuid, 'concurrent ' || gen_random_uuid())",
                        &[&w],
                    )?;
                    let foreign: i64 = tx
                        .query_one(
                            "SELECT count(*) FROM \"Journey\" WHERE \"workspaceId\" <> $1::text::uuid",
                            &[&w],
                        )?
                        .get(0);
                    assert_eq!(foreign, 0, "client {i} saw another workspace's rows");
                    tx.commit().inspect_err(|_| {
                        // the outcome of a failed COMMIT is unknown to the client
                        uncertain[k].fetch_add(1, Ordering::Relaxed);
                    })
                })();
                match r {
                    Ok(()) => {
                        committed[k].fetch_add(1, Ordering::Relaxed);
                        n += 1;
                    }
                    Err(e) => {
                        // the worker restarting: connection and remote errors, retried;
                        // anything else is a failure of the test
                        let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                        let text = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
                        assert!(
                            code.is_empty() || code.starts_with("08") || code.starts_with("57P")
                                || text.contains("connection") || text.contains("remote")
                                || text.contains("could not commit transaction for shard"),
                            "client {i}: {code} {text}"
                        );
                        failures.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(100));
                        if c.is_closed() {
                            if let Ok(fresh) = connect() {
                                c = fresh;
                            }
                        }
                    }
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(2));
    citus.workers[1].restart();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("a client failed");
    }
    assert!(t0.elapsed() < Duration::from_secs(120));
    for (k, w) in wss.iter().enumerate() {
        let added = owner_count(admin, "public.\"Journey\"", w) - before[k];
        let ok = committed[k].load(Ordering::Relaxed) as i64;
        let unknown = uncertain[k].load(Ordering::Relaxed) as i64;
        assert!(
            ok <= added && added <= ok + unknown,
            "rows of {w}: {added} added, {ok} commits acknowledged, {unknown} of unknown outcome"
        );
    }
    eprintln!(
        "concurrent clients: {} commits, {} failed transactions retried around the restart",
        committed
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>(),
        failures.load(Ordering::Relaxed)
    );
}

/// The port of the worker that holds the workspace's shard of the table, and the shard's name.
fn shard_port(admin: &mut Client, table: &str, ws: &str) -> (u16, String) {
    let (port, shard): (i32, String) = admin
        .query_one(
            "SELECT s.nodeport, s.shard_name::text FROM citus_shards s
              WHERE s.shardid = get_shard_id_for_distribution_column($1::text::regclass, $2::text)",
            &[&table, &ws],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    (port as u16, shard)
}

fn declarative_journeys(admin: &mut Client, ws: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM \"Journey\" WHERE \"workspaceId\" = $1::text::uuid AND \"resourceType\" = 'Declarative'",
            &[&ws],
        )
        .unwrap()
        .get(0)
}

fn insert_journey(c: &mut Client, ws: &str) -> Result<(), postgres::Error> {
    let mut tx = c.transaction()?;
    tx.execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[&ws])?;
    tx.execute(
        "INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ($1::text::uuid, 'quota ' || gen_random_uuid())",
        &[&ws],
    )?;
    tx.commit()
}

const QUOTA_MIGRATION: &str = r#"
SELECT tenancy.enforce_quota('"Segment"', counted_when => '"resourceType" = ''Declarative''');
SELECT tenancy.enforce_quota('"Journey"', counted_when => '"resourceType" = ''Declarative''');
SELECT tenancy.enforce_quota('"MessageTemplate"', counted_when => '"resourceType" = ''Declarative''');
SELECT tenancy.set_quota('"Segment"', 200);
SELECT tenancy.set_quota('"Journey"', 100);
SELECT tenancy.set_quota('"MessageTemplate"', 300);
"#;

/// The README's quotas on the distributed tables: counted on the worker that holds the
/// workspace's shard; 16 clients of one workspace at its limit through the coordinator while
/// that worker restarts (overshoot 0); limits reach the workers with set_quota's commit only;
/// a client writing on the worker directly is held to the same count.
fn quotas(citus: &Citus, admin: &mut Client, wss: &[String]) {
    let ws = wss[2].as_str();
    admin.batch_execute(QUOTA_MIGRATION).unwrap();
    // a table distributed by another column, or a reference table: refused
    let err = admin
        .execute("SELECT tenancy.enforce_quota('\"Workspace\"', 'id')", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "0A000", "{err}");

    let start = declarative_journeys(admin, ws);
    let limit = start + 600;
    admin
        .execute(
            "SELECT tenancy.set_quota('\"Journey\"', $1, $2::text::uuid)",
            &[&limit, &ws],
        )
        .unwrap();
    let (port, shard) = shard_port(admin, "\"Journey\"", ws);
    let holder = citus
        .workers
        .iter()
        .find(|w| w.port == port)
        .expect("the shard is on a worker");

    let restarted = Arc::new(AtomicBool::new(false));
    let added = Arc::new(AtomicU64::new(0));
    let unknown = Arc::new(AtomicU64::new(0));
    let coordinator = citus.coordinator.port;
    let mut handles = Vec::new();
    for i in 0..16 {
        let (restarted, added, unknown, ws) = (
            restarted.clone(),
            added.clone(),
            unknown.clone(),
            ws.to_string(),
        );
        handles.push(std::thread::spawn(move || {
            let connect = || {
                Client::connect(
                    &format!("host=127.0.0.1 port={coordinator} user={APP} dbname={DB}"),
                    NoTls,
                )
            };
            let mut c = connect().unwrap();
            let mut refused_after_restart = 0;
            let mut attempts = 0;
            while refused_after_restart < 3 {
                attempts += 1;
                assert!(attempts < 5000, "client {i} never reached the limit");
                match insert_journey(&mut c, &ws) {
                    Ok(()) => {
                        added.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                        if code == "53400" {
                            if restarted.load(Ordering::Relaxed) {
                                refused_after_restart += 1;
                            }
                            continue;
                        }
                        let text = e
                            .as_db_error()
                            .map(|d| d.message().to_string())
                            .unwrap_or_else(|| e.to_string());
                        assert!(
                            code.is_empty()
                                || code.starts_with("08")
                                || code.starts_with("57P")
                                || text.contains("connection")
                                || text.contains("remote")
                                || text.contains("could not commit transaction for shard"),
                            "client {i}: {code} {text}"
                        );
                        if text.contains("commit") || code.is_empty() {
                            unknown.fetch_add(1, Ordering::Relaxed);
                        }
                        std::thread::sleep(Duration::from_millis(100));
                        if c.is_closed() {
                            if let Ok(fresh) = connect() {
                                c = fresh;
                            }
                        }
                    }
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(700));
    let before_restart = declarative_journeys(admin, ws);
    holder.restart();
    restarted.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("a client failed");
    }
    let end = declarative_journeys(admin, ws);
    let ok = added.load(Ordering::Relaxed) as i64;
    let unsure = unknown.load(Ordering::Relaxed) as i64;
    eprintln!(
        "quota on Citus: limit {limit}, {start} rows before, {before_restart} when worker {port} restarted, \
         {end} after; {ok} inserts acknowledged, {unsure} of unknown outcome"
    );
    assert!(
        before_restart < limit,
        "the restart came after the limit was reached"
    );
    assert_eq!(end, limit, "exactly at the limit, overshoot 0");
    assert!(ok <= end - start && end - start <= ok + unsure);

    // the limit is the workers' business only once set_quota commits
    let mut app = citus.coordinator.connect_as(DB, APP);
    let mut tx = admin.transaction().unwrap();
    tx.execute(
        "SELECT tenancy.set_quota('\"Journey\"', $1, $2::text::uuid)",
        &[&(limit + 5), &ws],
    )
    .unwrap();
    tx.rollback().unwrap();
    let err = insert_journey(&mut app, ws).unwrap_err();
    assert_eq!(sqlstate(&err), "53400", "{err}");
    let msg = err.as_db_error().unwrap().message().to_string();
    assert!(msg.contains("\"Journey\"") && msg.contains(ws), "{msg}");
    admin
        .execute(
            "SELECT tenancy.set_quota('\"Journey\"', $1, $2::text::uuid)",
            &[&(limit + 1), &ws],
        )
        .unwrap();
    insert_journey(&mut app, ws).unwrap();
    let err = insert_journey(&mut app, ws).unwrap_err();
    assert_eq!(sqlstate(&err), "53400", "{err}");

    // writing on the worker that holds the shard: through its copy of the table, and into the
    // shard itself as a superuser: the same counter
    let mut direct = holder.connect_as(DB, APP);
    let err = insert_journey(&mut direct, ws).unwrap_err();
    assert_eq!(sqlstate(&err), "53400", "{err}");
    let mut su = holder.connect(DB);
    let err = su
        .execute(
            &format!("INSERT INTO {shard} (\"workspaceId\", name) VALUES ($1::text::uuid, 'into the shard')"),
            &[&ws],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&err), "53400", "{err}");
    assert_eq!(declarative_journeys(admin, ws), limit + 1);
    // a delete frees room, wherever it runs
    let n = su
        .execute(
            &format!(
                "DELETE FROM {shard} WHERE ctid = (SELECT min(ctid) FROM {shard}
                   WHERE \"workspaceId\" = $1::text::uuid AND name LIKE 'quota %')"
            ),
            &[&ws],
        )
        .unwrap();
    assert_eq!(n, 1);
    insert_journey(&mut app, ws).unwrap();

    // a transaction writing two workspaces' shards commits with two-phase commit on the
    // workers (PREPARE TRANSACTION, COMMIT PREPARED): the counters settle exactly
    let mut tx = admin.transaction().unwrap();
    for w in &wss[..2] {
        tx.execute(
            "INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ($1::text::uuid, 'two-phase ' || gen_random_uuid())",
            &[w],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    for w in &wss[..2] {
        let actual = declarative_journeys(admin, w);
        let mut counted = 0i64;
        for node in &citus.workers {
            let (used, in_flight): (i64, i64) = node
                .connect(DB)
                .query_one(
                    "SELECT coalesce(sum(used), 0)::bigint, coalesce(sum(in_flight), 0)::bigint FROM tenancy.quota_counters()
                      WHERE workspace_id = $1::text::uuid AND table_name::text LIKE '%Journey%'",
                    &[w],
                )
                .map(|r| (r.get(0), r.get(1)))
                .unwrap();
            assert_eq!(in_flight, 0);
            counted += used;
        }
        assert_eq!(counted, actual, "the counter of {w} after two-phase commit");
    }

    // cluster-wide usage: the coordinator's quota_usage counts the distributed table; the
    // statistics of every node, with the rejections on the worker that refused them
    let used: i64 = admin
        .query_one(
            "SELECT used FROM tenancy.quota_usage WHERE table_name = '\"Journey\"'::regclass AND workspace_id = $1::text::uuid",
            &[&ws],
        )
        .unwrap()
        .get(0);
    assert_eq!(used, limit + 1);
    let rows: Vec<(String, i64, i64)> = admin
        .query(
            "SELECT node, quota_rows_added, quota_rejections FROM tenancy.cluster_workspace_stats()
              WHERE workspace_id = $1::text::uuid",
            &[&ws],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let on_holder = rows
        .iter()
        .find(|r| r.0 == format!("127.0.0.1:{port}"))
        .unwrap_or_else(|| panic!("no statistics of worker {port}: {rows:?}"));
    assert!(on_holder.1 >= 1 && on_holder.2 >= 3, "{rows:?}");
    assert!(
        rows.iter()
            .any(|r| r.0 == format!("127.0.0.1:{}", citus.coordinator.port)),
        "{rows:?}"
    );

    // a new counted_when (here: every row) reaches the shards' counters: recounted
    admin
        .execute(
            "INSERT INTO \"Journey\" (\"workspaceId\", name, \"resourceType\") VALUES ($1::text::uuid, 'internal', 'Internal')",
            &[&ws],
        )
        .unwrap();
    admin
        .batch_execute(&format!(
            "SELECT tenancy.set_quota('\"Journey\"', NULL, '{ws}');
             SELECT tenancy.enforce_quota('\"Journey\"');"
        ))
        .unwrap();
    insert_journey(&mut app, ws).unwrap();
    let all: i64 = admin
        .query_one(
            "SELECT count(*) FROM \"Journey\" WHERE \"workspaceId\" = $1::text::uuid",
            &[&ws],
        )
        .unwrap()
        .get(0);
    let counted: i64 = holder
        .connect(DB)
        .query_one(
            "SELECT used FROM tenancy.quota_counters() WHERE workspace_id = $1::text::uuid AND table_name::text LIKE '%Journey%'",
            &[&ws],
        )
        .unwrap()
        .get(0);
    assert!(all > declarative_journeys(admin, ws));
    eprintln!("recount: counted {counted}, all rows {all}");
    assert_eq!(
        counted, all,
        "the shard's counter after the new counted_when"
    );
}

/// A database already isolated and under quotas on one server (the policies with sub-selects,
/// quota triggers), then scaled out: shard_readiness() gives the policies' fix, shard_plan()
/// takes the quota triggers off before distributing and enforce_quota() puts them back after,
/// counted on the shards with the limits kept.
#[test]
fn an_existing_tenancy_database_scaled_out() {
    let citus = start_citus("b", [25486, 25487, 25488]);
    let mut admin = citus.coordinator.connect(DB);
    load_fixture(&mut admin);
    // the migration as it ran on one server (the form with sub-selects: distributed => false)
    admin
        .batch_execute(&format!(
            "SELECT tenancy.create_app_role('{APP}');
             SELECT count(*) FROM tenancy.enable_rls_all(hierarchy => true, distributed => false);"
        ))
        .unwrap();
    admin.batch_execute(QUOTA_MIGRATION).unwrap();
    let ws = ws_id(&mut admin, "root", 1);
    let declarative = declarative_journeys(&mut admin, &ws);
    admin
        .execute(
            "SELECT tenancy.set_quota('\"Journey\"', $1, $2::text::uuid)",
            &[&(declarative + 2), &ws],
        )
        .unwrap();
    let rules: Vec<(String, bool, bool)> = admin
        .query(
            "SELECT rule, blocker, fix IS NOT NULL FROM tenancy.shard_readiness()
              WHERE rule IN ('policy_with_subquery', 'quota_triggers', 'trigger_on_table')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    // 11 tables x 3 policies with a sub-select; 3 enforced tables x 4 triggers, no blocker
    assert_eq!(
        rules
            .iter()
            .filter(|r| r.0 == "policy_with_subquery" && r.1 && r.2)
            .count(),
        33,
        "{rules:?}"
    );
    assert_eq!(
        rules
            .iter()
            .filter(|r| r.0 == "quota_triggers" && !r.1 && !r.2)
            .count(),
        12,
        "{rules:?}"
    );
    assert!(
        !rules.iter().any(|r| r.0 == "trigger_on_table"),
        "{rules:?}"
    );
    distribute(&mut admin);
    assert_eq!(audit_fails(&mut admin), Vec::<String>::new());
    let tables = tenant_tables(&mut admin);
    let mut app = citus.coordinator.connect_as(DB, APP);
    let parent = ws_id(&mut admin, "parent", 1);
    hierarchy_matrix(&mut admin, &mut app, &tables, &parent);
    // the limits survived: two more, then 53400
    insert_journey(&mut app, &ws).unwrap();
    insert_journey(&mut app, &ws).unwrap();
    let err = insert_journey(&mut app, &ws).unwrap_err();
    assert_eq!(sqlstate(&err), "53400", "{err}");
    let args: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = '\"Journey\"'::regclass AND tgnargs = 3",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(args, 4, "the quota triggers in their form for the shards");
}
