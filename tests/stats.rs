//! Per-workspace usage counters in shared memory, over real connections and real restarts.
//! Workspaces are random per test: the statistics are shared by every database of a cluster.

use tenancy_it::*;

struct Row {
    queries: i64,
    nested: i64,
    rows: i64,
    exec_ms: f64,
    cpu_ms: f64,
    added: i64,
    removed: i64,
    rejections: i64,
    sessions: i64,
}

fn stats(c: &mut Client, db: &str, ws: &str) -> Option<Row> {
    c.query_opt(
        "SELECT queries, nested_queries, rows, exec_time_ms::float8, cpu_time_ms::float8,
                quota_rows_added, quota_rows_removed, quota_rejections, sessions
           FROM tenancy.workspace_stats WHERE workspace_id = $1::text::uuid AND database = $2",
        &[&ws, &db],
    )
    .unwrap()
    .map(|r| Row {
        queries: r.get(0),
        nested: r.get(1),
        rows: r.get(2),
        exec_ms: r.get(3),
        cpu_ms: r.get(4),
        added: r.get(5),
        removed: r.get(6),
        rejections: r.get(7),
        sessions: r.get(8),
    })
}

#[test]
fn exact_counts_for_a_known_workload_over_several_connections() {
    let db = fresh_db("stats_exact");
    let mut admin = connect(&db);
    admin
        .batch_execute("CREATE FUNCTION nested_two() RETURNS int LANGUAGE plpgsql AS $$ BEGIN PERFORM 1; PERFORM 2; RETURN 1; END $$")
        .unwrap();
    let (a, b) = (random_ws(&mut admin), random_ws(&mut admin));

    let mut c1 = connect(&db);
    c1.batch_execute(&format!("SET tenancy.workspace_id = '{a}'"))
        .unwrap();
    for _ in 0..10 {
        c1.query("SELECT 1", &[]).unwrap();
    }
    let mut c2 = connect(&db);
    c2.batch_execute(&format!("SET tenancy.workspace_id = '{b}'"))
        .unwrap();
    for _ in 0..4 {
        c2.query("SELECT g FROM generate_series(1, 5) g", &[])
            .unwrap();
    }
    c2.query("SELECT nested_two()", &[]).unwrap(); // 1 top-level + 2 nested statements
                                                   // a third connection without context is counted nowhere; one with a transaction-local
                                                   // context counts for that transaction only
    let mut c3 = connect(&db);
    c3.query("SELECT 1", &[]).unwrap();
    c3.batch_execute(&format!(
        "BEGIN; SET LOCAL tenancy.workspace_id = '{a}'; SELECT 1; SELECT 2; COMMIT; SELECT 3;"
    ))
    .unwrap();

    let ra = stats(&mut admin, &db, &a).expect("row for workspace a");
    assert_eq!((ra.queries, ra.nested, ra.rows), (12, 0, 12));
    let rb = stats(&mut admin, &db, &b).expect("row for workspace b");
    assert_eq!((rb.queries, rb.nested, rb.rows), (5, 2, 4 * 5 + 1 + 2));
    assert!(ra.exec_ms > 0.0 && rb.exec_ms > 0.0);
    assert!(rb.cpu_ms >= 0.0);
    assert_eq!(ra.sessions, 1, "c1 holds a (c3's SET LOCAL ended)");
    assert_eq!(rb.sessions, 1);
    drop(c1);
    // a closed session no longer holds its workspace (its backend exits asynchronously: poll)
    let mut sessions = -1;
    for _ in 0..100 {
        sessions = stats(&mut admin, &db, &a).unwrap().sessions;
        if sessions == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(sessions, 0);
}

#[test]
fn two_databases_are_kept_apart_and_reset_is_per_workspace() {
    let db1 = fresh_db("stats_db1");
    let db2 = fresh_db("stats_db2");
    let mut admin = connect(&db1);
    let (x, y) = (random_ws(&mut admin), random_ws(&mut admin));
    for (db, n) in [(&db1, 3), (&db2, 5)] {
        let mut c = connect(db);
        c.batch_execute(&format!("SET tenancy.workspace_id = '{x}'"))
            .unwrap();
        for _ in 0..n {
            c.query("SELECT 1", &[]).unwrap();
        }
        c.batch_execute(&format!("SET tenancy.workspace_id = '{y}'"))
            .unwrap();
        c.query("SELECT 1", &[]).unwrap();
    }
    assert_eq!(stats(&mut admin, &db1, &x).unwrap().queries, 3);
    assert_eq!(stats(&mut admin, &db2, &x).unwrap().queries, 5);
    admin
        .execute("SELECT tenancy.reset_stats($1::text::uuid)", &[&x])
        .unwrap();
    assert!(stats(&mut admin, &db1, &x).is_none());
    assert!(stats(&mut admin, &db2, &x).is_none());
    assert_eq!(
        stats(&mut admin, &db1, &y).unwrap().queries,
        1,
        "other workspaces are kept"
    );
}

/// The context is self-asserted: claiming a workspace must not reveal its row. Rows are for
/// roles with the privileges of pg_read_all_stats (or of the extension's owner); others see none,
/// and the totals of stats_info.
#[test]
fn unprivileged_role_cannot_read_a_workspace_by_claiming_it() {
    let db = fresh_db("stats_visibility");
    let mut admin = connect(&db);
    let (x, y) = (random_ws(&mut admin), random_ws(&mut admin));
    admin
        .batch_execute(
            "DO $$ BEGIN
                 CREATE ROLE tenancy_it_viewer LOGIN;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
             END $$;",
        )
        .unwrap();
    for ws in [&x, &y] {
        let mut c = connect(&db);
        c.batch_execute(&format!("SET tenancy.workspace_id = '{ws}'; SELECT 1;"))
            .unwrap();
    }
    let mut viewer = connect_as(&db, "tenancy_it_viewer");
    for claim in [Some(&x), Some(&y), None] {
        match claim {
            Some(ws) => viewer
                .batch_execute(&format!("SET tenancy.workspace_id = '{ws}'"))
                .unwrap(),
            None => viewer.batch_execute("RESET tenancy.workspace_id").unwrap(),
        }
        let n: i64 = viewer
            .query_one("SELECT count(*) FROM tenancy.workspace_stats", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "claiming {claim:?} must not reveal any row");
    }
    // the totals stay visible
    let entries: i64 = viewer
        .query_one("SELECT entries FROM tenancy.stats_info", &[])
        .unwrap()
        .get(0);
    assert!(entries >= 2);
    let err = viewer
        .execute("SELECT tenancy.reset_stats()", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    let err = viewer
        .batch_execute("SET tenancy.stats_new_entry_limit = -1")
        .unwrap_err();
    assert_eq!(
        sqlstate(&err),
        "42501",
        "the new-entry limit is superuser-only"
    );
    admin
        .batch_execute("GRANT pg_read_all_stats TO tenancy_it_viewer")
        .unwrap();
    let mut viewer = connect_as(&db, "tenancy_it_viewer");
    let n: i64 = viewer
        .query_one("SELECT count(*) FROM tenancy.workspace_stats WHERE workspace_id IN ($1::text::uuid, $2::text::uuid)", &[&x, &y])
        .unwrap()
        .get(0);
    assert_eq!(
        n, 2,
        "pg_read_all_stats reads every row, without any context"
    );
    admin
        .batch_execute("REVOKE pg_read_all_stats FROM tenancy_it_viewer")
        .unwrap();
}

fn stats_info(c: &mut Client) -> (i64, i64, i64) {
    let r = c
        .query_one(
            "SELECT entries, evictions, refused_statements FROM tenancy.stats_info",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

fn random_ids(c: &mut Client, n: i32) -> Vec<String> {
    c.query(
        "SELECT gen_random_uuid()::text FROM generate_series(1, $1)",
        &[&n],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// `SET tenancy.workspace_id` to many ids, one statement each, in one round trip.
fn claim_each(c: &mut Client, ids: &[String]) {
    let sql: String = ids
        .iter()
        .map(|id| format!("SET tenancy.workspace_id = '{id}'; SELECT 1;\n"))
        .collect();
    c.batch_execute(&sql).unwrap();
    c.batch_execute("RESET tenancy.workspace_id").unwrap();
}

fn rows_among(c: &mut Client, ids: &[String]) -> i64 {
    c.query_one(
        "SELECT count(*) FROM tenancy.workspace_stats WHERE workspace_id::text = ANY($1)",
        &[&ids],
    )
    .unwrap()
    .get(0)
}

/// From a database without the extension, any role could claim thousands of ids and evict every
/// tenant's statistics cluster-wide: such databases are not tracked at all. Creating the
/// extension there starts tracking in sessions already open; dropping it stops it.
#[test]
fn a_database_without_the_extension_is_not_tracked() {
    let db = fresh_db("stats_noext_tenant");
    let mut admin = connect(&db);
    let tenant = random_ws(&mut admin);
    connect(&db)
        .batch_execute(&format!(
            "SET tenancy.workspace_id = '{tenant}'; SELECT 1; SELECT 2;"
        ))
        .unwrap();
    let plain = format!("t_stats_plain_{}", std::process::id());
    let mut pg = connect("postgres");
    pg.batch_execute(&format!("DROP DATABASE IF EXISTS {plain}"))
        .unwrap();
    pg.batch_execute(&format!("CREATE DATABASE {plain} TEMPLATE template0"))
        .unwrap();
    let (_, evictions_before, _) = stats_info(&mut admin);

    let ids = random_ids(&mut admin, 600);
    let mut p = connect(&plain);
    // an unprivileged role, as any role that may connect
    p.batch_execute(
        "DO $$ BEGIN CREATE ROLE tenancy_it_noext LOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;",
    )
    .unwrap();
    let mut q = connect_as(&plain, "tenancy_it_noext");
    claim_each(&mut p, &ids[..300]);
    claim_each(&mut q, &ids[300..]);
    assert_eq!(
        rows_among(&mut admin, &ids),
        0,
        "no entry for a database without the extension"
    );
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM tenancy.workspace_stats WHERE database = $1",
            &[&plain],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let r = stats(&mut admin, &db, &tenant).expect("the tenant's entry is kept");
    assert_eq!(r.queries, 2);
    let (_, evictions_after, _) = stats_info(&mut admin);
    assert_eq!(evictions_after, evictions_before, "nothing evicted");

    // CREATE EXTENSION from another session: p, open all along, starts tracking
    let ws = random_ws(&mut admin);
    connect(&plain)
        .batch_execute("CREATE EXTENSION tenancy")
        .unwrap();
    p.batch_execute(&format!("SET tenancy.workspace_id = '{ws}'; SELECT 1;"))
        .unwrap();
    assert_eq!(
        stats(&mut admin, &plain, &ws).map(|r| r.queries),
        Some(1),
        "tracked once installed"
    );
    // DROP EXTENSION (from p itself, then from another session after a new CREATE): untracked again
    p.batch_execute("RESET tenancy.workspace_id; DROP EXTENSION tenancy")
        .unwrap();
    p.batch_execute(&format!(
        "SET tenancy.workspace_id = '{ws}'; SELECT 1; RESET tenancy.workspace_id;"
    ))
    .unwrap();
    assert_eq!(
        stats(&mut admin, &plain, &ws).map(|r| r.queries),
        Some(1),
        "not tracked once dropped"
    );
    connect(&plain)
        .batch_execute("CREATE EXTENSION tenancy")
        .unwrap();
    p.batch_execute(&format!(
        "SET tenancy.workspace_id = '{ws}'; SELECT 1; RESET tenancy.workspace_id;"
    ))
    .unwrap();
    assert_eq!(stats(&mut admin, &plain, &ws).map(|r| r.queries), Some(2));
    connect(&plain)
        .batch_execute("DROP EXTENSION tenancy")
        .unwrap();
    p.batch_execute(&format!(
        "SET tenancy.workspace_id = '{ws}'; SELECT 1; RESET tenancy.workspace_id;"
    ))
    .unwrap();
    assert_eq!(stats(&mut admin, &plain, &ws).map(|r| r.queries), Some(2));
    drop((p, q));
}

/// One backend creates at most tenancy.stats_new_entry_limit new entries per minute; beyond it its
/// statements of new workspaces get no entry (counted in refused_statements and in the
/// database's workspace_stats_other row), while the workspaces already in the table keep counting.
#[test]
fn a_backend_over_its_new_entry_limit_stops_creating_entries() {
    let db = fresh_db("stats_limit");
    let mut admin = connect(&db);
    let setting: String = admin
        .query_one("SHOW tenancy.stats_new_entry_limit", &[])
        .unwrap()
        .get(0);
    assert_eq!(setting, "1000", "default");
    let known = random_ws(&mut admin);
    let mut c = connect(&db);
    c.batch_execute(&format!(
        "SET tenancy.workspace_id = '{known}'; SELECT 1; RESET tenancy.workspace_id;"
    ))
    .unwrap();
    let (_, _, refused_before) = stats_info(&mut admin);
    let (_, _, _, other_before) = table_sums(&mut admin, &db);
    c.batch_execute("SET tenancy.stats_new_entry_limit = 5")
        .unwrap();
    let ids = random_ids(&mut admin, 40);
    claim_each(&mut c, &ids);
    let created = rows_among(&mut admin, &ids);
    assert!(created <= 5, "{created} entries created over a limit of 5");
    let (_, _, refused_after) = stats_info(&mut admin);
    assert!(
        refused_after - refused_before >= 40 - created,
        "refused {} of {}",
        refused_after - refused_before,
        40 - created
    );
    // their statements are not lost: the database's other row has each of them
    let (_, _, _, other_after) = table_sums(&mut admin, &db);
    assert_eq!(
        other_after - other_before,
        refused_after - refused_before,
        "every refused statement is in the other row"
    );
    // existing entries keep counting
    c.batch_execute(&format!("SET tenancy.workspace_id = '{known}'; SELECT 1; SELECT 2; SELECT 3; RESET tenancy.workspace_id;"))
        .unwrap();
    assert_eq!(stats(&mut admin, &db, &known).unwrap().queries, 4);
    // the default allows a connection to serve many workspaces; -1 lifts the limit
    c.batch_execute("SET tenancy.stats_new_entry_limit = -1")
        .unwrap();
    let more = random_ids(&mut admin, 40);
    claim_each(&mut c, &more);
    assert_eq!(rows_among(&mut admin, &more), 40);
}

/// A parallel query is one statement of its workspace: its workers add no statement, rows or
/// execution time (only their CPU time).
#[test]
fn a_parallel_query_is_counted_once() {
    let db = fresh_db("stats_parallel");
    let mut admin = connect(&db);
    admin
        .batch_execute("CREATE TABLE par AS SELECT g, md5(g::text) AS h FROM generate_series(1, 200000) g; ANALYZE par;")
        .unwrap();
    let ws = random_ws(&mut admin);
    let mut c = connect(&db);
    c.batch_execute(
        "SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;
         SET max_parallel_workers_per_gather = 2; SET parallel_leader_participation = on;",
    )
    .unwrap();
    let q1 = "SELECT g FROM par WHERE h LIKE 'a%'";
    let q2 = "SELECT count(*) FROM par WHERE h LIKE 'b%'";
    for q in [q1, q2] {
        // without a context: EXPLAIN ANALYZE's statement is not counted for ws
        let plan: String = c
            .simple_query(&format!(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {q}"
            ))
            .unwrap()
            .iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(plan.contains("Gather"), "{plan}");
        let launched: i32 = plan
            .lines()
            .find_map(|l| l.trim().strip_prefix("Workers Launched: "))
            .unwrap_or_else(|| panic!("{plan}"))
            .parse()
            .unwrap();
        assert!(launched >= 1, "no parallel worker launched:\n{plan}");
    }
    let expected: i64 = admin
        .query_one("SELECT count(*) FROM par WHERE h LIKE 'a%'", &[])
        .unwrap()
        .get(0);
    c.batch_execute(&format!("SET tenancy.workspace_id = '{ws}'"))
        .unwrap();
    let t0 = std::time::Instant::now();
    let n = c
        .simple_query(q1)
        .unwrap()
        .iter()
        .filter(|m| matches!(m, postgres::SimpleQueryMessage::Row(_)))
        .count();
    let counted: i64 = c
        .simple_query(q2)
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse::<i64>().unwrap()),
            _ => None,
        })
        .next()
        .unwrap();
    let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
    assert_eq!(n as i64, expected);
    assert!(counted > 0);
    // closes the workspace's CPU stretch
    c.batch_execute("RESET tenancy.workspace_id; SELECT 1;")
        .unwrap();
    let r = stats(&mut admin, &db, &ws).expect("row for the workspace");
    assert_eq!(
        (r.queries, r.nested),
        (2, 0),
        "two parallel statements count as two"
    );
    assert_eq!(r.rows, expected + 1, "rows of the leader only");
    assert!(
        r.exec_ms <= wall_ms + 1.0,
        "execution time {} ms counted for {} ms of wall time",
        r.exec_ms,
        wall_ms
    );
    assert!(
        r.cpu_ms >= 0.0 && r.cpu_ms <= 3.0 * wall_ms + 50.0,
        "cpu {} ms for {} ms of wall time",
        r.cpu_ms,
        wall_ms
    );
    assert_eq!(r.sessions, 0, "parallel workers are not sessions");
}

#[test]
fn quota_activity_is_attributed_to_the_rows_workspace() {
    let db = fresh_db("stats_quota");
    let mut admin = connect(&db);
    let ws = random_ws(&mut admin);
    admin
        .batch_execute(&format!(
            "SELECT fixture.create_workspace('{ws}', 'stats quota');
             SELECT tenancy.enforce_quota('\"Journey\"');
             SELECT tenancy.set_quota('\"Journey\"', 3, '{ws}');"
        ))
        .unwrap();
    // written without any context: still attributed to the rows' workspace
    admin
        .batch_execute(&format!(
            "INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ('{ws}', 'a'), ('{ws}', 'b'), ('{ws}', 'c');
             DELETE FROM \"Journey\" WHERE \"workspaceId\" = '{ws}' AND name = 'a';"
        ))
        .unwrap();
    for name in ["d", "e"] {
        let r = admin.execute(
            "INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ($1::text::uuid, $2)",
            &[&ws, &name],
        );
        if name == "e" {
            assert_eq!(sqlstate(&r.unwrap_err()), "53400");
        } else {
            r.unwrap();
        }
    }
    let r = stats(&mut admin, &db, &ws).expect("row for the rows' workspace");
    assert_eq!((r.added, r.removed, r.rejections), (4, 1, 1));
    assert_eq!(
        r.queries, 0,
        "no statement ran under this workspace's context"
    );
}

/// (entries, evictions) of stats_info and the database's sums: statements in workspace_stats,
/// statements in workspace_stats_other
fn table_sums(c: &mut Client, db: &str) -> (i64, i64, i64, i64) {
    let r = c
        .query_one(
            "SELECT entries, evictions,
                    (SELECT coalesce(sum(queries), 0)::bigint FROM tenancy.workspace_stats WHERE database = $1),
                    (SELECT coalesce(sum(queries), 0)::bigint FROM tenancy.workspace_stats_other WHERE database = $1)
               FROM tenancy.stats_info",
            &[&db],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// A full table evicts the least recently active 5% of its entries and adds their figures to
/// the database's other row: the statements of workspace_stats plus workspace_stats_other stay
/// exactly the statements run, one backend or many at once, and across a clean restart.
#[test]
fn full_table_evicts_least_recently_active_and_keeps_exact_totals() {
    let cluster = Cluster::start(
        "it-evict",
        25443,
        &["--conf", "tenancy.max_workspaces = 100"],
    );
    let mut c = cluster.fixture_db("evict");
    let info: (i64, i64) = {
        let r = c
            .query_one("SELECT capacity, entries FROM tenancy.stats_info", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(info, (100, 0));
    // one backend creating 150 entries: lift its new-entry limit
    c.batch_execute("SET tenancy.stats_new_entry_limit = -1")
        .unwrap();
    let mut last = String::new();
    for _ in 0..150 {
        last = random_ws(&mut c);
        c.batch_execute(&format!(
            "SET tenancy.workspace_id = '{last}'; SELECT 1; RESET tenancy.workspace_id;"
        ))
        .unwrap();
    }
    let (entries, evictions, kept, other) = table_sums(&mut c, "evict");
    assert!((90..=100).contains(&entries), "entries {entries}");
    assert_eq!(
        entries + evictions,
        150,
        "every workspace is either kept or counted as evicted"
    );
    assert!(
        stats(&mut c, "evict", &last).is_some(),
        "the most recent workspace is kept"
    );
    assert_eq!(
        (kept, other),
        (entries, evictions),
        "one statement each: kept in its row, or in the other row once evicted"
    );

    // four backends at once, each over its own 300 new workspaces, two statements each: the
    // table churns while they run, and not one statement is lost or counted twice
    let before = kept + other;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let mut t = cluster.connect("evict");
            std::thread::spawn(move || {
                t.batch_execute("SET tenancy.stats_new_entry_limit = -1")
                    .unwrap();
                let ids: Vec<String> = t
                    .query(
                        "SELECT gen_random_uuid()::text FROM generate_series(1, 300)",
                        &[],
                    )
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                for chunk in ids.chunks(50) {
                    let sql: String = chunk
                        .iter()
                        .map(|id| {
                            format!("SET tenancy.workspace_id = '{id}'; SELECT 1; SELECT 2;\n")
                        })
                        .collect();
                    t.batch_execute(&sql).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (entries, evictions2, kept, other) = table_sums(&mut c, "evict");
    assert!(entries <= 100, "entries {entries} over the capacity");
    assert!(evictions2 > evictions, "the table churned");
    assert_eq!(
        kept + other - before,
        4 * 300 * 2,
        "statements lost or counted twice"
    );

    // the other row survives a clean restart with the workspaces' rows
    drop(c);
    cluster.restart();
    let mut c = cluster.connect("evict");
    let (_, _, kept2, other2) = table_sums(&mut c, "evict");
    assert_eq!((kept2, other2), (kept, other), "saved and loaded");
    // a full reset clears the other row too
    c.batch_execute("SELECT tenancy.reset_stats()").unwrap();
    let (entries, _, kept, other) = table_sums(&mut c, "evict");
    assert_eq!((entries, kept, other), (0, 0, 0));
}

#[test]
fn without_preload_the_extension_works_and_stats_say_how_to_enable_them() {
    let cluster = Cluster::start("it-nopreload", 25444, &["--no-preload"]);
    let mut c = cluster.fixture_db("nopreload");
    // the rest of the extension works
    c.batch_execute(
        "SELECT tenancy.enforce_quota('\"Journey\"');
         SELECT tenancy.set_quota('\"Journey\"', 100);
         BEGIN; SELECT tenancy.set_workspace(fixture.ws_id('root', 1)); COMMIT;",
    )
    .unwrap();
    let ws = ws_id(&mut c, "root", 1);
    c.execute(
        "INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ($1::text::uuid, 'np')",
        &[&ws],
    )
    .unwrap();
    let drift: i64 = c
        .query_one("SELECT count(*) FROM tenancy.quota_drift()", &[])
        .unwrap()
        .get(0);
    assert_eq!(drift, 0);
    // the statistics say how to enable them (usage reads them for the quota rows above)
    for q in [
        "SELECT * FROM tenancy.workspace_stats",
        "SELECT * FROM tenancy.stats_info",
        "SELECT tenancy.reset_stats()",
        "SELECT * FROM tenancy.usage",
    ] {
        let err = c.query(q, &[]).unwrap_err();
        assert_eq!(sqlstate(&err), "55000", "{q}");
        let msg = err.as_db_error().unwrap().message().to_string();
        assert!(msg.contains("shared_preload_libraries"), "{msg}");
    }
    // SQL-only functions that read tenancy.* settings work in a fresh session, before anything
    // loaded the library there (its settings exist only once it is loaded)
    for q in [
        "SELECT count(*) FROM tenancy.audit()",
        "SELECT tenancy.create_app_role('tenancy_it_nopreload_app')",
        "SELECT tenancy.enable_rls('\"Segment\"', hierarchy => true)",
    ] {
        let mut fresh = cluster.connect("nopreload");
        fresh
            .batch_execute(q)
            .unwrap_or_else(|e| panic!("{q} in a fresh session without preload: {e}"));
    }
    let registry_deletable: bool = c
        .query_one(
            "SELECT has_table_privilege('tenancy_it_nopreload_app', '\"Workspace\"', 'DELETE')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        !registry_deletable,
        "create_app_role must take back DELETE on the registry"
    );
}

#[test]
fn kill_9_of_a_backend_mid_workload_recovers_and_resets_statistics() {
    let cluster = Cluster::start("it-crash", 25445, &[]);
    let mut c = cluster.fixture_db("crash");
    c.batch_execute("SELECT tenancy.enforce_quota('\"Journey\"')")
        .unwrap();
    let ws = ws_id(&mut c, "root", 1);
    let port = cluster.port;
    let workers: Vec<_> = (0..3)
        .map(|t| {
            let ws = ws.clone();
            std::thread::spawn(move || {
                let conn = format!("host=127.0.0.1 port={port} user=postgres dbname=crash");
                let mut w = Client::connect(&conn, NoTls).unwrap();
                w.batch_execute(&format!("SET tenancy.workspace_id = '{ws}'")).unwrap();
                let mut failed = false;
                // insert until the crash ends the session (or 30 s pass: then the test fails)
                let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
                for i in 0.. {
                    if std::time::Instant::now() > until {
                        break;
                    }
                    let r = w.execute(
                        "INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ($1::text::uuid, $2)",
                        &[&ws, &format!("k-{t}-{i}")],
                    );
                    if r.is_err() {
                        failed = true; // the crash ended this session, as it ends every session
                        break;
                    }
                }
                failed
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let victim: i32 = c
        .query_one("SELECT pid FROM pg_stat_activity WHERE datname = 'crash' AND pid <> pg_backend_pid() AND backend_type = 'client backend' LIMIT 1", &[])
        .unwrap()
        .get(0);
    let status = std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for w in workers {
        assert!(w.join().unwrap(), "a worker's session outlived the crash");
    }
    // the server restarts by itself; wait for it
    let mut c = (0..100)
        .find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let conn = format!("host=127.0.0.1 port={port} user=postgres dbname=crash");
            Client::connect(&conn, NoTls).ok()
        })
        .expect("server back after the crash");
    let entries: i64 = c
        .query_one("SELECT entries FROM tenancy.stats_info", &[])
        .unwrap()
        .get(0);
    assert_eq!(entries, 0, "statistics start empty after a crash");
    let drift: i64 = c
        .query_one("SELECT count(*) FROM tenancy.quota_drift()", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        drift, 0,
        "quota counters are exact after the crash (recounted from the tables on first use)"
    );
    c.batch_execute(&format!("SET tenancy.workspace_id = '{ws}'; SELECT 1;"))
        .unwrap();
    assert_eq!(
        stats(&mut c, "crash", &ws).unwrap().queries,
        1,
        "counting resumes"
    );
}

#[test]
fn statistics_survive_a_clean_restart_and_a_bad_file_is_ignored() {
    let cluster = Cluster::start("it-persist", 25446, &[]);
    let mut c = cluster.fixture_db("persist");
    let ws = random_ws(&mut c);
    c.batch_execute(&format!("SET tenancy.workspace_id = '{ws}'; SELECT 1; SELECT 2; SELECT 3; RESET tenancy.workspace_id;"))
        .unwrap();
    drop(c);
    cluster.restart();
    let mut c = cluster.connect("persist");
    let r = stats(&mut c, "persist", &ws).expect("kept across a clean restart");
    assert_eq!((r.queries, r.rows), (3, 3));
    let file = cluster.dir().join("data/pg_stat/tenancy_stats.json");
    assert!(
        !file.exists(),
        "the file is removed once loaded (a crash must not bring it back)"
    );

    // a corrupt file, then a foreign one: the server starts, logs a line, and starts empty
    for (content, what) in [
        (&b"{ this is not json"[..], "corrupt"),
        (&br#"{"magic": "someone else", "version": 7, "saved_at_us": 0, "reset_at_us": 0, "evictions": 0, "entries": []}"#[..], "foreign"),
    ] {
        drop(c);
        cluster.stop();
        std::fs::write(&file, content).unwrap();
        cluster.start_again(&[]);
        c = cluster.connect("persist");
        let entries: i64 = c.query_one("SELECT entries FROM tenancy.stats_info", &[]).unwrap().get(0);
        assert_eq!(entries, 0, "{what} file ignored");
        let log = std::fs::read_to_string(cluster.dir().join("server.log")).unwrap();
        assert!(log.contains("tenancy: ignoring"), "{what} file: LOG line expected");
    }

    // save_stats = off: nothing is saved
    c.batch_execute(&format!(
        "SET tenancy.workspace_id = '{ws}'; SELECT 1; RESET tenancy.workspace_id;"
    ))
    .unwrap();
    drop(c);
    cluster.stop();
    cluster.start_again(&["--conf", "tenancy.save_stats = off"]);
    cluster.restart();
    let mut c = cluster.connect("persist");
    let entries: i64 = c
        .query_one("SELECT entries FROM tenancy.stats_info", &[])
        .unwrap()
        .get(0);
    assert_eq!(entries, 0, "save_stats = off saves nothing");
}

/// CPU time goes to the workspace whose statements used it: a CPU-heavy workspace and a light
/// one on the same connection and on others. The clock is read at workspace transitions, every
/// 100 ms of activity and at backend exit, never lost in between.
#[test]
fn cpu_time_goes_to_the_workspace_that_used_it() {
    let db = fresh_db("stats_cpu");
    let mut admin = connect(&db);
    let (heavy, light) = (random_ws(&mut admin), random_ws(&mut admin));
    let burn = "SELECT count(*) FROM generate_series(1, 1500000)";
    // one connection alternating: heavy, light, heavy, light
    let mut c = connect(&db);
    for _ in 0..2 {
        c.batch_execute(&format!("SET tenancy.workspace_id = '{heavy}'"))
            .unwrap();
        c.query(burn, &[]).unwrap();
        c.batch_execute(&format!("SET tenancy.workspace_id = '{light}'"))
            .unwrap();
        for _ in 0..5 {
            c.query("SELECT 1", &[]).unwrap();
        }
    }
    // a second connection: heavy only, then it exits (its last stretch is read at exit)
    let mut d = connect(&db);
    d.batch_execute(&format!("SET tenancy.workspace_id = '{heavy}'"))
        .unwrap();
    d.query(burn, &[]).unwrap();
    drop(d);
    c.batch_execute("RESET tenancy.workspace_id").unwrap();
    c.query("SELECT 1", &[]).unwrap(); // no context: closes the light workspace's stretch
    let mut h = None;
    for _ in 0..100 {
        let r = stats(&mut admin, &db, &heavy).expect("row for the heavy workspace");
        if r.queries == 3 && r.cpu_ms >= 0.5 * r.exec_ms {
            h = Some(r);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50)); // d's backend exits asynchronously
    }
    let h = h.expect("the heavy workspace's CPU time must cover most of its execution time");
    let l = stats(&mut admin, &db, &light).expect("row for the light workspace");
    assert_eq!(l.queries, 10);
    assert!(
        l.cpu_ms < h.cpu_ms / 10.0,
        "light {} ms of CPU vs heavy {} ms",
        l.cpu_ms,
        h.cpu_ms
    );
    assert!(
        h.cpu_ms <= h.exec_ms * 1.5 + 50.0,
        "heavy: {} ms of CPU for {} ms of execution",
        h.cpu_ms,
        h.exec_ms
    );
}

/// The statement hooks chain through C trampolines that restore the nesting depth in
/// PG_FINALLY and re-throw the original error: a failing statement, at any depth, reaches the
/// client with every field PostgreSQL gave it (a guard that copies the error and raises a new
/// one would lose the constraint, the table and the position), and the depth is right after it.
#[test]
fn errors_pass_through_the_hooks_whole_and_leave_the_depth_right() {
    let db = fresh_db("stats_errors");
    let mut c = connect(&db);
    let ws = random_ws(&mut c);
    c.batch_execute(&format!(
        "CREATE TABLE t (id int CONSTRAINT t_id_key UNIQUE);
         INSERT INTO t VALUES (1);
         CREATE FUNCTION add_dup() RETURNS int LANGUAGE plpgsql AS $$ BEGIN INSERT INTO t VALUES (1); RETURN 1; END $$;
         CREATE FUNCTION swallow() RETURNS int LANGUAGE plpgsql AS $$
           BEGIN BEGIN PERFORM add_dup(); EXCEPTION WHEN unique_violation THEN NULL; END;
           PERFORM 1; RETURN 1; END $$;
         SET tenancy.workspace_id = '{ws}'"
    ))
    .unwrap();
    // a unique violation two functions deep: every field intact
    let err = c.query("SELECT add_dup()", &[]).unwrap_err();
    let e = err.as_db_error().expect("a server error");
    assert_eq!(e.code().code(), "23505");
    assert_eq!(e.constraint(), Some("t_id_key"));
    assert_eq!(e.table(), Some("t"));
    assert_eq!(e.schema(), Some("public"));
    assert!(
        e.detail().unwrap_or_default().contains("(id)=(1)"),
        "{:?}",
        e.detail()
    );
    assert!(
        e.where_().unwrap_or_default().contains("add_dup"),
        "context kept: {:?}",
        e.where_()
    );
    // an error with a position (raised in the planner, under the trampolines of the SELECT)
    let err = c.query("SELECT 1 + 'x'::int", &[]).unwrap_err();
    let e = err.as_db_error().unwrap();
    assert_eq!(e.code().code(), "22P02");
    assert!(e.position().is_some(), "the error position is kept");
    // from inside a utility statement (DO): the inner error, not a copy
    let err = c
        .batch_execute("DO $$ BEGIN INSERT INTO t VALUES (1); END $$")
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().constraint(), Some("t_id_key"));
    // after each of those, and after an error caught inside a function, statements are counted
    // at the right depth: the failed PERFORM add_dup() and its INSERT never end (not counted),
    // PERFORM 1 after the caught error is nested, the SELECTs after it are top-level
    let before = stats(&mut c, &db, &ws).unwrap();
    c.query("SELECT swallow()", &[]).unwrap();
    c.query("SELECT 1", &[]).unwrap();
    c.query("SELECT 2", &[]).unwrap();
    let after = stats(&mut c, &db, &ws).unwrap();
    // the stats() query itself runs under the workspace too: +1 top-level per reading
    assert_eq!(after.queries - before.queries, 4, "top-level statements");
    assert_eq!(after.nested - before.nested, 1, "nested: PERFORM 1");
}
