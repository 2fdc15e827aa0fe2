//! Reads need no transaction id: on a streaming standby (where read replicas send their reads),
//! inside a parallel query, and on the primary, where every request would otherwise burn an id
//! and write a commit record. `set_workspace`, `readable_workspace_ids` (the hierarchy policy)
//! and the statistics views run only read-only SQL and catalog lookups.

use tenancy_it::*;

/// Rows of "Journey" a parent reads under the hierarchy policy: its own and its active
/// children's (counted by the superuser, without the policy).
fn parent_scope_rows(admin: &mut Client, parent: &str) -> i64 {
    admin
        .query_one(
            r#"SELECT count(*) FROM "Journey" WHERE "workspaceId" IN (
                   SELECT id FROM "Workspace" WHERE id = $1::text::uuid
                    OR ("parentWorkspaceId" = $1::text::uuid AND status = 'Active'))"#,
            &[&parent],
        )
        .unwrap()
        .get(0)
}

fn connect_port(port: u16, db: &str, user: &str) -> Client {
    let conn = format!("host=127.0.0.1 port={port} user={user} dbname={db}");
    Client::connect(&conn, NoTls).unwrap_or_else(|e| panic!("connect {conn}: {e}"))
}

/// Whether the standby `ro` replays up to `lsn` within 30 s.
fn wait_replayed(ro: &mut Client, lsn: &str) -> bool {
    for _ in 0..300 {
        let replayed: bool = ro
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .unwrap()
            .get(0);
        if replayed {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// The hierarchy policy, the application role, the context and the statistics views on a real
/// streaming standby made by `pg_basebackup -R` from the test's own primary.
#[test]
fn reads_on_a_streaming_standby() {
    let primary = Cluster::start("it-replica-primary", 25454, &[]);
    let mut admin = primary.fixture_db("replica");
    admin
        .batch_execute(
            "SELECT count(*) FROM tenancy.enable_rls_all(hierarchy => true);
             SELECT tenancy.create_app_role('tenancy_it_replica_app');
             SELECT tenancy.track_changes('\"Workspace\"', 'id');",
        )
        .unwrap();
    let parent = ws_id(&mut admin, "parent", 1);
    let expected = parent_scope_rows(&mut admin, &parent);
    assert!(
        expected > 5,
        "the parent reads its children's rows too: {expected}"
    );
    // a master key in the data directory (copied by pg_basebackup), and a value encrypted for
    // the parent on the primary: the standby decrypts it (reads only, no transaction id)
    let keyfile = primary.dir().join("data").join("tenancy-master.keys");
    std::fs::write(&keyfile, format!("{}\n", "ab".repeat(32))).unwrap();
    for args in [
        vec!["chown", "postgres:postgres", keyfile.to_str().unwrap()],
        vec!["chmod", "0600", keyfile.to_str().unwrap()],
    ] {
        // chown fails when not root, where the server runs as the test's own user anyway
        let _ = std::process::Command::new(args[0])
            .args(&args[1..])
            .status();
    }
    admin
        .batch_execute("ALTER SYSTEM SET tenancy.master_key_file = 'tenancy-master.keys'")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let secret: Vec<u8> = admin
        .query_one(
            "SELECT tenancy.encrypt('parent secret'::text, $1::text::uuid)",
            &[&parent],
        )
        .unwrap()
        .get(0);
    let lsn: String = admin
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .unwrap()
        .get(0);

    let standby = Cluster::start("it-replica-standby", 25455, &["--standby-of", "25454"]);
    let mut ro = standby.connect("replica");
    let in_recovery: bool = ro
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery, "the second cluster is a standby");
    assert!(
        wait_replayed(&mut ro, &lsn),
        "the standby did not replay the fixture in 30 s"
    );

    // the application's request transaction, on the replica
    let mut app = connect_port(25455, "replica", "tenancy_it_replica_app");
    app.batch_execute("BEGIN READ ONLY").unwrap();
    app.query_one("SELECT tenancy.set_workspace($1::text::uuid)", &[&parent])
        .unwrap();
    let readable: i64 = app
        .query_one(
            "SELECT cardinality(tenancy.readable_workspace_ids())::bigint",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        readable >= 2,
        "the parent and its active children: {readable}"
    );
    let rows: i64 = app
        .query_one(r#"SELECT count(*) FROM "Journey""#, &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, expected);
    let plain: String = app
        .query_one("SELECT tenancy.decrypt_text($1)", &[&secret])
        .unwrap()
        .get(0);
    assert_eq!(plain, "parent secret", "decrypted on the standby");
    app.batch_execute("COMMIT").unwrap();
    // a session-level context, and a context refused for a workspace that does not exist
    app.query_one(
        "SELECT tenancy.set_workspace($1::text::uuid, false)",
        &[&parent],
    )
    .unwrap();
    let rows: i64 = app
        .query_one(r#"SELECT count(*) FROM "Journey""#, &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, expected);
    let err = app
        .query_one("SELECT tenancy.set_workspace(gen_random_uuid())", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42704", "{err}");

    // the registry is tracked on the primary, but replayed changes move no stamp: the standby
    // reads the registry (no cache) and sees a workspace tombstoned on the primary
    let root: String = ws_id(&mut admin, "root", 1);
    for _ in 0..3 {
        app.query_one("SELECT tenancy.set_workspace($1::text::uuid)", &[&root])
            .unwrap();
    }
    admin
        .execute(
            "UPDATE \"Workspace\" SET status = 'Tombstoned' WHERE id = $1::text::uuid",
            &[&root],
        )
        .unwrap();
    // after the commit record (the insert position: the cluster may run with
    // synchronous_commit off)
    let lsn: String = admin
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .unwrap()
        .get(0);
    assert!(
        wait_replayed(&mut ro, &lsn),
        "the standby did not replay the update in 30 s"
    );
    let err = app
        .query_one("SELECT tenancy.set_workspace($1::text::uuid)", &[&root])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42704", "tombstoned on the primary: {err}");

    // the statistics views, as the superuser, on the standby
    let n: i64 = ro
        .query_one("SELECT count(*) FROM tenancy.workspace_stats", &[])
        .unwrap()
        .get(0);
    assert!(n >= 1, "the replica's own statements are counted: {n}");
    ro.query_one("SELECT capacity FROM tenancy.stats_info", &[])
        .unwrap();
    // writes are refused by PostgreSQL, cleanly
    let err = ro
        .batch_execute("SELECT tenancy.enforce_quota('\"Journey\"')")
        .unwrap_err();
    assert_eq!(sqlstate(&err), "25006", "{err}");
    drop(app);
    drop(ro);
    drop(standby);
    drop(admin);
    primary
        .connect("postgres")
        .batch_execute("DROP DATABASE replica; DROP OWNED BY tenancy_it_replica_app; DROP ROLE tenancy_it_replica_app")
        .ok();
}

/// On the primary, 200 request transactions (set the context, read under the hierarchy
/// policy, read the statistics) assign no transaction id.
#[test]
fn request_transactions_assign_no_transaction_id() {
    let db = fresh_db("noxid");
    let mut admin = connect(&db);
    admin
        .batch_execute("SELECT count(*) FROM tenancy.enable_rls_all(hierarchy => true)")
        .unwrap();
    app_role(&mut admin, "tenancy_it_noxid");
    let parent = ws_id(&mut admin, "parent", 1);
    let expected = parent_scope_rows(&mut admin, &parent);
    let mut app = connect_as(&db, "tenancy_it_noxid");
    for i in 0..200 {
        app.batch_execute("BEGIN").unwrap();
        app.query_one("SELECT tenancy.set_workspace($1::text::uuid)", &[&parent])
            .unwrap();
        let rows: i64 = app
            .query_one(r#"SELECT count(*) FROM "Journey""#, &[])
            .unwrap()
            .get(0);
        assert_eq!(rows, expected);
        let xid: Option<String> = app
            .query_one("SELECT pg_current_xact_id_if_assigned()::text", &[])
            .unwrap()
            .get(0);
        assert_eq!(xid, None, "request {i} was given a transaction id");
        app.batch_execute("COMMIT").unwrap();
    }
    // a session-level context does not write either
    app.batch_execute("BEGIN").unwrap();
    app.query_one(
        "SELECT tenancy.set_workspace($1::text::uuid, false)",
        &[&parent],
    )
    .unwrap();
    let xid: Option<String> = app
        .query_one("SELECT pg_current_xact_id_if_assigned()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(xid, None);
    app.batch_execute("COMMIT").unwrap();
}

/// A query under the hierarchy policy with a parallel plan (forced) runs, and reads the
/// parent's scope exactly.
#[test]
fn parallel_plan_under_the_hierarchy_policy() {
    let db = fresh_db("parallel_rls");
    let mut admin = connect(&db);
    admin
        .batch_execute("SELECT count(*) FROM tenancy.enable_rls_all(hierarchy => true)")
        .unwrap();
    app_role(&mut admin, "tenancy_it_parallel");
    let parent = ws_id(&mut admin, "parent", 1);
    // more rows for the parent's scope and the others, so the scan is worth splitting
    admin
        .batch_execute(
            r#"INSERT INTO "Journey" ("workspaceId", name, definition, "resourceType")
               SELECT w.id, 'bulk ' || g, '{}', 'Declarative'
                 FROM "Workspace" w, generate_series(1, 2000) g WHERE w.status <> 'Tombstoned';
               ANALYZE "Journey";"#,
        )
        .unwrap();
    let expected = parent_scope_rows(&mut admin, &parent);
    let mut app = connect_as(&db, "tenancy_it_parallel");
    app.batch_execute(
        "SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;
         SET max_parallel_workers_per_gather = 2; BEGIN",
    )
    .unwrap();
    app.query_one("SELECT tenancy.set_workspace($1::text::uuid)", &[&parent])
        .unwrap();
    let plan: Vec<String> = app
        .query(r#"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT count(*) FROM "Journey""#, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Gather") && plan.contains("Workers Launched"),
        "not a parallel plan:\n{plan}"
    );
    let rows: i64 = app
        .query_one(r#"SELECT count(*) FROM "Journey""#, &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, expected);
    app.batch_execute("COMMIT").unwrap();
}
