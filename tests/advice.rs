//! Index advice from the observed workload (`tenancy.index_advice()` with pg_qualstats and
//! hypopg), on a cluster of its own: `shared_preload_libraries = 'tenancy, pg_qualstats'`,
//! `compute_query_id = on`, every query sampled. The workload runs as an application role under
//! row-level security, over the extended protocol (texts with $n), as Dittofeed's does.

use tenancy_it::*;

const PORT: u16 = 25460;
const APP: &str = "tenancy_adv_app";

fn cluster() -> Cluster {
    Cluster::start(
        "advice",
        PORT,
        &[
            "--conf",
            "shared_preload_libraries = 'tenancy, pg_qualstats'",
            "--conf",
            "compute_query_id = on",
            "--conf",
            "pg_qualstats.sample_rate = 1",
        ],
    )
}

/// A database with the fixture (200 rows per tenant table and workspace), RLS on every tenant
/// table, the application role, pg_qualstats and (optionally) hypopg.
fn database(cluster: &Cluster, db: &str, hypopg: bool) -> Client {
    let mut c = cluster.connect("postgres");
    c.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    let mut c = cluster.connect(db);
    c.batch_execute("CREATE EXTENSION tenancy").unwrap();
    c.batch_execute(include_str!("../fixture/dittofeed.sql"))
        .unwrap();
    c.batch_execute(include_str!("../fixture/generate.sql"))
        .unwrap();
    c.batch_execute("SELECT fixture.generate(2, 2, 3, 200)")
        .unwrap();
    c.batch_execute(&format!(
        "INSERT INTO \"SubscriptionGroup\" (id, \"workspaceId\", name, type, channel)
              SELECT md5(w.id::text || g)::uuid, w.id, 'extra group ' || g, 'OptIn', 'Email'
                FROM \"Workspace\" w, generate_series(0, 19) g;
         UPDATE \"Segment\" SET status = (ARRAY['NotStarted','Running','Paused'])[1 + abs(hashtext(id::text)) % 3]::\"SegmentStatus\",
                              \"subscriptionGroupId\" = md5(\"workspaceId\"::text || (abs(hashtext(id::text)) % 20))::uuid,
                              \"updatedAt\" = now() - (abs(hashtext(id::text)) % 100000) * interval '1 second';
         INSERT INTO \"Broadcast\" (\"workspaceId\", name, \"createdAt\")
              SELECT w.id, 'broadcast ' || g, now() - (abs(hashtext(w.id::text || g)) % 100000) * interval '1 second'
                FROM \"Workspace\" w, generate_series(1, 300) g;
         SELECT count(*) FROM tenancy.enable_rls_all();
         SELECT tenancy.create_app_role('{APP}');
         CREATE EXTENSION pg_qualstats;
         {}
         ANALYZE;
         SELECT pg_qualstats_reset();",
        if hypopg { "CREATE EXTENSION hypopg;" } else { "" }
    ))
    .unwrap();
    c
}

/// Dittofeed-shaped requests as the application role, in `rounds` rounds over the workspaces.
fn workload(cluster: &Cluster, db: &str, rounds: usize) {
    let mut admin = cluster.connect(db);
    let workspaces: Vec<String> = admin
        .query("SELECT DISTINCT s.\"workspaceId\"::text FROM \"Segment\" s JOIN \"Workspace\" w ON w.id = s.\"workspaceId\" WHERE w.status = 'Active' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut app = Client::connect(
        &format!(
            "host=127.0.0.1 port={} user={APP} dbname={db}",
            cluster.port
        ),
        NoTls,
    )
    .unwrap();
    for _ in 0..rounds {
        for ws in &workspaces {
            let mut tx = app.transaction().unwrap();
            tx.execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[ws])
                .unwrap();
            // observed shapes: (workspace, subscription group) on Segment, the same sorted by
            // "updatedAt" DESC; (workspace, status): the enum's = is not leakproof, so under RLS
            // status cannot be an index condition; Broadcast by "createdAt" DESC; by (workspace,
            // name): served by the unique index
            let group: String = admin
                .query_one("SELECT min(\"subscriptionGroupId\"::text) FROM \"Segment\" WHERE \"workspaceId\" = $1::text::uuid", &[ws])
                .unwrap()
                .get(0);
            tx.query("SELECT * FROM \"Segment\" WHERE \"workspaceId\" = $1::text::uuid AND \"subscriptionGroupId\" = $2::text::uuid", &[ws, &group]).unwrap();
            tx.query(
                "SELECT id, name FROM \"Segment\" WHERE \"workspaceId\" = $1::text::uuid AND \"subscriptionGroupId\" = $2::text::uuid ORDER BY \"updatedAt\" DESC LIMIT 10",
                &[ws, &group],
            )
            .unwrap();
            tx.query("SELECT * FROM \"Segment\" WHERE \"workspaceId\" = $1::text::uuid AND status = $2::text::\"SegmentStatus\"", &[ws, &"Paused"]).unwrap();
            tx.query("SELECT id FROM \"Broadcast\" \"broadcast\" WHERE \"broadcast\".\"workspaceId\" = $1::text::uuid ORDER BY \"broadcast\".\"createdAt\" DESC LIMIT 20", &[ws]).unwrap();
            tx.query(
                "SELECT * FROM \"Segment\" WHERE \"workspaceId\" = $1::text::uuid AND name = $2",
                &[ws, &"segment 1"],
            )
            .unwrap();
            tx.commit().unwrap();
        }
    }
}

