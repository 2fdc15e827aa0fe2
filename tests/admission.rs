//! Fair sharing: per-workspace admission control and statement timeouts, over real connections
//! as the application role (superusers are not throttled).

use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tenancy_it::*;

const APP: &str = "tenancy_it_adm";

/// A fresh database, the application role, and two root workspaces.
fn setup(test: &str) -> (String, String, String) {
    let db = fresh_db(test);
    let mut admin = connect(&db);
    // roles are per cluster: a test running in parallel may be creating it too
    for attempt in 0.. {
        match admin.batch_execute(&format!("SELECT tenancy.create_app_role('{APP}')")) {
            Ok(()) => break,
            Err(e) if attempt < 20 => {
                let _ = e;
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("create_app_role: {e}"),
        }
    }
    admin
        .batch_execute(&format!(
            "CREATE FUNCTION public.timed_sleep(secs float8, OUT s float8, OUT e float8) LANGUAGE plpgsql AS $$
                 BEGIN s := extract(epoch FROM clock_timestamp()); PERFORM pg_sleep(secs); e := extract(epoch FROM clock_timestamp()); END $$;
             GRANT EXECUTE ON FUNCTION public.timed_sleep(float8) TO {APP};"
        ))
        .unwrap();
    let a = ws_id(&mut admin, "root", 1);
    let b = ws_id(&mut admin, "root", 2);
    (db, a, b)
}

fn app(db: &str, ws: &str) -> Client {
    let mut c = connect_as(db, APP);
    c.execute(
        "SELECT tenancy.set_workspace($1::text::uuid, false)",
        &[&ws],
    )
    .unwrap();
    c
}

/// Run `sql` (which must return two timestamptz as epoch seconds: start, end) and return them.
fn timed(c: &mut Client, sql: &str) -> Result<(f64, f64), postgres::Error> {
    let row = c.query_one(sql, &[])?;
    Ok((row.get(0), row.get(1)))
}

/// Start and end of the statement, measured inside it.
const SLEEP_50MS: &str = "SELECT s, e FROM public.timed_sleep(0.05)";

/// Wait until `n` statements of the database hold a slot (the holder of a test has started).
fn until_active(db: &str, n: i32) {
    let mut c = connect(db);
    for _ in 0..200 {
        let active: i32 = c
            .query_one(
                "SELECT coalesce(sum(active), 0)::int FROM tenancy.workspace_limits",
                &[],
            )
            .unwrap()
            .get(0);
        if active >= n {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("no statement took a slot");
}

fn max_overlap(intervals: &[(f64, f64)]) -> usize {
    let mut events: Vec<(f64, i32)> = intervals
        .iter()
        .flat_map(|&(s, e)| [(s, 1), (e, -1)])
        .collect();
    events.sort_by(|a, b| a.partial_cmp(b).unwrap().then(a.1.cmp(&b.1)));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max as usize
}

#[test]
fn the_limit_holds_exactly_under_16_clients() {
    let (db, a, _) = setup("adm_limit");
    connect(&db)
        .batch_execute(&format!("SELECT tenancy.set_limits(3, workspace => '{a}')"))
        .unwrap();
    let intervals = Arc::new(Mutex::new(Vec::new()));
    let start = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (db, a, intervals, start) =
                (db.clone(), a.clone(), intervals.clone(), start.clone());
            thread::spawn(move || {
                let mut c = app(&db, &a);
                start.wait();
                for _ in 0..4 {
                    let iv = timed(&mut c, SLEEP_50MS).unwrap();
                    intervals.lock().unwrap().push(iv);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let iv = intervals.lock().unwrap().clone();
    assert_eq!(iv.len(), 64);
    let peak = max_overlap(&iv);
    assert_eq!(peak, 3, "statements running at once, measured inside them");
    // nothing left behind
    let mut admin = connect(&db);
    let (active, waiting): (i32, i32) = {
        let r = admin.query_one("SELECT coalesce(sum(active), 0)::int, coalesce(sum(waiting), 0)::int FROM tenancy.workspace_limits", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((active, waiting), (0, 0));
}

#[test]
fn waits_end_in_arrival_order_and_max_wait_refuses_with_53000() {
    let (db, a, _) = setup("adm_order");
    connect(&db)
        .batch_execute(&format!("SELECT tenancy.set_limits(1, workspace => '{a}')"))
        .unwrap();
    let hold = {
        let (db, a) = (db.clone(), a.clone());
        thread::spawn(move || {
            timed(
                &mut app(&db, &a),
                "SELECT s, e FROM public.timed_sleep(0.6)",
            )
            .unwrap()
        })
    };
    until_active(&db, 1);
    let waiters: Vec<_> = (0..3)
        .map(|i| {
            let (db, a) = (db.clone(), a.clone());
            thread::sleep(Duration::from_millis(80));
            thread::spawn(move || (i, timed(&mut app(&db, &a), SLEEP_50MS).unwrap()))
        })
        .collect();
    let held = hold.join().unwrap();
    let mut ends: Vec<(usize, (f64, f64))> =
        waiters.into_iter().map(|w| w.join().unwrap()).collect();
    for (_, (s, _)) in &ends {
        assert!(
            *s >= held.1 - 0.001,
            "a waiter ran before the slot was free"
        );
    }
    ends.sort_by(|x, y| x.1 .0.partial_cmp(&y.1 .0).unwrap());
    assert_eq!(
        ends.iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![0, 1, 2],
        "slots go in arrival order"
    );

    // max_wait: refused with 53000 after about that long, naming the workspace
    connect(&db)
        .batch_execute(&format!(
            "SELECT tenancy.set_limits(1, interval '150 ms', workspace => '{a}')"
        ))
        .unwrap();
    let hold = {
        let (db, a) = (db.clone(), a.clone());
        thread::spawn(move || app(&db, &a).query("SELECT pg_sleep(0.8)", &[]).unwrap())
    };
    until_active(&db, 1);
    let t = Instant::now();
    let err = app(&db, &a).query("SELECT 1", &[]).unwrap_err();
    let waited = t.elapsed();
    assert_eq!(sqlstate(&err), "53000");
    let e = err.as_db_error().unwrap();
    assert!(
        e.message().contains(&a) && e.hint().is_some() && e.detail().is_some(),
        "{e:?}"
    );
    assert!(
        waited >= Duration::from_millis(140) && waited < Duration::from_millis(700),
        "waited {waited:?}"
    );
    hold.join().unwrap();
    // counted in workspace_stats: 1 + 3 + 1 admitted (holders and waiters), 3 waited and
    // admitted + 1 refused, with their wait time
    let r = connect(&db)
        .query_one(
            "SELECT statements_admitted, statements_waited, admission_rejections, wait_time_ms::float8
               FROM tenancy.workspace_stats WHERE workspace_id = $1::text::uuid AND database = current_database()",
            &[&a],
        )
        .unwrap();
    let (admitted, waited_n, rejected, wait_ms): (i64, i64, i64, f64) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    assert_eq!(
        (admitted, waited_n, rejected),
        (5, 4, 1),
        "admitted, waited, refused"
    );
    assert!(wait_ms > 400.0, "wait time {wait_ms} ms");
}

#[test]
fn failing_cancelled_and_waiting_statements_free_their_slots() {
    let (db, a, _) = setup("adm_free");
    // max_wait 0: a leaked slot would refuse the next statement at once
    connect(&db)
        .batch_execute(&format!(
            "SELECT tenancy.set_limits(1, interval '0', workspace => '{a}')"
        ))
        .unwrap();
    let mut c = app(&db, &a);
    assert_eq!(sqlstate(&c.query("SELECT 1/0", &[]).unwrap_err()), "22012");
    c.query("SELECT 1", &[]).unwrap();
    // an error inside a savepoint, then work in the same transaction
    let mut tx = c.transaction().unwrap();
    tx.batch_execute("SAVEPOINT s").unwrap();
    assert!(tx.query("SELECT 1/0", &[]).is_err());
    tx.batch_execute("ROLLBACK TO s").unwrap();
    tx.query("SELECT 2", &[]).unwrap();
    tx.commit().unwrap();
    // a cancelled statement
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let canceller = {
        let db = db.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            connect(&db)
                .execute("SELECT pg_cancel_backend($1)", &[&pid])
                .unwrap();
        })
    };
    assert_eq!(
        sqlstate(&c.query("SELECT pg_sleep(5)", &[]).unwrap_err()),
        "57014"
    );
    canceller.join().unwrap();
    app(&db, &a).query("SELECT 1", &[]).unwrap();
    // a statement cancelled while it waits: it stops counting as a waiter
    connect(&db)
        .batch_execute(&format!("SELECT tenancy.set_limits(1, workspace => '{a}')"))
        .unwrap();
    let hold = {
        let (db, a) = (db.clone(), a.clone());
        thread::spawn(move || app(&db, &a).query("SELECT pg_sleep(0.7)", &[]).unwrap())
    };
    until_active(&db, 1);
    // the pid first: under the context, even that query would wait for the slot
    let mut w = connect_as(&db, APP);
    let wpid: i32 = w.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    w.execute("SELECT tenancy.set_workspace($1::text::uuid, false)", &[&a])
        .unwrap();
    let canceller = {
        let db = db.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(150));
            connect(&db)
                .execute("SELECT pg_cancel_backend($1)", &[&wpid])
                .unwrap();
        })
    };
    assert_eq!(sqlstate(&w.query("SELECT 1", &[]).unwrap_err()), "57014");
    canceller.join().unwrap();
    hold.join().unwrap();
    connect(&db)
        .batch_execute(&format!(
            "SELECT tenancy.set_limits(1, interval '0', workspace => '{a}')"
        ))
        .unwrap();
    app(&db, &a).query("SELECT 1", &[]).unwrap();
    let r = connect(&db).query_one("SELECT coalesce(sum(active), 0)::int + coalesce(sum(waiting), 0)::int FROM tenancy.workspace_limits", &[]).unwrap();
    assert_eq!(r.get::<_, i32>(0), 0);
}

#[test]
fn cursors_nested_statements_and_portals_do_not_wait_for_their_own_slot() {
    let (db, a, _) = setup("adm_nested");
    let mut admin = connect(&db);
    admin
        .batch_execute(&format!(
            "CREATE FUNCTION public.count_segments() RETURNS bigint LANGUAGE plpgsql AS $$
                 DECLARE n bigint; BEGIN SELECT count(*) INTO n FROM \"Segment\"; PERFORM 1; RETURN n; END $$;
             GRANT EXECUTE ON FUNCTION public.count_segments() TO {APP};
             SELECT tenancy.set_limits(1, interval '0', workspace => '{a}');"
        ))
        .unwrap();
    let mut c = app(&db, &a);
    c.query("SELECT public.count_segments()", &[]).unwrap();
    c.batch_execute(
        "DO $$ BEGIN PERFORM count(*) FROM \"Segment\"; PERFORM public.count_segments(); END $$",
    )
    .unwrap();
    let mut tx = c.transaction().unwrap();
    tx.batch_execute("DECLARE cur CURSOR FOR SELECT id FROM \"Segment\"")
        .unwrap();
    tx.query("FETCH 1 FROM cur", &[]).unwrap();
    tx.query("SELECT count(*) FROM \"Journey\"", &[]).unwrap();
    // a portal suspended by the extended protocol, then another statement
    let stmt = tx.prepare("SELECT id FROM \"Segment\"").unwrap();
    let portal = tx.bind(&stmt, &[]).unwrap();
    tx.query_portal(&portal, 1).unwrap();
    tx.query("SELECT 1", &[]).unwrap();
    tx.query_portal(&portal, 1).unwrap();
    tx.commit().unwrap();
    // and everything was given back
    app(&db, &a).query("SELECT 1", &[]).unwrap();
}

#[test]
fn other_workspaces_are_not_slowed_and_timeouts_are_per_workspace() {
    let (db, a, b) = setup("adm_others");
    connect(&db)
        .batch_execute(&format!("SELECT tenancy.set_limits(1, workspace => '{a}'); SELECT tenancy.set_limits(NULL, NULL, interval '300 ms', '{b}')"))
        .unwrap();
    // a is at its limit with a waiter behind; b runs at once
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let (db, a) = (db.clone(), a.clone());
            thread::spawn(move || app(&db, &a).query("SELECT pg_sleep(0.6)", &[]).unwrap())
        })
        .collect();
    until_active(&db, 1);
    thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    app(&db, &b)
        .query("SELECT count(*) FROM \"Segment\"", &[])
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "b waited {:?}",
        t.elapsed()
    );
    for h in holders {
        h.join().unwrap();
    }
    // b's statement timeout cancels b's statement (57014), not a's
    let err = app(&db, &b).query("SELECT pg_sleep(1)", &[]).unwrap_err();
    assert_eq!(sqlstate(&err), "57014");
    app(&db, &a).query("SELECT pg_sleep(0.5)", &[]).unwrap();
    // the smaller wins: a session timeout below the workspace's applies
    let mut c = app(&db, &b);
    c.batch_execute("SET statement_timeout = '100ms'").unwrap();
    let t = Instant::now();
    assert_eq!(
        sqlstate(&c.query("SELECT pg_sleep(1)", &[]).unwrap_err()),
        "57014"
    );
    assert!(
        t.elapsed() < Duration::from_millis(280),
        "{:?}",
        t.elapsed()
    );
    // only the first was the workspace's timeout
    let timeouts: i64 = connect(&db)
        .query_one("SELECT statement_timeouts FROM tenancy.workspace_stats WHERE workspace_id = $1::text::uuid AND database = current_database()", &[&b])
        .unwrap()
        .get(0);
    assert_eq!(timeouts, 1);
    // no context, or a superuser: not throttled
    connect(&db)
        .batch_execute(&format!(
            "SELECT tenancy.set_limits(1, interval '0', workspace => '{a}')"
        ))
        .unwrap();
    let hold = {
        let (db, a) = (db.clone(), a.clone());
        thread::spawn(move || app(&db, &a).query("SELECT pg_sleep(0.5)", &[]).unwrap())
    };
    until_active(&db, 1);
    connect_as(&db, APP).query("SELECT 1", &[]).unwrap();
    let mut su = connect(&db);
    su.execute("SELECT tenancy.set_workspace($1::text::uuid, false)", &[&a])
        .unwrap();
    su.query("SELECT 1", &[]).unwrap();
    assert_eq!(
        sqlstate(&app(&db, &a).query("SELECT 1", &[]).unwrap_err()),
        "53000"
    );
    hold.join().unwrap();
}

