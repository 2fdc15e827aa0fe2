//! Workspace context over real connections: sessions are independent, SET LOCAL ends with its
//! transaction, a non-superuser login role sets its own workspace, and bad input is rejected
//! with the documented SQLSTATEs.

use tenancy_it::*;

#[test]
fn sessions_never_see_each_others_context() {
    let db = fresh_db("ctx_sessions");
    let mut setup = connect(&db);
    let ids: Vec<String> = (1..=3).map(|n| ws_id(&mut setup, "root", n)).collect();
    // 8 sessions, each switching between workspaces many times and checking after every switch
    // that it sees exactly what it set (a leak between backends would show here).
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let db = db.clone();
            let ids = ids.clone();
            std::thread::spawn(move || {
                let mut c = connect(&db);
                for i in 0..200 {
                    let want = &ids[(t + i) % ids.len()];
                    let mut tx = c.transaction().unwrap();
                    tx.execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[want]).unwrap();
                    let got: Option<String> =
                        tx.query_one("SELECT tenancy.current_workspace_id()::text", &[]).unwrap().get(0);
                    assert_eq!(got.as_deref(), Some(want.as_str()), "session {t} iteration {i}");
                    tx.commit().unwrap();
                    let after: Option<String> =
                        c.query_one("SELECT tenancy.current_workspace_id()::text", &[]).unwrap().get(0);
                    assert_eq!(after, None, "transaction-local context survived its transaction");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn non_superuser_login_role_sets_its_workspace() {
    let db = fresh_db("ctx_role");
    let mut admin = connect(&db);
    app_role(&mut admin, "tenancy_it_app");
    let child = ws_id(&mut admin, "child", 1001);
    let tomb = ws_id(&mut admin, "tombstoned", 1);

    let mut app = connect_as(&db, "tenancy_it_app");
    let is_super: bool = app.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[])
        .unwrap()
        .get(0);
    assert!(!is_super);
    app.execute("SELECT tenancy.set_workspace($1::text::uuid, false)", &[&child]).unwrap();
    let got: String = app.query_one("SELECT tenancy.require_workspace_id()::text", &[]).unwrap().get(0);
    assert_eq!(got, child);

    // refused: tombstoned (42704), garbage SET (22023), registry change (42501); context kept
    let err = app.execute("SELECT tenancy.set_workspace($1::text::uuid)", &[&tomb]).unwrap_err();
    assert_eq!(sqlstate(&err), "42704");
    let err = app.batch_execute("SET tenancy.workspace_id = 'robert''); DROP TABLE x;--'").unwrap_err();
    assert_eq!(sqlstate(&err), "22023");
    let err = app.batch_execute("SET tenancy.registry_table = 'public.x'").unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    let got: String = app.query_one("SELECT tenancy.current_workspace_id()::text", &[]).unwrap().get(0);
    assert_eq!(got, child);
}

#[test]
fn context_given_at_connection_start_is_validated_and_canonical() {
    let db = fresh_db("ctx_startup");
    // libpq's options= sends the setting in the startup packet (what a pool's connection string
    // can do): it goes through the same check hook.
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres dbname={db} options='-c tenancy.workspace_id=A0EEBC999C0B4EF8BB6D6BB9BD380A11'",
        port()
    );
    let mut c = Client::connect(&conn, NoTls).unwrap();
    let got: String = c.query_one("SELECT tenancy.current_workspace_id()::text", &[]).unwrap().get(0);
    assert_eq!(got, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");

    let bad = format!(
        "host=127.0.0.1 port={} user=postgres dbname={db} options='-c tenancy.workspace_id=nope'",
        port()
    );
    let err = Client::connect(&bad, NoTls).err().expect("a bad startup value must refuse the connection");
    assert_eq!(sqlstate(&err), "22023");
}