struct Advice {
    table: Option<String>,
    reason: String,
    ddl: Option<String>,
    queries: Option<String>,
    before: Option<f64>,
    after: Option<f64>,
}

fn advice(c: &mut Client) -> Vec<Advice> {
    c.query(
        "SELECT table_name::text, reason, ddl, queries, cost_before::float8, cost_after::float8 FROM tenancy.index_advice()",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| Advice { table: r.get(0), reason: r.get(1), ddl: r.get(2), queries: r.get(3), before: r.get(4), after: r.get(5) })
    .collect()
}

fn workload_rows(rows: &[Advice]) -> Vec<&Advice> {
    rows.iter()
        .filter(|a| a.reason.starts_with("workload"))
        .collect()
}

#[test]
fn advice_follows_the_observed_workload_and_is_verified_merged_and_stable() {
    let cluster = cluster();
    let db = "adv_main";
    let mut c = database(&cluster, db, true);
    // nothing observed yet: a note, no workload advice
    let rows = advice(&mut c);
    assert!(workload_rows(&rows).is_empty());
    assert!(
        rows.iter()
            .any(|a| a.table.is_none() && a.reason.contains("no observed query")),
        "{:?}",
        rows.iter().map(|a| &a.reason).collect::<Vec<_>>()
    );

    c.batch_execute("CREATE INDEX broadcast_ws ON \"Broadcast\" (\"workspaceId\")")
        .unwrap();
    workload(&cluster, db, 3);
    let rows = advice(&mut c);
    let wl = workload_rows(&rows);
    let ddls: Vec<&str> = wl.iter().filter_map(|a| a.ddl.as_deref()).collect();
    // Segment: (workspace, group) and (workspace, group) ORDER BY "updatedAt" DESC merged into one
    let segment: Vec<&&Advice> = wl
        .iter()
        .filter(|a| a.table.as_deref() == Some("\"Segment\""))
        .collect();
    assert_eq!(segment.len(), 1, "one merged index for Segment: {ddls:?}");
    assert!(
        segment[0]
            .ddl
            .as_deref()
            .unwrap()
            .contains("(\"workspaceId\", \"subscriptionGroupId\", \"updatedAt\" DESC)"),
        "{ddls:?}"
    );
    assert_eq!(
        segment[0].queries.as_deref().unwrap().lines().count(),
        2,
        "serves both observed Segment shapes: {:?}",
        segment[0].queries
    );
    // Broadcast: sorted by "createdAt" DESC
    let broadcast: Vec<&&Advice> = wl
        .iter()
        .filter(|a| a.table.as_deref() == Some("\"Broadcast\""))
        .collect();
    assert_eq!(broadcast.len(), 1, "{ddls:?}");
    assert!(
        broadcast[0]
            .ddl
            .as_deref()
            .unwrap()
            .contains("(\"workspaceId\", \"createdAt\" DESC)"),
        "{ddls:?}"
    );
    // verified: cheaper by the planner's estimate
    for a in &wl {
        let (b, f) = (a.before.unwrap(), a.after.unwrap());
        assert!(f <= b * 0.9, "{}: {b} -> {f}", a.reason);
    }
    // the existing (workspaceId) index on Broadcast is now redundant
    assert!(
        rows.iter()
            .any(|a| a.ddl.as_deref()
                == Some("DROP INDEX CONCURRENTLY \"public\".\"broadcast_ws\";")),
        "{:?}",
        rows.iter().map(|a| &a.ddl).collect::<Vec<_>>()
    );
    // unobserved tables and shapes an existing index serves get no workload advice
    assert!(
        wl.iter()
            .all(|a| matches!(a.table.as_deref(), Some("\"Segment\"" | "\"Broadcast\""))),
        "{ddls:?}"
    );
    // stable under repeated calls
    let again = advice(&mut c);
    let first: Vec<_> = rows
        .iter()
        .map(|a| (&a.table, &a.reason, &a.ddl, &a.queries))
        .collect();
    let second: Vec<_> = again
        .iter()
        .map(|a| (&a.table, &a.reason, &a.ddl, &a.queries))
        .collect();
    let changed: Vec<_> = first.iter().zip(&second).filter(|(a, b)| a != b).collect();
    assert!(
        first.len() == second.len() && changed.is_empty(),
        "not stable: {changed:?}"
    );
    // nothing left behind: no prepared statement, no hypothetical index
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'tenancy%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let hypo: i64 = c
        .query_one("SELECT count(*) FROM hypopg_list_indexes", &[])
        .unwrap()
        .get(0);
    assert_eq!(hypo, 0);

    // applied (outside a transaction, as the DDL says), then observed again: no workload advice
    for ddl in &ddls {
        c.batch_execute(ddl).unwrap();
    }
    c.batch_execute("ANALYZE; SELECT pg_qualstats_reset()")
        .unwrap();
    workload(&cluster, db, 2);
    let after = advice(&mut c);
    assert!(
        workload_rows(&after).is_empty(),
        "{:?}",
        workload_rows(&after)
            .iter()
            .map(|a| &a.ddl)
            .collect::<Vec<_>>()
    );
    // and the advised indexes are used by the workload
    std::thread::sleep(std::time::Duration::from_millis(700)); // index scan counters reach pgstat
    let usage = c
        .query(
            "SELECT index_name::text, scans, verdict FROM tenancy.index_advice_usage()",
            &[],
        )
        .unwrap();
    assert_eq!(usage.len(), 2, "{usage:?}");
    for u in &usage {
        let scans: i64 = u.get(1);
        assert!(
            scans > 0,
            "{} unused: {}",
            u.get::<_, String>(0),
            u.get::<_, String>(2)
        );
    }
}

