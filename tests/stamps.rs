//! Change stamps (issue 17): a stamp moves when a transaction that changed rows of the
//! workspace in the table commits, and only then (not on rollback, not for a rolled-back
//! savepoint, both workspaces of a moved row, every workspace on TRUNCATE, PREPARE refused);
//! it never goes back across a clean restart or a crash; a cache that validates by stamp never
//! serves data older than its stamp under concurrent writers; another workspace's stamps are
//! not readable under row-level security.

use postgres::fallible_iterator::FallibleIterator;
use tenancy_it::*;

const A: &str = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
const B: &str = "b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";

fn stamp(c: &mut Client, ws: &str) -> i64 {
    c.query_one(
        "SELECT tenancy.change_stamp('\"Segment\"', $1::text::uuid)",
        &[&ws],
    )
    .unwrap()
    .get(0)
}

fn setup(c: &mut Client) {
    c.batch_execute(
        "CREATE TABLE \"Segment\" (id serial PRIMARY KEY, \"workspaceId\" uuid NOT NULL, name text NOT NULL, version int NOT NULL DEFAULT 0);
         SELECT tenancy.track_changes('\"Segment\"');",
    )
    .unwrap();
}

fn ins(c: &mut Client, ws: &str) {
    c.execute(
        "INSERT INTO \"Segment\" (\"workspaceId\", name) VALUES ($1::text::uuid, 'x')",
        &[&ws],
    )
    .unwrap();
}

