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
                    tx.execute(
                        "SELECT tenancy.set_workspace($1::text::uuid, true)",
                        &[want],
                    )
                    .unwrap();
                    let got: Option<String> = tx
                        .query_one("SELECT tenancy.current_workspace_id()::text", &[])
                        .unwrap()
                        .get(0);
                    assert_eq!(
                        got.as_deref(),
                        Some(want.as_str()),
                        "session {t} iteration {i}"
                    );
                    tx.commit().unwrap();
                    let after: Option<String> = c
                        .query_one("SELECT tenancy.current_workspace_id()::text", &[])
                        .unwrap()
                        .get(0);
                    assert_eq!(
                        after, None,
                        "transaction-local context survived its transaction"
                    );
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
    let is_super: bool = app
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!is_super);
    app.execute(
        "SELECT tenancy.set_workspace($1::text::uuid, false)",
        &[&child],
    )
    .unwrap();
    let got: String = app
        .query_one("SELECT tenancy.require_workspace_id()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(got, child);

    // refused: tombstoned (42704), garbage SET (22023), registry change (42501); context kept
    let err = app
        .execute("SELECT tenancy.set_workspace($1::text::uuid)", &[&tomb])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42704");
    let err = app
        .batch_execute("SET tenancy.workspace_id = 'robert''); DROP TABLE x;--'")
        .unwrap_err();
    assert_eq!(sqlstate(&err), "22023");
    let err = app
        .batch_execute("SET tenancy.registry_table = 'public.x'")
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    let got: String = app
        .query_one("SELECT tenancy.current_workspace_id()::text", &[])
        .unwrap()
        .get(0);
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
    let got: String = c
        .query_one("SELECT tenancy.current_workspace_id()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(got, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");

    let bad = format!(
        "host=127.0.0.1 port={} user=postgres dbname={db} options='-c tenancy.workspace_id=nope'",
        port()
    );
    let err = Client::connect(&bad, NoTls)
        .err()
        .expect("a bad startup value must refuse the connection");
    assert_eq!(sqlstate(&err), "22023");
}

/// Notices (WARNINGs included) a connection receives, from its startup on.
fn connect_collecting(
    db: &str,
    user: &str,
) -> (
    Client,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>,
) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let mut config: postgres::Config =
        format!("host=127.0.0.1 port={} user={user} dbname={db}", port())
            .parse()
            .unwrap();
    config.notice_callback(move |n| {
        sink.lock().unwrap().push((
            n.severity().to_string(),
            n.code().code().to_string(),
            n.message().to_string(),
        ))
    });
    let client = config
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect {db} as {user}: {e}"));
    (client, seen)
}