#[test]
fn without_hypopg_advice_is_unverified_and_without_pg_qualstats_catalog_only() {
    let cluster = Cluster::start(
        "advice_opt",
        PORT + 1,
        &[
            "--conf",
            "shared_preload_libraries = 'tenancy, pg_qualstats'",
            "--conf",
            "compute_query_id = on",
            "--conf",
            "pg_qualstats.sample_rate = 1",
        ],
    );
    let db = "adv_nohypo";
    let mut c = database(&cluster, db, false);
    workload(&cluster, db, 2);
    let rows = advice(&mut c);
    assert!(rows
        .iter()
        .any(|a| a.table.is_none() && a.reason.contains("hypopg is not installed")));
    let wl = workload_rows(&rows);
    assert!(!wl.is_empty());
    assert!(
        wl.iter()
            .all(|a| a.before.is_some() && a.after.is_none() && a.reason.contains("not verified")),
        "{:?}",
        wl.iter().map(|a| &a.reason).collect::<Vec<_>>()
    );

    // a database without pg_qualstats: the catalog advice and a note saying what is missing
    let mut plain = cluster.fixture_db("adv_plain");
    let rows = advice(&mut plain);
    assert!(rows.iter().any(|a| a.table.is_none()
        && a.reason
            .starts_with("note: workload advice needs pg_qualstats")));
    assert!(
        rows.iter()
            .any(|a| a.table.as_deref() == Some("\"EmailTemplate\"")),
        "catalog advice still given"
    );
}

