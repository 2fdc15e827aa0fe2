//! Tenant isolation under the tenancy policy, as a non-superuser, non-owner application role,
//! over real connections: reads, writes, upserts, COPY and RETURNING across two workspaces and
//! with the context unset. (PostgreSQL refuses COPY FROM under row-level security: 0A000.)

use tenancy_it::*;

fn setup(db: &str) -> (Client, String, String) {
    let mut admin = connect(db);
    admin.batch_execute("SELECT count(*) FROM tenancy.enable_rls_all()").unwrap();
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
        .query_one("SELECT count(*) FROM \"Segment\" WHERE \"workspaceId\" = $1::text::uuid", &[&b])
        .unwrap()
        .get(0);

    let mut app = connect_as(&db, "tenancy_it_rls");
    let is_super: bool = app.query_one("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user", &[]).unwrap().get(0);
    assert!(!is_super);

    // unset context: nothing visible, nothing written
    let n: i64 = app.query_one("SELECT count(*) FROM \"Segment\"", &[]).unwrap().get(0);
    assert_eq!(n, 0);
    assert_eq!(app.execute("UPDATE \"Segment\" SET name = name || '!'", &[]).unwrap(), 0);
    assert_eq!(app.execute("DELETE FROM \"Journey\"", &[]).unwrap(), 0);
    let err = app
        .execute("INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ($1::text::uuid, 'x')", &[&a])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");

    let mut tx = app.transaction().unwrap();
    tx.execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[&a]).unwrap();
    // reads: only a's rows
    let foreign: i64 = tx
        .query_one("SELECT count(*) FROM \"Segment\" WHERE \"workspaceId\" <> $1::text::uuid", &[&a])
        .unwrap()
        .get(0);
    assert_eq!(foreign, 0);
    // writes into b refused (42501), explicit targeting of b's rows changes nothing
    let err = tx
        .execute("INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ($1::text::uuid, 'x')", &[&b])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    tx.rollback().unwrap();

    let mut tx = app.transaction().unwrap();
    tx.execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[&a]).unwrap();
    let touched = tx
        .execute("UPDATE \"Segment\" SET definition = '{\"hacked\": true}' WHERE \"workspaceId\" = $1::text::uuid", &[&b])
        .unwrap();
    assert_eq!(touched, 0);
    let deleted = tx.execute("DELETE FROM \"Segment\" WHERE \"workspaceId\" = $1::text::uuid", &[&b]).unwrap();
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
        copier.execute("SELECT tenancy.set_workspace($1::text::uuid, false)", &[&a]).unwrap();
        let refused = match copier.copy_in::<str>("COPY \"Journey\" (\"workspaceId\", name) FROM STDIN") {
            Ok(_) => None,
            Err(err) => Some(sqlstate(&err)),
        };
        assert_eq!(refused.as_deref(), Some("0A000"), "COPY FROM under row-level security must be refused");
    }
    let mut tx = app.transaction().unwrap();
    tx.execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[&a]).unwrap();
    {
        use std::io::Read;
        let mut out = String::new();
        tx.copy_out("COPY \"Segment\" (\"workspaceId\") TO STDOUT").unwrap().read_to_string(&mut out).unwrap();
        assert!(!out.is_empty());
        assert!(out.lines().all(|l| l == a), "COPY TO leaked another workspace's rows");
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
                    tx.execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[ws]).unwrap();
                    let rows = tx.query("SELECT \"workspaceId\"::text FROM \"MessageTemplate\"", &[]).unwrap();
                    assert!(!rows.is_empty());
                    for r in rows {
                        let got: String = r.get(0);
                        assert_eq!(&got, ws, "session {t} request {i} saw another workspace's row");
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