#[test]
fn a_stamp_moves_at_commit_and_only_then() {
    let cluster = Cluster::start("it-stamps", 25477, &[]);
    let mut c = cluster.connect("postgres");
    c.batch_execute("CREATE DATABASE st").unwrap();
    let mut c = cluster.connect("st");
    c.batch_execute("CREATE EXTENSION tenancy").unwrap();
    setup(&mut c);
    let (a0, b0) = (stamp(&mut c, A), stamp(&mut c, B));
    // the clock starts at least at the server's start time in microseconds since 2000 (what a
    // promoted standby relies on)
    let started_us: i64 = c
        .query_one(
            "SELECT (extract(epoch FROM pg_postmaster_start_time() - timestamptz '2000-01-01 00:00:00+00') * 1e6)::bigint",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        a0 >= started_us - 1_000_000,
        "stamp {a0} below the start time {started_us}"
    );
    ins(&mut c, A);
    let a1 = stamp(&mut c, A);
    assert!(a1 > a0, "insert committed: {a0} -> {a1}");
    assert_eq!(stamp(&mut c, B), b0, "another workspace does not move");

    // inside the transaction, and after its rollback: no move
    let mut other = cluster.connect("st");
    c.batch_execute("BEGIN").unwrap();
    ins(&mut c, A);
    assert_eq!(stamp(&mut other, A), a1, "not before commit");
    c.batch_execute("ROLLBACK").unwrap();
    assert_eq!(stamp(&mut c, A), a1, "rolled back");

    // a rolled-back savepoint drops its part; a released one keeps it
    c.batch_execute(&format!(
        "BEGIN; SAVEPOINT s; UPDATE \"Segment\" SET name = 'y' WHERE \"workspaceId\" = '{A}'; ROLLBACK TO s; COMMIT"
    ))
    .unwrap();
    assert_eq!(stamp(&mut c, A), a1, "rolled-back savepoint");
    c.batch_execute(&format!(
        "BEGIN; SAVEPOINT s; UPDATE \"Segment\" SET name = 'y' WHERE \"workspaceId\" = '{A}'; RELEASE s; COMMIT"
    ))
    .unwrap();
    let a2 = stamp(&mut c, A);
    assert!(a2 > a1, "released savepoint");

    // moving rows between workspaces moves both; DELETE moves; TRUNCATE moves everyone's
    let b1 = stamp(&mut c, B);
    c.execute(
        &format!("UPDATE \"Segment\" SET \"workspaceId\" = '{B}' WHERE \"workspaceId\" = '{A}'"),
        &[],
    )
    .unwrap();
    let (a3, b2) = (stamp(&mut c, A), stamp(&mut c, B));
    assert!(
        a3 > a2 && b2 > b1,
        "both sides of a move: {a2}->{a3}, {b1}->{b2}"
    );
    c.execute(
        &format!("DELETE FROM \"Segment\" WHERE \"workspaceId\" = '{B}'"),
        &[],
    )
    .unwrap();
    let b3 = stamp(&mut c, B);
    assert!(b3 > b2, "delete");
    let untouched = "c0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    let c0 = stamp(&mut c, untouched);
    c.batch_execute("TRUNCATE \"Segment\"").unwrap();
    assert!(
        stamp(&mut c, untouched) > c0,
        "TRUNCATE moves every workspace's stamp"
    );

    // a partitioned table: rows written through the parent or straight into a partition move
    // the parent's stamp
    c.batch_execute(
        "CREATE TABLE parted (\"workspaceId\" uuid NOT NULL, n int) PARTITION BY HASH (\"workspaceId\");
         CREATE TABLE parted_0 PARTITION OF parted FOR VALUES WITH (MODULUS 2, REMAINDER 0);
         CREATE TABLE parted_1 PARTITION OF parted FOR VALUES WITH (MODULUS 2, REMAINDER 1);
         SELECT tenancy.track_changes('parted');",
    )
    .unwrap();
    let parted = |c: &mut Client| -> i64 {
        c.query_one(
            "SELECT tenancy.change_stamp('parted', $1::text::uuid)",
            &[&A],
        )
        .unwrap()
        .get(0)
    };
    let p0 = parted(&mut c);
    c.execute(&format!("INSERT INTO parted VALUES ('{A}', 1)"), &[])
        .unwrap();
    let p1 = parted(&mut c);
    assert!(p1 > p0, "insert through the parent");
    let part: String = c
        .query_one(
            &format!("SELECT tableoid::regclass::text FROM parted WHERE \"workspaceId\" = '{A}'"),
            &[],
        )
        .unwrap()
        .get(0);
    c.execute(&format!("UPDATE {part} SET n = 2"), &[]).unwrap();
    assert!(
        parted(&mut c) > p1,
        "update straight into the partition {part}"
    );
    let err = c
        .batch_execute(&format!("SELECT tenancy.change_stamp('{part}', '{A}')"))
        .unwrap_err();
    assert_eq!(
        sqlstate(&err),
        "55000",
        "a partition has no stamps of its own"
    );

    // two-phase commit is refused for a transaction that changed a tracked table
    let err = c
        .batch_execute(&format!(
            "BEGIN; INSERT INTO \"Segment\" (\"workspaceId\", name) VALUES ('{A}', 'p'); PREPARE TRANSACTION 'stamps'"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&err), "0A000", "{err}");
    let _ = c.batch_execute("ROLLBACK");

    // bad input
    let err = c
        .batch_execute("SELECT tenancy.track_changes('\"Segment\"', 'nope')")
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42703");
    let err = c
        .batch_execute("SELECT tenancy.track_changes('\"Segment\"', 'name')")
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42804");
    c.batch_execute("CREATE TABLE untracked (\"workspaceId\" uuid)")
        .unwrap();
    let err = c
        .batch_execute(&format!("SELECT tenancy.change_stamp('untracked', '{A}')"))
        .unwrap_err();
    assert_eq!(sqlstate(&err), "55000");
    let err = c
        .batch_execute("SELECT tenancy.change_stamp('\"Segment\"')")
        .unwrap_err();
    assert_eq!(sqlstate(&err), "55000", "no context, no workspace");
    let rows: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM tenancy.change_stamps('{A}')"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        rows, 2,
        "change_stamps lists the tracked tables (not the partitions)"
    );

    // under row-level security a role reads its context's stamps only
    c.batch_execute(
        "CREATE ROLE stamps_app LOGIN; GRANT SELECT, INSERT ON \"Segment\" TO stamps_app;
         ALTER TABLE \"Segment\" ENABLE ROW LEVEL SECURITY;
         CREATE POLICY p ON \"Segment\" USING (\"workspaceId\" = tenancy.current_workspace_id());",
    )
    .unwrap();
    let mut app = Client::connect(
        &format!(
            "host=127.0.0.1 port={} user=stamps_app dbname=st",
            cluster.port
        ),
        NoTls,
    )
    .unwrap();
    let err = app
        .batch_execute(&format!(
            "SELECT tenancy.change_stamp('\"Segment\"', '{A}')"
        ))
        .unwrap_err();
    assert_eq!(
        sqlstate(&err),
        "42501",
        "another workspace's stamp under RLS"
    );
    c.batch_execute(
        "CREATE TABLE secret (\"workspaceId\" uuid); SELECT tenancy.track_changes('secret')",
    )
    .unwrap();
    let err = app
        .batch_execute(&format!("SELECT tenancy.change_stamp('secret', '{A}')"))
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "no SELECT on the table");

    // never back: a clean restart, then a crash (kill -9 of a backend: every backend restarts)
    ins(&mut c, A);
    let before = stamp(&mut c, A).max(stamp(&mut c, B));
    drop((c, other, app));
    cluster.restart();
    let mut c = cluster.connect("st");
    let after_restart = stamp(&mut c, A).min(stamp(&mut c, B));
    assert!(
        after_restart > before,
        "restart: {before} -> {after_restart}"
    );
    ins(&mut c, A);
    let before_crash = stamp(&mut c, A);
    let victim: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let mut killer = cluster.connect("st");
    assert!(std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap()
        .success());
    drop(c);
    let _ = killer.batch_execute("SELECT 1");
    let mut c = (0..100)
        .find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(200));
            Client::connect(
                &format!(
                    "host=127.0.0.1 port={} user=postgres dbname=st",
                    cluster.port
                ),
                NoTls,
            )
            .ok()
        })
        .expect("server back after the crash");
    let after_crash = stamp(&mut c, A).min(stamp(&mut c, B));
    assert!(
        after_crash > before_crash,
        "crash: {before_crash} -> {after_crash}"
    );
}