#[test]
fn bad_limits_are_refused_and_the_view_shows_sources() {
    let (db, a, b) = setup("adm_view");
    let mut admin = connect(&db);
    for (sql, code) in [
        ("SELECT tenancy.set_limits(0)", "22023"),
        ("SELECT tenancy.set_limits(2, interval '-1 s')", "22023"),
        ("SELECT tenancy.set_limits(2, NULL, interval '0')", "22023"),
    ] {
        assert_eq!(
            sqlstate(&admin.batch_execute(sql).unwrap_err()),
            code,
            "{sql}"
        );
    }
    admin.batch_execute(&format!("SELECT tenancy.set_limits(4, interval '2 s'); SELECT tenancy.set_limits(2, workspace => '{a}'); SELECT tenancy.set_limits(2, workspace => '{a}')")).unwrap();
    let rows: Vec<(Option<String>, Option<i32>, String)> = admin
        .query("SELECT workspace_id::text, max_active, source FROM tenancy.workspace_limits ORDER BY source, workspace_id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (None, Some(4), "default".into()),
            (Some(a.clone()), Some(2), "workspace".into())
        ]
    );
    // the application role cannot change limits
    let err = connect_as(&db, APP)
        .batch_execute(&format!(
            "SELECT tenancy.set_limits(100, workspace => '{b}')"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    admin
        .batch_execute(&format!(
            "SELECT tenancy.clear_limits('{a}'); SELECT tenancy.clear_limits('{a}')"
        ))
        .unwrap();
    let n: i64 = admin
        .query_one("SELECT count(*) FROM tenancy.workspace_limit", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// A backend terminated while it holds a slot gives it back as it exits; one killed with SIGKILL
/// takes the server through a crash-restart, which starts with no slot in use.
#[test]
fn terminated_and_killed_backends_leak_no_slot() {
    let cluster = Cluster::start("it-admission-crash", 25464, &[]);
    let mut admin = cluster.fixture_db("adm_crash");
    admin
        .batch_execute(&format!("SELECT tenancy.create_app_role('{APP}')"))
        .unwrap();
    let a = ws_id(&mut admin, "root", 1);
    admin
        .batch_execute(&format!(
            "SELECT tenancy.set_limits(1, interval '0', workspace => '{a}')"
        ))
        .unwrap();
    // the test clusters commit asynchronously: make the setup survive the crash below
    admin.batch_execute("CHECKPOINT").unwrap();
    let port = cluster.port;
    let app_on = move |a: &str| {
        let mut c = Client::connect(
            &format!("host=127.0.0.1 port={port} user={APP} dbname=adm_crash"),
            NoTls,
        )
        .unwrap();
        let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        c.execute("SELECT tenancy.set_workspace($1::text::uuid, false)", &[&a])
            .unwrap();
        (c, pid)
    };
    let active = |admin: &mut Client| -> i32 {
        admin
            .query_one(
                "SELECT coalesce(sum(active), 0)::int FROM tenancy.workspace_limits",
                &[],
            )
            .unwrap()
            .get(0)
    };
    for how in ["terminate", "kill -9"] {
        let (mut holder, pid) = app_on(&a);
        let sleeper = thread::spawn(move || holder.query("SELECT pg_sleep(30)", &[]).is_err());
        for _ in 0..300 {
            if active(&mut admin) == 1 {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(active(&mut admin), 1, "{how}: the holder took the slot");
        // at the limit: refused at once
        assert_eq!(
            sqlstate(&app_on(&a).0.query("SELECT 1", &[]).unwrap_err()),
            "53000"
        );
        if how == "terminate" {
            admin
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .unwrap();
        } else {
            assert!(std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap()
                .success());
        }
        assert!(
            sleeper.join().unwrap(),
            "{how}: the holder's statement ended with an error"
        );
        // the server may be restarting: reconnect until it accepts connections
        let mut admitted = false;
        for _ in 0..300 {
            match Client::connect(
                &format!("host=127.0.0.1 port={port} user={APP} dbname=adm_crash"),
                NoTls,
            ) {
                Ok(mut c) => {
                    c.execute("SELECT tenancy.set_workspace($1::text::uuid, false)", &[&a])
                        .unwrap();
                    match c.query("SELECT 1", &[]) {
                        Ok(_) => {
                            admitted = true;
                            break;
                        }
                        Err(e) if sqlstate(&e) == "53000" => {
                            thread::sleep(Duration::from_millis(20))
                        } // exit still in progress
                        Err(e) => panic!("{how}: {e}"),
                    }
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
        assert!(admitted, "{how}: the slot was never given back");
        admin = cluster.connect("adm_crash");
        assert_eq!(active(&mut admin), 0, "{how}");
    }
}
