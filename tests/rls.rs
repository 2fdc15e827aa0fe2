//! Tenant isolation under the tenancy policy, as a non-superuser, non-owner application role,
//! over real connections: reads, writes, upserts, COPY and RETURNING across two workspaces and
//! with the context unset. (PostgreSQL refuses COPY FROM under row-level security: 0A000.)

use tenancy_it::*;

fn setup(db: &str) -> (Client, String, String) {
    let mut admin = connect(db);
    admin
        .batch_execute("SELECT count(*) FROM tenancy.enable_rls_all()")
        .unwrap();
    app_role(&mut admin, "tenancy_it_rls");
    let a = ws_id(&mut admin, "root", 1);
    let b = ws_id(&mut admin, "root", 2);
    (admin, a, b)
}

#[test]
fn two_workspaces_never_see_or_change_each_other() {
    let db = fresh_db("rls_two");
    let (mut admin, a, b) = setup(&db);
    let before_b: i64 = admin
        .query_one(
            "SELECT count(*) FROM \"Segment\" WHERE \"workspaceId\" = $1::text::uuid",
            &[&b],
        )
        .unwrap()
        .get(0);

    let mut app = connect_as(&db, "tenancy_it_rls");
    let is_super: bool = app
        .query_one(
            "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!is_super);

    // unset context: nothing visible, nothing written
    let n: i64 = app
        .query_one("SELECT count(*) FROM \"Segment\"", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    assert_eq!(
        app.execute("UPDATE \"Segment\" SET name = name || '!'", &[])
            .unwrap(),
        0
    );
    assert_eq!(app.execute("DELETE FROM \"Journey\"", &[]).unwrap(), 0);
    let err = app
        .execute(
            "INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ($1::text::uuid, 'x')",
            &[&a],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");

    let mut tx = app.transaction().unwrap();
    tx.execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[&a])
        .unwrap();
    // reads: only a's rows
    let foreign: i64 = tx
        .query_one(
            "SELECT count(*) FROM \"Segment\" WHERE \"workspaceId\" <> $1::text::uuid",
            &[&a],
        )
        .unwrap()
        .get(0);
    assert_eq!(foreign, 0);
    // writes into b refused (42501), explicit targeting of b's rows changes nothing
    let err = tx
        .execute(
            "INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ($1::text::uuid, 'x')",
            &[&b],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    tx.rollback().unwrap();

    let mut tx = app.transaction().unwrap();
    tx.execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[&a])
        .unwrap();
    let touched = tx
        .execute("UPDATE \"Segment\" SET definition = '{\"hacked\": true}' WHERE \"workspaceId\" = $1::text::uuid", &[&b])
        .unwrap();
    assert_eq!(touched, 0);
    let deleted = tx
        .execute(
            "DELETE FROM \"Segment\" WHERE \"workspaceId\" = $1::text::uuid",
            &[&b],
        )
        .unwrap();
    assert_eq!(deleted, 0);
    // an upsert on b's existing (workspaceId, name) cannot reach b's row
    let err = tx
        .execute(
            "INSERT INTO \"Segment\" (\"workspaceId\", name, definition) VALUES ($1::text::uuid, 'segment-1', '{}')
             ON CONFLICT (\"workspaceId\", name) DO UPDATE SET definition = '{\"hacked\": true}'",
            &[&b],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    tx.rollback().unwrap();

    // COPY: PostgreSQL refuses COPY FROM into a table under row-level security (0A000), so
    // COPY cannot write into any workspace; COPY TO shows only the current workspace's rows.
    {
        // a connection of its own: the client library cannot reuse one after a refused COPY
        let mut copier = connect_as(&db, "tenancy_it_rls");
        copier
            .execute("SELECT tenancy.set_workspace($1::text::uuid, false)", &[&a])
            .unwrap();
        let refused =
            match copier.copy_in::<str>("COPY \"Journey\" (\"workspaceId\", name) FROM STDIN") {
                Ok(_) => None,
                Err(err) => Some(sqlstate(&err)),
            };
        assert_eq!(
            refused.as_deref(),
            Some("0A000"),
            "COPY FROM under row-level security must be refused"
        );
    }
    let mut tx = app.transaction().unwrap();
    tx.execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[&a])
        .unwrap();
    {
        use std::io::Read;
        let mut out = String::new();
        tx.copy_out("COPY \"Segment\" (\"workspaceId\") TO STDOUT")
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(!out.is_empty());
        assert!(
            out.lines().all(|l| l == a),
            "COPY TO leaked another workspace's rows"
        );
    }
    tx.rollback().unwrap();

    let after_b: i64 = admin
        .query_one(
            "SELECT count(*) FROM \"Segment\" WHERE \"workspaceId\" = $1::text::uuid AND NOT definition ? 'hacked'",
            &[&b],
        )
        .unwrap()
        .get(0);
    assert_eq!(after_b, before_b, "workspace b is untouched");
}

/// Several sessions of the application role, each switching workspaces per transaction,
/// never read a row of another workspace.
#[test]
fn interleaved_sessions_see_only_their_current_workspace() {
    let db = fresh_db("rls_interleaved");
    let (mut admin, _, _) = setup(&db);
    let mut wss: Vec<String> = (1..=3).map(|n| ws_id(&mut admin, "root", n)).collect();
    wss.extend((1..=2).map(|n| ws_id(&mut admin, "child", 1000 + n)));
    let handles: Vec<_> = (0..6)
        .map(|t| {
            let (db, wss) = (db.clone(), wss.clone());
            std::thread::spawn(move || {
                let mut c = connect_as(&db, "tenancy_it_rls");
                for i in 0..120 {
                    let ws = &wss[(t * 7 + i) % wss.len()];
                    let mut tx = c.transaction().unwrap();
                    tx.execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[ws])
                        .unwrap();
                    let rows = tx
                        .query("SELECT \"workspaceId\"::text FROM \"MessageTemplate\"", &[])
                        .unwrap();
                    assert!(!rows.is_empty());
                    for r in rows {
                        let got: String = r.get(0);
                        assert_eq!(
                            &got, ws,
                            "session {t} request {i} saw another workspace's row"
                        );
                    }
                    tx.commit().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Hierarchy option: a parent's context reads its active children's rows and writes only its
/// own; a child activated, paused or re-parented in another session is seen by the very next
/// statement (nothing is cached across statements).
#[test]
fn parent_reads_active_children_and_follows_registry_changes() {
    let db = fresh_db("rls_hierarchy");
    let mut admin = connect(&db);
    admin
        .batch_execute("SELECT count(*) FROM tenancy.enable_rls_all(hierarchy => true)")
        .unwrap();
    app_role(&mut admin, "tenancy_it_rls");
    let parent = ws_id(&mut admin, "parent", 1);
    let c1 = ws_id(&mut admin, "child", 1001);
    let c2 = ws_id(&mut admin, "child", 1002);
    let foreign_child = ws_id(&mut admin, "child", 2001);
    let root = ws_id(&mut admin, "root", 1);

    let mut app = connect_as(&db, "tenancy_it_rls");
    let visible = |app: &mut Client| -> Vec<String> {
        let mut tx = app.transaction().unwrap();
        tx.execute(
            "SELECT tenancy.set_workspace($1::text::uuid, true)",
            &[&parent],
        )
        .unwrap();
        let rows = tx
            .query(
                "SELECT DISTINCT \"workspaceId\"::text FROM \"Segment\" ORDER BY 1",
                &[],
            )
            .unwrap();
        tx.commit().unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    };
    let sorted = |mut v: Vec<&String>| {
        v.sort();
        v.into_iter().cloned().collect::<Vec<String>>()
    };
    assert_eq!(visible(&mut app), sorted(vec![&parent, &c1, &c2]));

    admin
        .execute(
            "UPDATE \"Workspace\" SET status = 'Paused' WHERE id = $1::text::uuid",
            &[&c2],
        )
        .unwrap();
    assert_eq!(
        visible(&mut app),
        sorted(vec![&parent, &c1]),
        "a paused child must drop out at once"
    );
    admin
        .execute(
            "UPDATE \"Workspace\" SET status = 'Active' WHERE id = $1::text::uuid",
            &[&c2],
        )
        .unwrap();
    admin
        .execute("UPDATE \"Workspace\" SET \"parentWorkspaceId\" = $1::text::uuid WHERE id = $2::text::uuid", &[&parent, &foreign_child])
        .unwrap();
    assert_eq!(
        visible(&mut app),
        sorted(vec![&parent, &c1, &c2, &foreign_child]),
        "an adopted child appears at once"
    );

    // writes: only the parent's own rows, whatever the statement names
    let mut tx = app.transaction().unwrap();
    tx.execute(
        "SELECT tenancy.set_workspace($1::text::uuid, true)",
        &[&parent],
    )
    .unwrap();
    for child in [&c1, &c2] {
        let n = tx
            .execute(
                "UPDATE \"Segment\" SET name = name || '!' WHERE \"workspaceId\" = $1::text::uuid",
                &[child],
            )
            .unwrap();
        assert_eq!(n, 0, "parent updated a child's row");
        let n = tx
            .execute(
                "DELETE FROM \"Segment\" WHERE \"workspaceId\" = $1::text::uuid",
                &[child],
            )
            .unwrap();
        assert_eq!(n, 0, "parent deleted a child's row");
    }
    let own = tx
        .execute(
            "UPDATE \"Segment\" SET name = name || '!' WHERE \"workspaceId\" = $1::text::uuid",
            &[&parent],
        )
        .unwrap();
    assert!(own > 0);
    tx.rollback().unwrap();
    let mut tx = app.transaction().unwrap();
    tx.execute(
        "SELECT tenancy.set_workspace($1::text::uuid, true)",
        &[&parent],
    )
    .unwrap();
    let err = tx
        .execute("INSERT INTO \"Segment\" (\"workspaceId\", name, definition) VALUES ($1::text::uuid, 'from parent', '{}')", &[&c1])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    tx.rollback().unwrap();

    // a child and a root read only themselves
    for ws in [&c1, &root] {
        let mut tx = app.transaction().unwrap();
        tx.execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[ws])
            .unwrap();
        let rows = tx
            .query(
                "SELECT DISTINCT \"workspaceId\"::text FROM \"Segment\"",
                &[],
            )
            .unwrap();
        let got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(got, vec![ws.clone()]);
        tx.commit().unwrap();
    }
}

/// Identifiers with quotes, spaces, semicolons, comment and dollar-quote markers, format()
/// directives, mixed case and non-ASCII letters, generated at random (fixed seed, so a failure
/// reproduces): index_advice() and audit() name the table exactly and their DDL and fixes run
/// and settle it; the emitted policy DDL names exactly the object it was given, applying it
/// creates exactly the expected policies and nothing else, and the policy isolates as it should.
#[test]
fn hostile_identifiers_fuzz() {
    let db = fresh_db("rls_fuzz");
    let mut admin = connect(&db);
    app_role(&mut admin, "tenancy_it_rls");
    let ws_a = random_ws(&mut admin);
    let ws_b = random_ws(&mut admin);
    const PIECES: &[&str] = &[
        "\"",
        "'",
        " ",
        ";",
        "--",
        "/*",
        "$$",
        "$fn$",
        "%s",
        "%I",
        "\\",
        "(",
        ")",
        ",",
        "Ab",
        "zz",
        "Wörk",
        "ß",
        "日本",
        "🙂",
        "DROP TABLE x",
        "\"; DROP SCHEMA public CASCADE; --",
        "' OR true --",
        "tenancy_isolation",
        "é",
    ];
    let mut seed: u64 = 0xD1B5_4A32_D192_ED03;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let counts = |c: &mut Client| -> (i64, i64, i64, i64) {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM pg_class), (SELECT count(*) FROM pg_policy),
                        (SELECT count(*) FROM pg_proc), (SELECT count(*) FROM pg_roles)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    let mut seen = std::collections::HashSet::new();
    for i in 0..120 {
        let mut gen = |max_pieces: u64| -> String {
            let mut s = String::new();
            for _ in 0..(next() % max_pieces + 1) {
                s.push_str(PIECES[(next() as usize) % PIECES.len()]);
            }
            // stay within NAMEDATALEN - 1 bytes: longer names would be truncated by PostgreSQL
            while s.len() > 60 {
                s.pop();
            }
            s
        };
        let (schema, table, column) = (gen(3), gen(3), gen(3));
        if !seen.insert((schema.clone(), table.clone())) || table == column {
            continue;
        }
        let hierarchy = next() % 2 == 0;
        let (qs, qt, qc) = (quote(&schema), quote(&table), quote(&column));
        let target = format!("{qs}.{qt}");
        let ctx = format!("iteration {i}: schema {schema:?} table {table:?} column {column:?} hierarchy {hierarchy}");
        admin
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {qs};
                 CREATE TABLE {target} ({qc} uuid NOT NULL, v int);
                 GRANT USAGE ON SCHEMA {qs} TO tenancy_it_rls;
                 GRANT SELECT, INSERT, UPDATE, DELETE ON {target} TO tenancy_it_rls;"
            ))
            .unwrap_or_else(|e| panic!("{ctx}: setup: {e}"));

        // index advice names the table and column exactly; its DDL runs and settles it
        let advice: Vec<String> = admin
            .query("SELECT ddl FROM tenancy.index_advice($1::text::name) WHERE table_name = $2::text::regclass", &[&column, &target])
            .unwrap_or_else(|e| panic!("{ctx}: index_advice: {e}"))
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            advice,
            vec![format!("CREATE INDEX CONCURRENTLY ON {target} ({qc});")],
            "{ctx}"
        );
        admin
            .batch_execute(&advice[0])
            .unwrap_or_else(|e| panic!("{ctx}: advice DDL: {e}"));
        let left: i64 = admin
            .query_one("SELECT count(*) FROM tenancy.index_advice($1::text::name) WHERE table_name = $2::text::regclass", &[&column, &target])
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "{ctx}: advice left after applying it");
        // the audit fails the unprotected table; its fixes run and protect it
        let audit_fails = |c: &mut Client| -> Vec<(String, Option<String>)> {
            c.query(
                "SELECT \"check\", fix FROM tenancy.audit($1::text::name) WHERE severity = 'fail' AND object = 'table ' || $2",
                &[&column, &target],
            )
            .unwrap_or_else(|e| panic!("{ctx}: audit: {e}"))
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
        };
        let fails = audit_fails(&mut admin);
        let checks: std::collections::BTreeSet<&str> =
            fails.iter().map(|(c, _)| c.as_str()).collect();
        assert!(
            checks.contains("rls_disabled") && checks.contains("policy_missing"),
            "{ctx}: audit found {checks:?}"
        );
        for (check, fix) in &fails {
            let fix = fix
                .as_deref()
                .unwrap_or_else(|| panic!("{ctx}: no fix for {check}"));
            admin
                .batch_execute(fix)
                .unwrap_or_else(|e| panic!("{ctx}: fix of {check} ({fix}): {e}"));
        }
        assert_eq!(
            audit_fails(&mut admin),
            vec![],
            "{ctx}: fails left after the fixes"
        );
        admin
            .execute("SELECT tenancy.disable_rls($1::text::regclass)", &[&target])
            .unwrap();

        let ddl: String = admin
            .query_one(
                "SELECT tenancy.rls_policy_sql($1::text::regclass, $2::text::name, $3)",
                &[&target, &column, &hierarchy],
            )
            .unwrap_or_else(|e| panic!("{ctx}: rls_policy_sql: {e}"))
            .get(0);
        assert!(
            ddl.contains(&format!("ALTER TABLE {target} ENABLE ROW LEVEL SECURITY;")),
            "{ctx}: {ddl}"
        );
        assert!(ddl.contains(&format!("USING ({qc} = ")), "{ctx}: {ddl}");

        let before = counts(&mut admin);
        admin
            .execute(
                "SELECT tenancy.enable_rls($1::text::regclass, $2::text::name, $3)",
                &[&target, &column, &hierarchy],
            )
            .unwrap_or_else(|e| panic!("{ctx}: enable_rls: {e}"));
        let after = counts(&mut admin);
        let policies = if hierarchy { 3 } else { 1 };
        assert_eq!(
            after,
            (before.0, before.1 + policies, before.2, before.3),
            "{ctx}: objects changed beyond the policies"
        );
        let row = admin
            .query_one(
                "SELECT c.relrowsecurity AND c.relforcerowsecurity,
                        (SELECT pg_get_expr(polwithcheck, polrelid) FROM pg_policy WHERE polrelid = c.oid AND polname = 'tenancy_isolation'),
                        quote_ident($2)
                   FROM pg_class c WHERE c.oid = $1::text::regclass",
                &[&target, &column],
            )
            .unwrap();
        let (on, check, ident): (bool, String, String) = (row.get(0), row.get(1), row.get(2));
        assert!(on, "{ctx}: RLS not enabled and forced");
        assert_eq!(
            check,
            format!("({ident} = ( SELECT tenancy.current_workspace_id() AS current_workspace_id))"),
            "{ctx}"
        );

        // it isolates: as the application role, each workspace writes and reads only its own
        // rows, and no context reads nothing
        admin
            .execute(
                format!("INSERT INTO {target} ({qc}, v) VALUES ($1::text::uuid, 2)").as_str(),
                &[&ws_b],
            )
            .unwrap(); // superuser: RLS inert
        let mut app = connect_as(&db, "tenancy_it_rls");
        let ins = format!("INSERT INTO {target} ({qc}, v) VALUES ($1::text::uuid, 1)");
        let mut tx = app.transaction().unwrap();
        tx.execute(
            "SELECT set_config('tenancy.workspace_id', $1, true)",
            &[&ws_a],
        )
        .unwrap();
        tx.execute(ins.as_str(), &[&ws_a])
            .unwrap_or_else(|e| panic!("{ctx}: own insert: {e}"));
        tx.commit().unwrap();
        let mut tx = app.transaction().unwrap();
        tx.execute(
            "SELECT set_config('tenancy.workspace_id', $1, true)",
            &[&ws_a],
        )
        .unwrap();
        let err = tx
            .execute(ins.as_str(), &[&ws_b])
            .expect_err(&format!("{ctx}: foreign insert accepted"));
        assert_eq!(sqlstate(&err), "42501", "{ctx}");
        tx.rollback().unwrap();
        let sel = format!(
            "SELECT count(*), count(*) FILTER (WHERE {qc} <> $1::text::uuid) FROM {target}"
        );
        for ws in [&ws_a, &ws_b] {
            let mut tx = app.transaction().unwrap();
            tx.execute("SELECT set_config('tenancy.workspace_id', $1, true)", &[ws])
                .unwrap();
            let r = tx.query_one(sel.as_str(), &[ws]).unwrap();
            let (n, foreign): (i64, i64) = (r.get(0), r.get(1));
            assert_eq!(
                (n, foreign),
                (1, 0),
                "{ctx}: workspace {ws} sees {n} rows, {foreign} foreign"
            );
            tx.commit().unwrap();
        }
        let n: i64 = app
            .query_one(format!("SELECT count(*) FROM {target}").as_str(), &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{ctx}: no context sees rows");

        admin
            .execute("SELECT tenancy.disable_rls($1::text::regclass)", &[&target])
            .unwrap_or_else(|e| panic!("{ctx}: disable_rls: {e}"));
        assert_eq!(
            counts(&mut admin),
            before,
            "{ctx}: disable_rls left objects behind"
        );
        admin
            .batch_execute(&format!("DROP TABLE {target}"))
            .unwrap();
    }
    assert!(
        seen.len() > 80,
        "the generator produced too few distinct tables"
    );
}
