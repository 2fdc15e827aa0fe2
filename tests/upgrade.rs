//! Upgrades: `ALTER EXTENSION tenancy UPDATE` from the oldest kept release (its frozen install
//! script `sql/tenancy--<version>.sql`) to the current version, on a cluster of its own running
//! the current library, with state in the database and queries running during the update.
//! Then: the updated catalog equals a fresh install (`tests/sql/extension_catalog.sql`), no state
//! was lost, the policies still isolate, `audit()` has no new fail row; and a database left at
//! the old version keeps working with the new library and says what to run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tenancy_it::*;

const PORT: u16 = 25457;
/// Every released version an upgrade is supported from: those whose install script is kept in
/// `sql/tenancy--<version>.sql` (the current version's is generated, not kept), oldest first.
fn kept_versions() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|f| {
            f.strip_prefix("tenancy--")?
                .strip_suffix(".sql")
                .map(str::to_string)
        })
        .filter(|v| !v.contains("--"))
        .collect();
    v.sort_by_key(|v| {
        v.split('.')
            .map(|p| p.parse::<u64>().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    assert!(!v.is_empty(), "no kept install script in sql/");
    v
}
const APP: &str = "tenancy_upg_app";
const CROSS: &str = "tenancy_upg_cross";

fn catalog(c: &mut Client) -> Vec<String> {
    c.query(include_str!("sql/extension_catalog.sql"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// Lines only in `a` (`-`) and only in `b` (`+`): the catalog facts that differ.
fn diff(a: &[String], b: &[String]) -> Vec<String> {
    let (sa, sb): (std::collections::BTreeSet<_>, std::collections::BTreeSet<_>) =
        (a.iter().collect(), b.iter().collect());
    sa.difference(&sb)
        .map(|l| format!("- {l}"))
        .chain(sb.difference(&sa).map(|l| format!("+ {l}")))
        .collect()
}

/// A database at `version` with the Dittofeed fixture (2 parents x 2 children, 3 roots, 5 rows
/// per table) and the state an operator has after using that version: quotas with default
/// limits and per-workspace overrides (one with counted_when), RLS in both forms, the
/// application and cross-workspace roles.
fn old_database(cluster: &Cluster, db: &str, version: &str) -> Client {
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .unwrap();
    let mut c = cluster.connect(db);
    c.batch_execute(&format!("CREATE EXTENSION tenancy VERSION '{version}'"))
        .unwrap();
    load_fixture(&mut c);
    let a = ws_id(&mut c, "root", 1);
    c.batch_execute(&format!(
        "SELECT tenancy.enforce_quota('\"Segment\"', counted_when => '\"resourceType\" = ''Declarative''');
         SELECT tenancy.enforce_quota('\"Journey\"');
         SELECT tenancy.enforce_quota('\"MessageTemplate\"');
         SELECT tenancy.set_quota('\"Segment\"', 50);
         SELECT tenancy.set_quota('\"Segment\"', 8, '{a}');
         SELECT tenancy.set_quota('\"Journey\"', 9, '{a}');
         SELECT tenancy.set_quota('\"MessageTemplate\"', 100);
         SELECT count(*) FROM tenancy.enable_rls_all();
         SELECT tenancy.enable_rls('\"Segment\"', 'workspaceId', true);
         SELECT tenancy.create_app_role('{APP}');
         SELECT tenancy.create_cross_workspace_role('{CROSS}', '{APP}');
         -- admission limits, from 0.4.0 on
         DO $$ BEGIN
             IF to_regprocedure('tenancy.set_limits(integer,interval,interval,uuid)') IS NOT NULL THEN
                 PERFORM tenancy.set_limits(8, interval '2 s', interval '30 s');
                 PERFORM tenancy.set_limits(2, interval '1 s', NULL, '{a}');
             END IF;
         END $$;"
    ))
    .unwrap();
    c
}

/// What must survive the update: quota settings, limits and counters, the policies, statistics.
fn state(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    for sql in [
        "SELECT format('table %s %s', tbl::regclass, row(t.*)::text) FROM tenancy.quota_table t ORDER BY 1",
        "SELECT format('limit %s %s', tbl::regclass, row(l.*)::text) FROM tenancy.quota_limit l ORDER BY 1",
        // the counters wherever they live (shared memory when preloaded), with their limits
        "SELECT format('usage %s', row(u.*)::text) FROM tenancy.quota_usage u ORDER BY 1",
        "SELECT format('policy %s %s %s', polrelid::regclass, polname, pg_get_expr(polqual, polrelid))
           FROM pg_policy ORDER BY 1",
        "SELECT format('rls %s %s %s', oid::regclass, relrowsecurity, relforcerowsecurity)
           FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' ORDER BY 1",
        "SELECT format('role %s super=%s bypass=%s login=%s inherit=%s', rolname, rolsuper, rolbypassrls, rolcanlogin, rolinherit)
           FROM pg_roles WHERE rolname LIKE 'tenancy_upg%' ORDER BY 1",
        "SELECT format('member %s of %s', m.member::regrole, m.roleid::regrole) FROM pg_auth_members m
           WHERE m.member::regrole::text LIKE 'tenancy_upg%' OR m.roleid::regrole::text LIKE 'tenancy_upg%' ORDER BY 1",
    ] {
        out.extend(c.query(sql, &[]).unwrap().iter().map(|r| r.get::<_, String>(0)));
    }
    // admission limits, where the version has them
    let has_limits: bool = c
        .query_one(
            "SELECT to_regclass('tenancy.workspace_limit') IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    if has_limits {
        out.extend(
            c.query("SELECT format('limits %s %s %s %s', workspace_id, max_active, max_wait, statement_timeout) FROM tenancy.workspace_limit ORDER BY 1", &[])
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0)),
        );
    }
    out
}

fn stats_of(c: &mut Client, db: &str, ws: &str) -> (i64, i64, i64) {
    let r = c
        .query_one(
            "SELECT queries, nested_queries, rows FROM tenancy.workspace_stats WHERE database = $1 AND workspace_id = $2::text::uuid",
            &[&db, &ws],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

fn fails(c: &mut Client) -> Vec<String> {
    c.query("SELECT format('%s %s %s', \"check\", object, detail) FROM tenancy.audit() WHERE severity = 'fail' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// The application role, in workspace `ws`: what it sees of `other`, and whether it can write there.
fn isolation(cluster: &Cluster, db: &str, ws: &str, other: &str) -> (i64, i64, String) {
    let conn = format!(
        "host=127.0.0.1 port={} user={APP} dbname={db}",
        cluster.port
    );
    let mut app = Client::connect(&conn, NoTls).unwrap();
    let mut tx = app.transaction().unwrap();
    tx.execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[&ws])
        .unwrap();
    let own: i64 = tx
        .query_one("SELECT count(*) FROM \"Journey\"", &[])
        .unwrap()
        .get(0);
    let foreign: i64 = tx
        .query_one(
            "SELECT count(*) FROM \"Segment\" WHERE \"workspaceId\" = $1::text::uuid",
            &[&other],
        )
        .unwrap()
        .get(0);
    let err = tx
        .execute(
            "INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ($1::text::uuid, 'intruder')",
            &[&other],
        )
        .unwrap_err();
    (own, foreign, sqlstate(&err))
}

fn journeys(c: &mut Client, ws: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM \"Journey\" WHERE \"workspaceId\" = $1::text::uuid",
        &[&ws],
    )
    .unwrap()
    .get(0)
}

/// Insert journeys into `ws` as the application role until the quota refuses one: (inserted, SQLSTATE).
fn fill_journeys(cluster: &Cluster, db: &str, ws: &str) -> (i64, String) {
    let conn = format!(
        "host=127.0.0.1 port={} user={APP} dbname={db}",
        cluster.port
    );
    let mut app = Client::connect(&conn, NoTls).unwrap();
    app.execute(
        "SELECT tenancy.set_workspace($1::text::uuid, false)",
        &[&ws],
    )
    .unwrap();
    for i in 0..100 {
        if let Err(e) = app.execute("INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ($1::text::uuid, 'j' || $2::int)", &[&ws, &i]) {
            return (i as i64, sqlstate(&e));
        }
    }
    (100, "none".into())
}

#[test]
fn update_from_every_kept_release_keeps_state_and_matches_a_fresh_install() {
    let cluster = Cluster::start("upgrade", PORT, &[]);
    let mut fresh = cluster.fixture_db("upg_fresh");
    for old in kept_versions() {
        update_from(&cluster, &mut fresh, &old);
    }
}

fn update_from(cluster: &Cluster, fresh: &mut Client, old: &str) {
    let db = &format!("upg_from_{}", old.replace('.', "_"));
    let mut c = old_database(cluster, db, old);
    let version: String = c
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'tenancy'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, old);
    let a = ws_id(&mut c, "root", 1);
    let b = ws_id(&mut c, "root", 2);

    // statistics of a workspace, made now and read without a context (so reading adds nothing)
    {
        let mut s = cluster.connect(db);
        s.execute("SELECT tenancy.set_workspace($1::text::uuid, false)", &[&a])
            .unwrap();
        for _ in 0..5 {
            s.query("SELECT count(*) FROM \"Segment\"", &[]).unwrap();
        }
    }
    let stats_before = stats_of(&mut c, db, &a);
    assert!(stats_before.0 >= 5, "{stats_before:?}");

    // rows in flight: a transaction holds 2 uncommitted journeys of b across the update
    let mut inflight = cluster.connect(db);
    inflight.batch_execute("BEGIN").unwrap();
    inflight
        .execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[&b])
        .unwrap();
    inflight
        .execute("INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ($1::text::uuid, 'in flight 1'), ($1::text::uuid, 'in flight 2')", &[&b])
        .unwrap();

    let state_before = state(&mut c);
    let fails_before = fails(&mut c);
    assert!(
        state_before.iter().any(|l| l.starts_with("usage ")),
        "{state_before:?}"
    );

    // queries running during the update: the application role reads and writes in its workspace
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..2)
        .map(|n| {
            let (stop, done, errors) = (stop.clone(), done.clone(), errors.clone());
            let ws = ws_id(&mut c, "root", 3);
            let conn = format!("host=127.0.0.1 port={PORT} user={APP} dbname={db}");
            std::thread::spawn(move || {
                let mut app = Client::connect(&conn, NoTls).unwrap();
                while !stop.load(Relaxed) {
                    let r = (|| -> Result<(), postgres::Error> {
                        let mut tx = app.transaction()?;
                        tx.execute("SELECT tenancy.set_workspace($1::text::uuid, true)", &[&ws])?;
                        tx.query("SELECT count(*) FROM \"Segment\"", &[])?;
                        tx.execute("INSERT INTO \"MessageTemplate\" (\"workspaceId\", name) VALUES ($1::text::uuid, $2)", &[&ws, &format!("w{n}")])?;
                        tx.execute("DELETE FROM \"MessageTemplate\" WHERE \"workspaceId\" = $1::text::uuid AND name = $2", &[&ws, &format!("w{n}")])?;
                        tx.commit()
                    })();
                    match r {
                        Ok(()) => {
                            done.fetch_add(1, Relaxed);
                        }
                        Err(e) => errors.lock().unwrap().push(format!("{e} {:?}", e.as_db_error().map(|d| d.code().code().to_string()))),
                    }
                }
            })
        })
        .collect();
    let wait_for = |n: u64| {
        for _ in 0..1500 {
            if done.load(Relaxed) >= n || !errors.lock().unwrap().is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    wait_for(20);
    let before_update = done.load(Relaxed);
    c.batch_execute("ALTER EXTENSION tenancy UPDATE").unwrap();
    let at_update = done.load(Relaxed);
    wait_for(at_update + 20);
    stop.store(true, Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "queries running during the update failed: {errors:?}"
    );
    assert!(
        done.load(Relaxed) > before_update,
        "no transaction ran across the update"
    );

    let version: String = c
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'tenancy'",
            &[],
        )
        .unwrap()
        .get(0);
    let current: String = c
        .query_one(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'tenancy'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, current, "updated to the current version");
    assert_ne!(version, old);

    // the catalog equals a fresh install of the current version
    let d = diff(&catalog(&mut c), &catalog(fresh));
    assert!(
        d.is_empty(),
        "updated catalog differs from a fresh install:\n{}",
        d.join("\n")
    );

    // no state lost (the in-flight rows are not committed yet: counters as before)
    assert_eq!(
        state(&mut c),
        state_before,
        "quota settings, limits, counters, policies or roles changed"
    );
    assert_eq!(stats_of(&mut c, db, &a), stats_before, "statistics changed");
    inflight.batch_execute("COMMIT").unwrap();
    let drift: i64 = c
        .query_one("SELECT count(*) FROM tenancy.quota_drift()", &[])
        .unwrap()
        .get(0);
    assert_eq!(drift, 0, "counters drifted from the rows across the update");
    let used: i64 = c
        .query_one("SELECT used FROM tenancy.quota_usage WHERE table_name = '\"Journey\"'::regclass AND workspace_id = $1::text::uuid", &[&b])
        .unwrap()
        .get(0);
    let actual: i64 = c
        .query_one(
            "SELECT count(*) FROM \"Journey\" WHERE \"workspaceId\" = $1::text::uuid",
            &[&b],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        used, actual,
        "the in-flight rows are counted once they commit"
    );

    // the policies still isolate, the quotas still bite, audit() has no new fail row
    let (own, foreign, code) = isolation(cluster, db, &a, &b);
    assert!(own > 0);
    assert_eq!((foreign, code.as_str()), (0, "42501"));
    let had = journeys(&mut c, &a);
    let (inserted, code) = fill_journeys(cluster, db, &a);
    assert_eq!(
        code, "53400",
        "the per-workspace override (9) still applies"
    );
    assert_eq!(inserted, 9 - had, "up to the override of 9");
    let new_fails: Vec<_> = fails(&mut c)
        .into_iter()
        .filter(|f| !fails_before.contains(f))
        .collect();
    assert!(
        new_fails.is_empty(),
        "audit() fails after the update: {new_fails:?}"
    );
    // and what 0.2.0 added works: refused_statements, the checked quota administration
    let _: i64 = c
        .query_one("SELECT refused_statements FROM tenancy.stats_info", &[])
        .unwrap()
        .get(0);
    c.batch_execute("SELECT tenancy.set_quota('\"Journey\"', 10, NULL)")
        .unwrap();
}

#[test]
fn a_database_left_at_an_old_version_keeps_working_with_the_new_library() {
    let cluster = Cluster::start("upgrade_old", PORT + 1, &[]);
    let mut fresh = cluster.fixture_db("upg_fresh");
    for old in kept_versions() {
        left_at(&cluster, &mut fresh, &old);
    }
}

fn left_at(cluster: &Cluster, fresh: &mut Client, old: &str) {
    let db = &format!("upg_old_{}", old.replace('.', "_"));
    let mut c = old_database(cluster, db, old);
    let a = ws_id(&mut c, "root", 1);
    let b = ws_id(&mut c, "root", 2);

    // the backend says, once, which version its SQL is at and what to run
    let notices = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let seen = notices.clone();
    let mut config: postgres::Config = format!(
        "host=127.0.0.1 port={} user=postgres dbname={db}",
        cluster.port
    )
    .parse()
    .unwrap();
    config.notice_callback(move |n| {
        seen.lock().unwrap().push((
            n.message().to_string(),
            n.hint().unwrap_or_default().to_string(),
        ))
    });
    let mut s = config.connect(NoTls).unwrap();
    s.execute("SELECT tenancy.set_workspace($1::text::uuid, false)", &[&a])
        .unwrap();
    s.query("SELECT 1", &[]).unwrap();
    s.query("SELECT 2", &[]).unwrap();
    let got = notices.lock().unwrap().clone();
    let warnings: Vec<_> = got
        .iter()
        .filter(|(m, _)| m.contains("is version"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning per backend: {got:?}");
    assert!(
        warnings[0].0.contains(&format!("version {old}")),
        "{:?}",
        warnings[0]
    );
    assert!(
        warnings[0].1.contains("ALTER EXTENSION tenancy UPDATE"),
        "{:?}",
        warnings[0]
    );
    // a function the old SQL lacks (one the current version has, by a name the old one has not):
    // PostgreSQL's error, after that warning
    let names = |c: &mut Client| -> std::collections::BTreeSet<String> {
        c.query("SELECT DISTINCT proname::text FROM pg_proc WHERE pronamespace = 'tenancy'::regnamespace", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let (current, at_old) = (names(fresh), names(&mut c));
    if let Some(missing) = current.difference(&at_old).next() {
        let err = s
            .query(&format!("SELECT tenancy.{missing}()"), &[])
            .unwrap_err();
        assert_eq!(
            sqlstate(&err),
            "42883",
            "calling tenancy.{missing}() at {old}"
        );
    }

    // context, isolation, quotas, statistics
    let current: String = s
        .query_one("SELECT tenancy.current_workspace_id()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(current, a);
    let (own, foreign, code) = isolation(cluster, db, &a, &b);
    assert!(own > 0);
    assert_eq!((foreign, code.as_str()), (0, "42501"));
    let had = journeys(&mut c, &a);
    let (inserted, code) = fill_journeys(cluster, db, &a);
    assert_eq!(
        (inserted, code.as_str()),
        (9 - had, "53400"),
        "up to the override of 9"
    );
    c.batch_execute("SELECT tenancy.set_quota('\"Journey\"', 12, NULL)")
        .unwrap();
    let drift: i64 = c
        .query_one("SELECT count(*) FROM tenancy.quota_drift()", &[])
        .unwrap()
        .get(0);
    assert_eq!(drift, 0);
    // the 0.1.0 view over _stats_info() reads the 0.1.0 columns, not shifted ones
    let r = c
        .query_one(
            "SELECT capacity, shared_memory_bytes, bytes_per_entry FROM tenancy.stats_info",
            &[],
        )
        .unwrap();
    let (capacity, bytes, per_entry): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
    assert!(
        capacity > 0 && bytes > capacity * 50 && per_entry > 50 && per_entry < 1000,
        "{capacity} {bytes} {per_entry}"
    );
    let (q, _, _) = stats_of(&mut c, db, &a);
    assert!(q >= 2);

    // and it can be updated later
    c.batch_execute("ALTER EXTENSION tenancy UPDATE").unwrap();
    let d = diff(&catalog(&mut c), &catalog(fresh));
    assert!(
        d.is_empty(),
        "updated catalog differs from a fresh install:\n{}",
        d.join("\n")
    );
}