/// A cache keyed by stamp (read the stamp, then the data in a later statement; serve the cached
/// data while the stamp is unchanged) never serves data older than what was committed before the
/// stamp it validated against: writers bump a per-workspace version row, readers check.
#[test]
fn a_stamp_validated_cache_never_serves_old_data() {
    let cluster = Cluster::start("it-stamps-race", 25478, &[]);
    let mut c = cluster.connect("postgres");
    c.batch_execute("CREATE DATABASE race").unwrap();
    let mut c = cluster.connect("race");
    c.batch_execute("CREATE EXTENSION tenancy").unwrap();
    setup(&mut c);
    let wss: Vec<String> = (0..4)
        .map(|i| format!("{i:08x}-0000-4000-8000-000000000000"))
        .collect();
    for ws in &wss {
        c.execute(
            "INSERT INTO \"Segment\" (\"workspaceId\", name, version) VALUES ($1::text::uuid, 'v', 0)",
            &[ws],
        )
        .unwrap();
    }
    let port = cluster.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // committed[w] = highest version whose commit returned to its writer
    let committed: std::sync::Arc<Vec<std::sync::atomic::AtomicI64>> = std::sync::Arc::new(
        (0..4)
            .map(|_| std::sync::atomic::AtomicI64::new(0))
            .collect(),
    );
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let (stop, committed, wss) = (stop.clone(), committed.clone(), wss.clone());
            std::thread::spawn(move || {
                let mut w = Client::connect(&format!("host=127.0.0.1 port={port} user=postgres dbname=race"), NoTls).unwrap();
                let mut i = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let k = (i * 7 + t) % wss.len();
                    let v: i32 = w
                        .query_one(
                            "UPDATE \"Segment\" SET version = version + 1 WHERE \"workspaceId\" = $1::text::uuid RETURNING version",
                            &[&wss[k]],
                        )
                        .unwrap()
                        .get(0);
                    committed[k].fetch_max(v as i64, std::sync::atomic::Ordering::SeqCst);
                    i += 1;
                }
            })
        })
        .collect();
    let mut checks = 0;
    let mut stale = 0;
    let mut hits = 0;
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, committed, wss) = (stop.clone(), committed.clone(), wss.clone());
            std::thread::spawn(move || {
                let mut r = Client::connect(&format!("host=127.0.0.1 port={port} user=postgres dbname=race"), NoTls).unwrap();
                let mut cache: Vec<Option<(i64, i64)>> = vec![None; wss.len()];
                let (mut checks, mut stale, mut hits) = (0, 0, 0);
                let mut i = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let k = i % wss.len();
                    i += 1;
                    // what had certainly committed before we look
                    let floor = committed[k].load(std::sync::atomic::Ordering::SeqCst);
                    let s = stamp(&mut r, &wss[k]);
                    let version = match cache[k] {
                        Some((cs, v)) if cs == s => {
                            hits += 1;
                            v
                        }
                        _ => {
                            let v: i32 = r
                                .query_one("SELECT version FROM \"Segment\" WHERE \"workspaceId\" = $1::text::uuid", &[&wss[k]])
                                .unwrap()
                                .get(0);
                            cache[k] = Some((s, v as i64));
                            v as i64
                        }
                    };
                    checks += 1;
                    if version < floor {
                        stale += 1;
                    }
                }
                (checks, stale, hits)
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(8));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    for r in readers {
        let (c, s, h) = r.join().unwrap();
        checks += c;
        stale += s;
        hits += h;
    }
    assert!(checks > 2000, "{checks} checks");
    assert!(hits > 0, "the cache was used ({hits} hits of {checks})");
    assert_eq!(
        stale, 0,
        "{stale} stale reads of {checks} checks ({hits} from the cache)"
    );
}