/// A login default of the context (`ALTER ROLE ... SET tenancy.workspace_id`) would start every
/// new connection of the role inside a workspace, even one `set_workspace()` refuses, and a
/// request that forgot its context would no longer see nothing. The application role cannot set
/// one for itself, nobody can set one for a role or database (0A000), `RESET` stays allowed,
/// and a default stored anyway (written into the catalog by a superuser) is ignored at
/// connection start with a WARNING: the session starts with no context.
#[test]
fn login_default_context_is_refused_and_ignored() {
    let db = fresh_db("ctx_default");
    let role = format!("tenancy_it_ctxdef_{}", std::process::id());
    let mut admin = connect(&db);
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS"
        ))
        .unwrap();
    admin
        .batch_execute(&format!(
            "GRANT SELECT ON public.\"Segment\", public.\"Workspace\" TO {role};
             SELECT tenancy.enable_rls('public.\"Segment\"'::regclass, 'workspaceId');"
        ))
        .unwrap();
    let tomb = ws_id(&mut admin, "tombstoned", 1);
    let root = ws_id(&mut admin, "root", 1);

    // the role itself, in every form PostgreSQL lets a role set its own defaults
    let mut app = connect_as(&db, &role);
    for stmt in [
        format!("ALTER ROLE CURRENT_USER SET tenancy.workspace_id = '{tomb}'"),
        format!("ALTER ROLE {role} SET tenancy.workspace_id TO '{root}'"),
        format!("ALTER ROLE {role} IN DATABASE {db} SET tenancy.workspace_id = '{tomb}'"),
        format!("ALTER USER {role} SET \"Tenancy.Workspace_ID\" = '{tomb}'"),
        "ALTER ROLE CURRENT_USER SET tenancy.workspace_id FROM CURRENT".to_string(),
        "ALTER ROLE CURRENT_USER SET tenancy.workspace_id = ''".to_string(),
    ] {
        let err = app.batch_execute(&stmt).expect_err(&stmt);
        assert_eq!(sqlstate(&err), "0A000", "{stmt}: {err}");
    }
    // also from inside a function (dynamic SQL goes through the same hook)
    let err = app
        .batch_execute(&format!("DO $$ BEGIN EXECUTE 'ALTER ROLE CURRENT_USER SET tenancy.workspace_id = ''{tomb}'''; END $$"))
        .unwrap_err();
    assert_eq!(sqlstate(&err), "0A000");
    // removing a default, and other settings, stay allowed
    app.batch_execute("ALTER ROLE CURRENT_USER RESET tenancy.workspace_id")
        .unwrap();
    app.batch_execute("ALTER ROLE CURRENT_USER SET tenancy.workspace_id TO DEFAULT")
        .unwrap();
    app.batch_execute("ALTER ROLE CURRENT_USER SET work_mem = '8MB'")
        .unwrap();
    // nor a superuser, for a role, a database or every role; nor the server-wide file
    for stmt in [
        format!("ALTER ROLE {role} SET tenancy.workspace_id = '{tomb}'"),
        format!("ALTER DATABASE {db} SET tenancy.workspace_id = '{tomb}'"),
        format!("ALTER ROLE ALL IN DATABASE {db} SET tenancy.workspace_id = '{tomb}'"),
        format!("ALTER ROLE ALL SET tenancy.workspace_id = '{tomb}'"),
        format!("ALTER SYSTEM SET tenancy.workspace_id = '{tomb}'"),
    ] {
        let err = admin.batch_execute(&stmt).expect_err(&stmt);
        assert_eq!(sqlstate(&err), "0A000", "{stmt}: {err}");
    }
    let stored: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_db_role_setting, unnest(setconfig) c WHERE c ILIKE 'tenancy.workspace_id=%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "a refused statement stored a default");

    // A default stored anyway (a superuser writing the catalog, as a default stored before the
    // extension was installed would be): for the role in this database, next to work_mem.
    admin
        .batch_execute(&format!(
            "UPDATE pg_db_role_setting SET setconfig = setconfig || 'tenancy.workspace_id={tomb}'::text
              WHERE setrole = '{role}'::regrole AND setdatabase = 0;
             INSERT INTO pg_db_role_setting
             SELECT d.oid, '{role}'::regrole, ARRAY['tenancy.workspace_id={root}']
               FROM pg_database d WHERE d.datname = current_database();"
        ))
        .unwrap();
    let (mut fresh, seen) = connect_collecting(&db, &role);
    let row = fresh
        .query_one(
            "SELECT tenancy.current_workspace_id()::text, current_setting('tenancy.workspace_id'),
                    current_setting('work_mem'), (SELECT count(*) FROM public.\"Segment\")",
            &[],
        )
        .unwrap();
    let (ctx, raw, work_mem, rows): (Option<String>, String, String, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        ctx, None,
        "the session started inside the default workspace"
    );
    assert_eq!(raw, "");
    assert_eq!(work_mem, "8MB", "the role's other defaults still apply");
    assert_eq!(rows, 0, "a session without context sees no row");
    // RESET returns to no context, not to the stored default
    fresh.batch_execute("RESET tenancy.workspace_id").unwrap();
    let ctx: Option<String> = fresh
        .query_one("SELECT tenancy.current_workspace_id()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(ctx, None);
    let warnings: Vec<_> = seen.lock().unwrap().clone();
    let ours: Vec<_> = warnings
        .iter()
        .filter(|(_, _, m)| m.contains("tenancy.workspace_id"))
        .collect();
    assert_eq!(
        ours.len(),
        2,
        "one WARNING per stored default: {warnings:?}"
    );
    for (severity, code, _) in &ours {
        assert_eq!(
            (severity.as_str(), code.as_str()),
            ("WARNING", "0A000"),
            "{warnings:?}"
        );
    }
    // the session still sets its context per request as usual
    fresh
        .execute(
            "SELECT tenancy.set_workspace($1::text::uuid, false)",
            &[&root],
        )
        .unwrap();
    let rows: i64 = fresh
        .query_one("SELECT count(*) FROM public.\"Segment\"", &[])
        .unwrap()
        .get(0);
    assert!(rows > 0);

    // audit() reports both entries (fail, context_default) with the RESET that removes each
    let found = admin
        .query(
            "SELECT severity, object, fix FROM tenancy.audit()
              WHERE \"check\" = 'context_default' AND object LIKE '%' || $1 || '%' ORDER BY object",
            &[&role],
        )
        .unwrap();
    let found: Vec<(String, String, String)> = found
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        found,
        vec![
            (
                "fail".into(),
                format!("role \"{role}\""),
                format!("ALTER ROLE \"{role}\" RESET tenancy.workspace_id;")
            ),
            (
                "fail".into(),
                format!("role \"{role}\" in database \"{db}\""),
                format!("ALTER ROLE \"{role}\" IN DATABASE \"{db}\" RESET tenancy.workspace_id;")
            ),
        ]
    );
    for (_, _, fix) in &found {
        admin.batch_execute(fix).unwrap();
    }
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM tenancy.audit() WHERE \"check\" = 'context_default' AND object LIKE '%' || $1 || '%'",
            &[&role],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let (_clean, seen) = connect_collecting(&db, &role);
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
    drop(app);
    drop(fresh);
    drop(_clean);
    admin
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .unwrap();
}