#[test]
fn hostile_identifiers_stay_quoted_and_observed_text_runs_as_its_role() {
    let cluster = Cluster::start(
        "advice_sec",
        PORT + 2,
        &[
            "--conf",
            "shared_preload_libraries = 'tenancy, pg_qualstats'",
            "--conf",
            "compute_query_id = on",
            "--conf",
            "pg_qualstats.sample_rate = 1",
        ],
    );
    let db = "adv_sec";
    let mut c = database(&cluster, db, true);
    let table = "we\"ird; DROP TABLE x; --";
    let column = "sta\"tus $$";
    let qt = format!("\"{}\"", table.replace('"', "\"\""));
    let qc = format!("\"{}\"", column.replace('"', "\"\""));
    c.batch_execute(&format!(
        "CREATE TABLE {qt} (id serial PRIMARY KEY, \"workspaceId\" uuid NOT NULL, {qc} int NOT NULL, at timestamptz NOT NULL);
         INSERT INTO {qt} (\"workspaceId\", {qc}, at)
              SELECT fixture.ws_id('root', 1 + g % 3), g % 50, now() - g * interval '1 minute' FROM generate_series(1, 30000) g;
         CREATE INDEX ON {qt} (\"workspaceId\");
         GRANT SELECT ON {qt} TO {APP};
         ANALYZE {qt};
         -- an IMMUTABLE function the application role owns, folded while planning: it records who
         -- ran it, and tries to become the session's user again
         CREATE FUNCTION tattle() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
             BEGIN
                 PERFORM pg_catalog.set_config('tenancy_test.ran_as', current_user, false);
                 BEGIN
                     RESET ROLE;
                     PERFORM pg_catalog.set_config('tenancy_test.escaped', current_user, false);
                 EXCEPTION WHEN OTHERS THEN
                     PERFORM pg_catalog.set_config('tenancy_test.escaped', 'no: ' || SQLERRM, false);
                 END;
                 RETURN 1;
             END $$;
         ALTER FUNCTION tattle() OWNER TO {APP};
         SELECT pg_qualstats_reset();"
    ))
    .unwrap();
    let ws = ws_id(&mut c, "root", 1);
    let mut app = Client::connect(
        &format!(
            "host=127.0.0.1 port={PORT2} user={APP} dbname={db}",
            PORT2 = PORT + 2
        ),
        NoTls,
    )
    .unwrap();
    for i in 0..5 {
        app.query(
            &format!("SELECT * FROM {qt} WHERE \"workspaceId\" = $1::text::uuid AND {qc} = $2"),
            &[&ws, &i],
        )
        .unwrap();
        app.query("SELECT * FROM \"Broadcast\" WHERE \"workspaceId\" = $1::text::uuid AND tattle() = 1 ORDER BY \"createdAt\" DESC LIMIT 5", &[&ws])
            .unwrap();
    }
    let rows = advice(&mut c);
    let ours: Vec<&Advice> = rows
        .iter()
        .filter(|a| a.reason.starts_with("workload") && a.table.as_deref() == Some(qt.as_str()))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "{:?}",
        rows.iter()
            .map(|a| (&a.table, &a.reason))
            .collect::<Vec<_>>()
    );
    let ddl = ours[0].ddl.clone().unwrap();
    assert!(
        ddl.contains(&format!("ON \"public\".{qt} (\"workspaceId\", {qc})")),
        "{ddl}"
    );
    // the planner ran tattle() while advising: as the application role, never as the caller, and
    // it could not become the caller again
    let who: String = c
        .query_one("SELECT current_setting('tenancy_test.ran_as', true)", &[])
        .unwrap()
        .get(0);
    assert_eq!(who, APP, "observed text ran as {who}");
    let escaped: String = c
        .query_one("SELECT current_setting('tenancy_test.escaped', true)", &[])
        .unwrap()
        .get(0);
    assert!(
        escaped.starts_with("no: "),
        "RESET ROLE inside the advice: {escaped}"
    );
    // the DDL runs as written and builds the index on that table and column
    c.batch_execute(&ddl).unwrap();
    let def: String = c
        .query_one(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = $1::text::regclass AND indnatts = 2",
            &[&format!("public.{qt}")],
        )
        .unwrap()
        .get(0);
    assert!(def.contains(&qc), "{def}");
    let tables: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = $1",
            &[&table],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 1);
}