/// With tenancy.change_channel set, a committed transaction sends one NOTIFY per (table,
/// workspace) it changed, however many rows; a rolled-back one sends none; a session cannot turn
/// it off; a channel NOTIFY would refuse is refused when set.
#[test]
fn one_notify_per_table_and_workspace_at_commit() {
    let cluster = Cluster::start("it-stamps-notify", 25479, &[]);
    let mut c = cluster.connect("postgres");
    c.batch_execute("CREATE DATABASE nt").unwrap();
    let mut c = cluster.connect("nt");
    c.batch_execute(
        "CREATE EXTENSION tenancy;
         CREATE TABLE \"Segment\" (id serial PRIMARY KEY, \"workspaceId\" uuid NOT NULL, name text);
         CREATE TABLE \"Journey\" (id serial PRIMARY KEY, \"workspaceId\" uuid NOT NULL, name text);
         SELECT tenancy.track_changes('\"Segment\"'), tenancy.track_changes('\"Journey\"');
         ALTER DATABASE nt SET tenancy.change_channel = 'tenancy_changes';",
    )
    .unwrap();
    let err = c
        .batch_execute(&format!(
            "ALTER DATABASE nt SET tenancy.change_channel = '{}'",
            "x".repeat(70)
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&err), "22023", "{err}");
    let mut listener = cluster.connect("nt");
    listener.batch_execute("LISTEN tenancy_changes").unwrap();
    let mut w = cluster.connect("nt");
    let shown: String = w
        .query_one("SHOW tenancy.change_channel", &[])
        .unwrap()
        .get(0);
    assert_eq!(shown, "tenancy_changes");
    w.batch_execute(&format!(
        "BEGIN;
         INSERT INTO \"Segment\" (\"workspaceId\", name) SELECT '{A}', 's' || g FROM generate_series(1, 50) g;
         INSERT INTO \"Segment\" (\"workspaceId\", name) SELECT '{B}', 's' || g FROM generate_series(1, 50) g;
         UPDATE \"Segment\" SET name = name || '!' WHERE \"workspaceId\" = '{A}';
         INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ('{A}', 'j');
         COMMIT;
         BEGIN; INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ('{B}', 'rolled back'); ROLLBACK;"
    ))
    .unwrap();
    let mut got = Vec::new();
    {
        let mut n = listener.notifications();
        let mut it = n.timeout_iter(std::time::Duration::from_secs(3));
        while let Some(note) = it.next().unwrap() {
            assert_eq!(note.channel(), "tenancy_changes");
            got.push(note.payload().to_string());
        }
    }
    got.sort();
    let expected = vec![
        format!(r#"{{"table":"public.\"Journey\"","workspace":"{A}"}}"#),
        format!(r#"{{"table":"public.\"Segment\"","workspace":"{A}"}}"#),
        format!(r#"{{"table":"public.\"Segment\"","workspace":"{B}"}}"#),
    ];
    assert_eq!(
        got, expected,
        "one per (table, workspace), none for the rollback"
    );
    // TRUNCATE: workspace null
    w.batch_execute("TRUNCATE \"Journey\"").unwrap();
    let mut n = listener.notifications();
    let mut it = n.timeout_iter(std::time::Duration::from_secs(3));
    let note = it.next().unwrap().expect("a notification for TRUNCATE");
    assert_eq!(
        note.payload(),
        r#"{"table":"public.\"Journey\"","workspace":null}"#
    );
    // an application role cannot silence it
    c.batch_execute("CREATE ROLE notify_app LOGIN").unwrap();
    let mut app = Client::connect(
        &format!(
            "host=127.0.0.1 port={} user=notify_app dbname=nt",
            cluster.port
        ),
        NoTls,
    )
    .unwrap();
    let err = app
        .batch_execute("SET tenancy.change_channel = ''")
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
}
