//! Quotas over real connections: no overshoot under concurrency, cache invalidation across
//! sessions, and a randomized workload after which every counter equals count(*).

use std::sync::{Arc, Barrier};
use tenancy_it::*;

/// A test database: on the suite's cluster (tenancy preloaded: counters in shared memory), or on
/// a cluster of the test's own started without preloading (counters in tenancy.quota_counter).
#[derive(Clone)]
struct Db {
    port: u16,
    name: String,
}

impl Db {
    /// A fresh fixture database on the suite's cluster.
    fn fresh(test: &str) -> Db {
        Db {
            port: port(),
            name: fresh_db(test),
        }
    }

    /// A fresh fixture database on `cluster`.
    fn on(cluster: &Cluster, name: &str) -> Db {
        cluster.fixture_db(name);
        Db {
            port: cluster.port,
            name: name.to_string(),
        }
    }

    fn connect(&self) -> Client {
        let conn = format!(
            "host=127.0.0.1 port={} user=postgres dbname={}",
            self.port, self.name
        );
        Client::connect(&conn, NoTls).unwrap_or_else(|e| panic!("connect {conn}: {e}"))
    }
}

const DECLARATIVE: &str = "\"resourceType\" = ''Declarative''";

fn enforce_all(c: &mut Client) {
    c.batch_execute(&format!(
        "SELECT tenancy.enforce_quota('\"Segment\"', counted_when => '{DECLARATIVE}');
         SELECT tenancy.enforce_quota('\"Journey\"');
         SELECT tenancy.enforce_quota('\"MessageTemplate\"', counted_when => '{DECLARATIVE}');"
    ))
    .unwrap();
}

fn used(c: &mut Client, table: &str, ws: &str) -> i64 {
    c.query_one(
        "SELECT COALESCE((SELECT used FROM tenancy.quota_counters($1::text::regclass) WHERE workspace_id = $2::text::uuid), 0)",
        &[&table, &ws],
    )
    .unwrap()
    .get(0)
}

fn declarative_segments(c: &mut Client, ws: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM \"Segment\" WHERE \"workspaceId\" = $1::text::uuid AND \"resourceType\" = 'Declarative'",
        &[&ws],
    )
    .unwrap()
    .get(0)
}

fn drift(c: &mut Client) -> Vec<String> {
    c.query("SELECT format('%s %s counted=%s actual=%s', table_name, workspace_id, counted, actual) FROM tenancy.quota_drift()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// 16 sessions insert into one workspace that has room for exactly 40 more rows: exactly 40
/// inserts succeed, every other one fails with 53400, and the final count equals the limit.
fn hammer_at_limit(db: &Db, isolation: &'static str) {
    let mut admin = db.connect();
    enforce_all(&mut admin);
    let ws = ws_id(&mut admin, "root", 1);
    let before = declarative_segments(&mut admin, &ws);
    let limit = before + 40;
    admin
        .execute(
            "SELECT tenancy.set_quota('\"Segment\"', $1, $2::text::uuid)",
            &[&limit, &ws],
        )
        .unwrap();

    let sessions = 16;
    let barrier = Arc::new(Barrier::new(sessions));
    let handles: Vec<_> = (0..sessions)
        .map(|s| {
            let (db, ws, barrier) = (db.clone(), ws.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut c = db.connect();
                barrier.wait();
                let (mut ok, mut over, mut retry) = (0, 0, 0);
                for i in 0..10 {
                    let r = c.batch_execute(&format!(
                        "BEGIN ISOLATION LEVEL {isolation};
                         INSERT INTO \"Segment\" (\"workspaceId\", name, definition) VALUES ('{ws}', 'hammer-{s}-{i}', '{{}}');
                         COMMIT;"
                    ));
                    match r {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            c.batch_execute("ROLLBACK").unwrap();
                            match sqlstate(&e).as_str() {
                                "53400" => over += 1,
                                "40001" if isolation != "READ COMMITTED" => retry += 1,
                                other => panic!("session {s}: unexpected {other}: {e}"),
                            }
                        }
                    }
                }
                (ok, over, retry)
            })
        })
        .collect();
    let (mut ok, mut over, mut retry) = (0, 0, 0);
    for h in handles {
        let (a, b, c) = h.join().unwrap();
        ok += a;
        over += b;
        retry += c;
    }
    let after = declarative_segments(&mut admin, &ws);
    assert!(
        after <= limit,
        "overshoot under {isolation}: {after} rows for a limit of {limit}"
    );
    if isolation == "READ COMMITTED" {
        assert_eq!(ok, 40, "successes (over={over})");
        assert_eq!(after, limit);
    } else {
        assert_eq!(ok + over + retry, 160);
        assert!(ok <= 40);
        assert_eq!(after, before + ok as i64);
    }
    assert_eq!(
        used(&mut admin, "\"Segment\"", &ws),
        after,
        "counter = count(*)"
    );
    assert!(drift(&mut admin).is_empty(), "{:?}", drift(&mut admin));
}

fn hammer_db(isolation: &str) -> Db {
    Db::fresh(&format!(
        "quota_hammer_{}",
        isolation.replace(' ', "_").to_lowercase()
    ))
}

#[test]
fn sixteen_sessions_at_the_limit_read_committed() {
    hammer_at_limit(&hammer_db("READ COMMITTED"), "READ COMMITTED");
}

#[test]
fn sixteen_sessions_at_the_limit_repeatable_read() {
    hammer_at_limit(&hammer_db("REPEATABLE READ"), "REPEATABLE READ");
}

#[test]
fn sixteen_sessions_at_the_limit_serializable() {
    hammer_at_limit(&hammer_db("SERIALIZABLE"), "SERIALIZABLE");
}

/// The same contract without shared_preload_libraries: counters are rows of
/// tenancy.quota_counter (the table path). One cluster of its own for all of it.
#[test]
fn table_path_without_preload() {
    let cluster = Cluster::start("it-quota-nopreload", 25449, &["--no-preload"]);
    for (i, isolation) in ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]
        .into_iter()
        .enumerate()
    {
        let db = Db::on(&cluster, &format!("hammer_{i}"));
        let shared: bool = db
            .connect()
            .query_one("SELECT tenancy._quota_shared()", &[])
            .unwrap()
            .get(0);
        assert!(!shared, "a cluster without preload must use the table path");
        hammer_at_limit(&db, isolation);
    }
    multi_workspace_statements(&Db::on(&cluster, "deadlock"));
    randomized_workload(&Db::on(&cluster, "random"));
}

/// Multi-row statements spanning several workspaces in opposite orders never deadlock:
/// counters are locked in workspace order.
#[test]
fn multi_workspace_statements_do_not_deadlock() {
    multi_workspace_statements(&Db::fresh("quota_deadlock"));
}

fn multi_workspace_statements(db: &Db) {
    let mut admin = db.connect();
    enforce_all(&mut admin);
    let wss: Vec<String> = (1..=3).map(|n| ws_id(&mut admin, "root", n)).collect();
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let (db, mut wss, barrier) = (db.clone(), wss.clone(), barrier.clone());
            std::thread::spawn(move || {
                if t % 2 == 1 {
                    wss.reverse();
                }
                let mut c = db.connect();
                barrier.wait();
                for i in 0..25 {
                    let values: Vec<String> = wss
                        .iter()
                        .map(|w| format!("('{w}', 'dl-{t}-{i}-{}', '{{}}')", &w[..8]))
                        .collect();
                    c.batch_execute(&format!(
                        "BEGIN; INSERT INTO \"Segment\" (\"workspaceId\", name, definition) VALUES {}; \
                         SELECT pg_sleep(0.001); COMMIT;",
                        values.join(", ")
                    ))
                    .unwrap_or_else(|e| panic!("thread {t}: {e}"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(drift(&mut admin).is_empty());
}

/// A limit cached by one session is replaced when another session changes it.
#[test]
fn limit_cache_follows_changes_from_another_session() {
    let db = fresh_db("quota_cache");
    let mut admin = connect(&db);
    enforce_all(&mut admin);
    let ws = ws_id(&mut admin, "root", 2);
    admin
        .execute("SELECT tenancy.set_quota('\"Journey\"', 1000)", &[])
        .unwrap();

    let mut app = connect(&db);
    let ins = |c: &mut Client, name: &str| {
        c.execute(
            "INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ($1::text::uuid, $2)",
            &[&ws, &name],
        )
    };
    ins(&mut app, "j-1").unwrap(); // the limit (1000) is now cached in app's backend

    // another session lowers the default to the current usage
    let now = used(&mut admin, "\"Journey\"", &ws);
    admin
        .execute("SELECT tenancy.set_quota('\"Journey\"', $1)", &[&now])
        .unwrap();
    let err = ins(&mut app, "j-2").unwrap_err();
    assert_eq!(sqlstate(&err), "53400", "{err}");

    // a workspace override raises it again
    admin
        .execute(
            "SELECT tenancy.set_quota('\"Journey\"', $1, $2::text::uuid)",
            &[&(now + 1), &ws],
        )
        .unwrap();
    ins(&mut app, "j-2").unwrap();
    let err = ins(&mut app, "j-3").unwrap_err();
    assert_eq!(sqlstate(&err), "53400");

    // a direct write of the limit table (not through set_quota) is seen as well
    admin
        .execute(
            "UPDATE tenancy.quota_limit SET max_rows = NULL WHERE workspace_id = $1::text::uuid",
            &[&ws],
        )
        .unwrap();
    ins(&mut app, "j-3").unwrap();
    assert!(drift(&mut admin).is_empty());
}

/// Tiny deterministic PRNG (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Inserts, upserts, COPY, deletes, moves, counted_when flips, rollbacks, savepoints and
/// workspace cascades over several workspaces and tables, from 6 sessions at once; limits
/// make some statements fail. Afterwards every counter equals count(*).
#[test]
fn randomized_workload_never_drifts() {
    randomized_workload(&Db::fresh("quota_random"));
}

fn randomized_workload(db: &Db) {
    let mut admin = db.connect();
    enforce_all(&mut admin);
    admin
        .batch_execute(
            "SELECT tenancy.set_quota('\"Segment\"', 40);
             SELECT tenancy.set_quota('\"Journey\"', 35);
             SELECT tenancy.set_quota('\"MessageTemplate\"', 30);
             SELECT fixture.create_workspace(fixture.ws_id('victim', n), 'Victim ' || n) FROM generate_series(1, 6) n;",
        )
        .unwrap();
    let mut wss: Vec<String> = (1..=3).map(|n| ws_id(&mut admin, "root", n)).collect();
    wss.extend((1..=2).map(|n| ws_id(&mut admin, "child", 1000 + n)));
    let victims: Vec<String> = (1..=6).map(|n| ws_id(&mut admin, "victim", n)).collect();

    let handles: Vec<_> = (0..6u64)
        .map(|t| {
            let (db, wss, victims) = (db.clone(), wss.clone(), victims.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t + 1) * 0x1000_0001);
                let mut c = db.connect();
                let tables = ["Segment", "Journey", "MessageTemplate"];
                let mut errors = std::collections::BTreeMap::<String, u32>::new();
                for i in 0..150 {
                    let table = tables[rng.below(3) as usize];
                    let ws = &wss[rng.below(wss.len() as u64) as usize];
                    let other = &wss[rng.below(wss.len() as u64) as usize];
                    let kind = if rng.below(4) == 0 { "Internal" } else { "Declarative" };
                    let name = format!("r-{t}-{i}");
                    let def = if table == "Journey" { "" } else { ", definition" };
                    let defv = if table == "Journey" { "" } else { ", '{}'" };
                    let rt = if table == "Journey" { String::new() } else { format!(", \"resourceType\"") };
                    let rtv = if table == "Journey" { String::new() } else { format!(", '{kind}'") };
                    let sql = match rng.below(11) {
                        0 | 1 => format!("INSERT INTO \"{table}\" (\"workspaceId\", name{def}{rt}) VALUES ('{ws}', '{name}'{defv}{rtv})"),
                        2 => format!(
                            "INSERT INTO \"{table}\" (\"workspaceId\", name{def}{rt})
                             SELECT '{ws}', '{name}-' || g{defv}{rtv} FROM generate_series(1, {}) g",
                            1 + rng.below(6)
                        ),
                        3 => format!(
                            "INSERT INTO \"{table}\" (\"workspaceId\", name{def}{rt}) VALUES ('{ws}', 'r-{}-{}'{defv}{rtv}) ON CONFLICT DO NOTHING",
                            rng.below(6), rng.below(150)
                        ),
                        4 => format!(
                            "INSERT INTO \"{table}\" (\"workspaceId\", name{def}{rt}) VALUES ('{ws}', 'r-{}-{}'{defv}{rtv})
                             ON CONFLICT (\"workspaceId\", name) DO UPDATE SET \"updatedAt\" = now()",
                            rng.below(6), rng.below(150)
                        ),
                        5 => format!(
                            "DELETE FROM \"{table}\" WHERE ctid IN (SELECT ctid FROM \"{table}\" WHERE \"workspaceId\" = '{ws}' ORDER BY random() LIMIT {})",
                            1 + rng.below(4)
                        ),
                        6 => format!(
                            "UPDATE \"{table}\" SET \"workspaceId\" = '{other}', name = name || '-moved-{t}-{i}'
                              WHERE ctid IN (SELECT ctid FROM \"{table}\" WHERE \"workspaceId\" = '{ws}' ORDER BY random() LIMIT {})",
                            1 + rng.below(3)
                        ),
                        7 if table != "Journey" => format!(
                            "UPDATE \"{table}\" SET \"resourceType\" = CASE WHEN \"resourceType\" = 'Internal' THEN 'Declarative' ELSE 'Internal' END::\"DBResourceType\"
                              WHERE ctid IN (SELECT ctid FROM \"{table}\" WHERE \"workspaceId\" = '{ws}' ORDER BY random() LIMIT 2)"
                        ),
                        8 => format!(
                            "BEGIN; INSERT INTO \"{table}\" (\"workspaceId\", name{def}{rt}) VALUES ('{ws}', '{name}-rb'{defv}{rtv});
                             DELETE FROM \"{table}\" WHERE ctid IN (SELECT ctid FROM \"{table}\" WHERE \"workspaceId\" = '{other}' LIMIT 1);
                             ROLLBACK"
                        ),
                        9 => format!(
                            "BEGIN; INSERT INTO \"{table}\" (\"workspaceId\", name{def}{rt}) VALUES ('{ws}', '{name}-sp1'{defv}{rtv});
                             SAVEPOINT s; INSERT INTO \"{table}\" (\"workspaceId\", name{def}{rt}) VALUES ('{other}', '{name}-sp2'{defv}{rtv});
                             ROLLBACK TO SAVEPOINT s; COMMIT"
                        ),
                        _ => {
                            // COPY a few rows, or cascade-delete a victim workspace (each once)
                            if rng.below(3) == 0 && t < victims.len() as u64 && i == 100 {
                                format!("DELETE FROM \"Workspace\" WHERE id = '{}'", victims[t as usize])
                            } else {
                                let n = 1 + rng.below(5);
                                let mut w = c
                                    .copy_in(&format!("COPY \"{table}\" (\"workspaceId\", name{def}) FROM STDIN"))
                                    .unwrap();
                                use std::io::Write;
                                for k in 0..n {
                                    let extra = if table == "Journey" { "" } else { "\t{}" };
                                    writeln!(w, "{ws}\t{name}-copy-{k}{extra}").unwrap();
                                }
                                match w.finish() {
                                    Ok(_) => {}
                                    Err(e) => *errors.entry(sqlstate(&e)).or_default() += 1,
                                }
                                continue;
                            }
                        }
                    };
                    if let Err(e) = c.batch_execute(&sql) {
                        let code = sqlstate(&e);
                        let _ = c.batch_execute("ROLLBACK");
                        // expected: quota hits, name collisions, the RESTRICT of Broadcast,
                        // deadlocks between tables (PostgreSQL resolves them)
                        assert!(
                            ["53400", "23505", "23503", "40P01"].contains(&code.as_str()),
                            "thread {t} step {i}: {code} {e}\n{sql}"
                        );
                        *errors.entry(code).or_default() += 1;
                    }
                }
                errors
            })
        })
        .collect();
    let mut all = std::collections::BTreeMap::<String, u32>::new();
    for h in handles {
        for (k, v) in h.join().unwrap() {
            *all.entry(k).or_default() += v;
        }
    }
    eprintln!("errors by SQLSTATE: {all:?}");
    assert!(
        all.get("53400").copied().unwrap_or(0) > 0,
        "the workload never reached a limit: {all:?}"
    );
    let d = drift(&mut admin);
    assert!(d.is_empty(), "counters drifted: {d:?}");
    // and the counters are non-negative and no workspace is above its limit except by lowering
    let neg: i64 = admin
        .query_one(
            "SELECT count(*) FROM tenancy.quota_counters() WHERE used < 0",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(neg, 0);
    // the counters compared above exist (in shared memory they appear on first write)
    let counters: i64 = admin
        .query_one(
            "SELECT count(*) FROM tenancy.quota_counters() WHERE in_flight = 0",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(counters >= 10, "only {counters} counters to compare");
    let over: i64 = admin
        .query_one(
            "SELECT count(*) FROM tenancy.quota_usage WHERE used > max_rows",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(over, 0, "a workspace went over its limit");
}

fn insert_q(c: &mut Client, ws: &str, n: i64) -> Result<u64, postgres::Error> {
    c.execute(
        "INSERT INTO q SELECT $1::text::uuid FROM generate_series(1, $2::bigint)",
        &[&ws, &n],
    )
}

fn count_q(c: &mut Client, ws: &str) -> i64 {
    c.query_one("SELECT count(*) FROM q WHERE ws = $1::text::uuid", &[&ws])
        .unwrap()
        .get(0)
}

fn reconnect(db: &Db) -> Client {
    (0..150)
        .find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let conn = format!(
                "host=127.0.0.1 port={} user=postgres dbname={}",
                db.port, db.name
            );
            Client::connect(&conn, NoTls).ok()
        })
        .expect("server accepts connections again")
}

/// Shared counters are never saved: after a clean restart, after a crash (kill -9 of a backend
/// holding a reservation) and after evictions they are recounted from the table on first use,
/// and limits stay exact. A server restarted without preload finds tenancy.quota_counter stale
/// and refuses (55000) until enforce_quota() recounts; going back to preload needs nothing.
#[test]
fn shared_counters_recount_after_restart_crash_eviction_and_mode_switch() {
    let cluster = Cluster::start("it-quota-restart", 25450, &[]);
    let db = Db::on(&cluster, "restart");
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE q (ws uuid NOT NULL); SELECT tenancy.enforce_quota('q', 'ws'); SELECT tenancy.set_quota('q', 5);")
        .unwrap();
    let ws = random_ws(&mut c);
    insert_q(&mut c, &ws, 3).unwrap();

    // clean restart: the counter is gone from shared memory and recounted on first use
    cluster.restart();
    let mut c = reconnect(&db);
    let counters: i64 = c
        .query_one("SELECT count(*) FROM tenancy.quota_counters('q')", &[])
        .unwrap()
        .get(0);
    assert_eq!(counters, 0, "shared counters are not saved");
    insert_q(&mut c, &ws, 2).unwrap();
    assert_eq!(sqlstate(&insert_q(&mut c, &ws, 1).unwrap_err()), "53400");
    assert_eq!(count_q(&mut c, &ws), 5);

    // crash while a transaction holds a reservation: it is neither committed nor counted. (The
    // DELETE commits with synchronous_commit on: the scratch cluster runs with it off, and a
    // commit record still in the WAL buffers is lost with the crash, which made this flaky.)
    let mut tx = c.transaction().unwrap();
    tx.batch_execute("SET LOCAL synchronous_commit = on")
        .unwrap();
    tx.execute(
        "DELETE FROM q WHERE ctid IN (SELECT ctid FROM q WHERE ws = $1::text::uuid LIMIT 2)",
        &[&ws],
    )
    .unwrap();
    tx.commit().unwrap();
    let mut victim = db.connect();
    victim.batch_execute("BEGIN").unwrap();
    insert_q(&mut victim, &ws, 2).unwrap();
    assert_eq!(
        sqlstate(&insert_q(&mut c, &ws, 1).unwrap_err()),
        "53400",
        "the reservation holds the room"
    );
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    drop(victim);
    drop(c);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut c = reconnect(&db);
    assert_eq!(count_q(&mut c, &ws), 3);
    insert_q(&mut c, &ws, 2).unwrap();
    assert_eq!(sqlstate(&insert_q(&mut c, &ws, 1).unwrap_err()), "53400");
    assert_eq!(count_q(&mut c, &ws), 5);
    let shared: bool = c
        .query_one(
            "SELECT EXISTS (SELECT FROM tenancy.quota_shared_mark WHERE tbl = 'q'::regclass)",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(shared, "the table is marked as counted in shared memory");

    // without preload: tenancy.quota_counter is stale, so the table path refuses it
    cluster.stop();
    cluster.start_again(&["--no-preload"]);
    let mut c = reconnect(&db);
    let err = insert_q(&mut c, &ws, 1).unwrap_err();
    assert_eq!(sqlstate(&err), "55000", "{err}");
    let hint = err
        .as_db_error()
        .unwrap()
        .hint()
        .unwrap_or_default()
        .to_string();
    assert!(
        hint.contains("tenancy.enforce_quota('q', 'ws')"),
        "hint: {hint}"
    );
    c.batch_execute("SELECT tenancy.enforce_quota('q', 'ws')")
        .unwrap();
    c.batch_execute(
        "CREATE TABLE q2 (ws uuid NOT NULL); SELECT tenancy.enforce_quota('q2', 'ws');",
    )
    .unwrap();
    assert_eq!(sqlstate(&insert_q(&mut c, &ws, 1).unwrap_err()), "53400");
    c.execute(
        "DELETE FROM q WHERE ctid IN (SELECT ctid FROM q WHERE ws = $1::text::uuid LIMIT 1)",
        &[&ws],
    )
    .unwrap();
    insert_q(&mut c, &ws, 1).unwrap();
    assert_eq!(count_q(&mut c, &ws), 5);
    assert!(drift(&mut c).is_empty());

    // back to preload, with room for 100 counters only: 250 workspaces evict most of them
    cluster.stop();
    cluster.start_again(&["--conf", "tenancy.max_quota_entries = 100"]);
    let mut c = reconnect(&db);
    // Both tables were recounted without preload: their first writes now mark them stale. A
    // mark rolled back with a savepoint is inserted again by the next write (even when an outer
    // level of the same transaction had marked another table).
    let marked = |c: &mut Client, t: &str| -> bool {
        c.query_one(
            "SELECT EXISTS (SELECT FROM tenancy.quota_shared_mark WHERE tbl = $1::text::regclass)",
            &[&t],
        )
        .unwrap()
        .get(0)
    };
    assert!(!marked(&mut c, "q") && !marked(&mut c, "q2"));
    let w2 = random_ws(&mut c);
    c.batch_execute(&format!(
        "BEGIN; INSERT INTO q2 VALUES ('{w2}'); SAVEPOINT a; INSERT INTO q VALUES ('{w2}'); ROLLBACK TO SAVEPOINT a; COMMIT;"
    ))
    .unwrap();
    assert!(marked(&mut c, "q2") && !marked(&mut c, "q"));
    insert_q(&mut c, &w2, 1).unwrap();
    assert!(
        marked(&mut c, "q"),
        "the rolled-back mark was not inserted again"
    );
    assert_eq!(sqlstate(&insert_q(&mut c, &ws, 1).unwrap_err()), "53400");
    let others: Vec<String> = (0..250).map(|_| random_ws(&mut c)).collect();
    for w in &others {
        insert_q(&mut c, w, 1).unwrap();
    }
    let counters: i64 = c
        .query_one("SELECT count(*) FROM tenancy.quota_counters('q')", &[])
        .unwrap()
        .get(0);
    assert!(counters <= 101, "{counters} counters for a capacity of 100");
    // the first workspaces' counters were evicted: recounted, still exact
    assert_eq!(sqlstate(&insert_q(&mut c, &ws, 1).unwrap_err()), "53400");
    for w in others.iter().take(20) {
        insert_q(&mut c, w, 4).unwrap();
        assert_eq!(sqlstate(&insert_q(&mut c, w, 1).unwrap_err()), "53400");
        assert_eq!(count_q(&mut c, w), 5);
    }
    assert!(drift(&mut c).is_empty(), "{:?}", drift(&mut c));

    // every counter in flight: one transaction writing more new workspaces than there are
    // counters is refused (53200) instead of growing the table past tenancy.max_quota_entries
    let many: Vec<String> = (0..120).map(|_| random_ws(&mut c)).collect();
    let values = many
        .iter()
        .map(|w| format!("('{w}')"))
        .collect::<Vec<_>>()
        .join(",");
    let err = c
        .batch_execute(&format!("INSERT INTO q VALUES {values}"))
        .unwrap_err();
    assert_eq!(sqlstate(&err), "53200", "{err}");
    let entries: i64 = c
        .query_one("SELECT count(*) FROM tenancy._quota_entries()", &[])
        .unwrap()
        .get(0);
    assert!(entries <= 100, "{entries} counters for a capacity of 100");
    assert!(drift(&mut c).is_empty(), "{:?}", drift(&mut c));
}

/// Settings and limits changed after a REPEATABLE READ transaction took its snapshot are seen by
/// its next write (they are read with a fresh snapshot, never cached from an old one), and a
/// table put under enforcement after that snapshot counts that transaction's rows.
#[test]
fn repeatable_read_sees_limits_and_enforcement_committed_after_its_snapshot() {
    let db = Db::fresh("quota_rr_settings");
    let mut admin = db.connect();
    admin
        .batch_execute("CREATE TABLE q (ws uuid NOT NULL)")
        .unwrap();
    let ws = random_ws(&mut admin);
    let mut rr = db.connect();
    rr.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM q;")
        .unwrap();
    admin
        .batch_execute("SELECT tenancy.enforce_quota('q', 'ws'); SELECT tenancy.set_quota('q', 3);")
        .unwrap();
    insert_q(&mut rr, &ws, 3).unwrap();
    let err = insert_q(&mut rr, &ws, 1).unwrap_err();
    assert_eq!(sqlstate(&err), "53400", "{err}");
    rr.batch_execute("ROLLBACK").unwrap();

    // a limit lowered after the snapshot
    let mut rr = db.connect();
    rr.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM q;")
        .unwrap();
    insert_q(&mut rr, &ws, 1).unwrap(); // the limit (3) is cached now
    admin
        .batch_execute("SELECT tenancy.set_quota('q', 1)")
        .unwrap();
    let err = insert_q(&mut rr, &ws, 1).unwrap_err();
    assert_eq!(sqlstate(&err), "53400", "{err}");
    rr.batch_execute("ROLLBACK").unwrap();
    // and a later transaction of that connection still sees the new limit
    insert_q(&mut rr, &ws, 1).unwrap();
    assert_eq!(sqlstate(&insert_q(&mut rr, &ws, 1).unwrap_err()), "53400");
    assert!(drift(&mut admin).is_empty());
}

/// A statement rejected inside a savepoint, rolled back to it, leaves nothing that outlives the
/// savepoint: another session's TRUNCATE meanwhile resets the counter (before, the entry stayed
/// held by the open transaction and kept its old count).
#[test]
fn savepoint_rollback_lets_go_of_the_counter() {
    let db = Db::fresh("quota_savepoint");
    let mut admin = db.connect();
    admin
        .batch_execute("CREATE TABLE q (ws uuid NOT NULL); SELECT tenancy.enforce_quota('q', 'ws'); SELECT tenancy.set_quota('q', 3);")
        .unwrap();
    let ws = random_ws(&mut admin);
    insert_q(&mut admin, &ws, 3).unwrap();
    let mut t1 = db.connect();
    t1.batch_execute("BEGIN; SAVEPOINT s;").unwrap();
    assert_eq!(sqlstate(&insert_q(&mut t1, &ws, 1).unwrap_err()), "53400");
    t1.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    let held: i64 = admin
        .query_one(
            "SELECT COALESCE(sum(in_flight), 0)::bigint FROM tenancy.quota_counters('q')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(held, 0, "the rolled-back savepoint still holds the counter");
    admin.batch_execute("TRUNCATE q").unwrap();
    t1.batch_execute("COMMIT").unwrap();
    insert_q(&mut admin, &ws, 3).unwrap();
    assert_eq!(
        sqlstate(&insert_q(&mut admin, &ws, 1).unwrap_err()),
        "53400"
    );
    assert_eq!(count_q(&mut admin, &ws), 3);
    assert!(drift(&mut admin).is_empty());
}

/// A connection that writes many enforced tables keeps a bounded cache: the compiled
/// counted_when readers and kept plans of the least recently written tables are dropped (and
/// rebuilt when written again), so backend memory stops growing with the number of tables.
#[test]
fn per_connection_quota_caches_stay_bounded() {
    let db = Db::fresh("quota_memory");
    let mut admin = db.connect();
    admin
        .batch_execute(
            "DO $$ BEGIN
                 FOR i IN 1..400 LOOP
                     EXECUTE format('CREATE TABLE m%s (ws uuid NOT NULL, k text)', i);
                     PERFORM tenancy.enforce_quota(format('m%s', i)::regclass, 'ws', 'k = ''a''');
                     PERFORM tenancy.set_quota(format('m%s', i)::regclass, 5);
                 END LOOP;
             END $$",
        )
        .unwrap();
    let mut w = db.connect();
    let ws = random_ws(&mut w);
    let ours = |w: &mut Client| -> (i64, i64) {
        let r = w
            .query_one(
                "SELECT count(*) FILTER (WHERE name = 'tenancy quota deltas'),
                        coalesce(sum(total_bytes), 0)::bigint
                   FROM pg_backend_memory_contexts",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    for i in 1..=200 {
        w.batch_execute(&format!("INSERT INTO m{i} VALUES ('{ws}', 'a')"))
            .unwrap();
    }
    let (readers_200, bytes_200) = ours(&mut w);
    for i in 201..=400 {
        w.batch_execute(&format!("INSERT INTO m{i} VALUES ('{ws}', 'a')"))
            .unwrap();
    }
    let (readers_400, bytes_400) = ours(&mut w);
    println!("compiled readers after 200 / 400 tables: {readers_200} / {readers_400}; backend memory {bytes_200} / {bytes_400} bytes");
    assert!(
        readers_400 <= 128 && readers_400 > 0,
        "{readers_400} compiled readers kept"
    );
    // the relation cache grows with every table touched (PostgreSQL's own); ours must not:
    // 200 more tables may add well under the ~60 kB each an unbounded cache would keep
    assert!(
        bytes_400 - bytes_200 < 200 * 30_000,
        "backend memory grew by {} bytes for 200 tables",
        bytes_400 - bytes_200
    );
    // a table dropped from the cache is still enforced exactly when written again
    for _ in 0..4 {
        w.batch_execute(&format!("INSERT INTO m1 VALUES ('{ws}', 'a')"))
            .unwrap();
    }
    let err = w
        .batch_execute(&format!("INSERT INTO m1 VALUES ('{ws}', 'a')"))
        .unwrap_err();
    assert_eq!(sqlstate(&err), "53400", "{err}");
    assert!(drift(&mut admin).is_empty());
}

/// A hash-partitioned table (issue 19, item 2): 16 sessions of one workspace at its limit, half
/// writing through the partitioned table and half into the workspace's partition directly, with
/// a DETACH and ATTACH of another partition in the middle: the count stops exactly at the limit,
/// and the counter equals count(*) afterwards.
#[test]
fn partitioned_table_at_the_limit_through_parent_and_partition() {
    let db = Db::fresh("quota_partitioned");
    let mut admin = db.connect();
    admin
        .batch_execute(
            "CREATE TABLE events (\"workspaceId\" uuid NOT NULL, n int NOT NULL, kind text NOT NULL DEFAULT 'counted')
                 PARTITION BY HASH (\"workspaceId\");
             CREATE TABLE events_0 PARTITION OF events FOR VALUES WITH (MODULUS 4, REMAINDER 0);
             CREATE TABLE events_1 PARTITION OF events FOR VALUES WITH (MODULUS 4, REMAINDER 1);
             CREATE TABLE events_2 PARTITION OF events FOR VALUES WITH (MODULUS 4, REMAINDER 2);
             CREATE TABLE events_3 PARTITION OF events FOR VALUES WITH (MODULUS 4, REMAINDER 3);
             INSERT INTO events SELECT fixture.ws_id('root', w), g FROM generate_series(1, 3) w, generate_series(1, 10) g;
             SELECT tenancy.enforce_quota('events', counted_when => 'kind = ''counted''');",
        )
        .unwrap();
    let ws = ws_id(&mut admin, "root", 1);
    let part: String = admin
        .query_one(
            "SELECT tableoid::regclass::text FROM events WHERE \"workspaceId\" = $1::text::uuid LIMIT 1",
            &[&ws],
        )
        .unwrap()
        .get(0);
    let other: (String, i32) = admin
        .query_one(
            "SELECT c.relname::text, r FROM generate_series(0, 3) r, pg_class c
              WHERE c.relname = 'events_' || r AND c.relname <> $1 ORDER BY r LIMIT 1",
            &[&part],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    let limit = 10 + 60;
    admin
        .execute(
            "SELECT tenancy.set_quota('events', $1, $2::text::uuid)",
            &[&(limit as i64), &ws],
        )
        .unwrap();
    let sessions = 16;
    let barrier = Arc::new(Barrier::new(sessions + 1));
    let handles: Vec<_> = (0..sessions)
        .map(|s| {
            let (db, ws, barrier) = (db.clone(), ws.clone(), barrier.clone());
            let target = if s % 2 == 0 {
                "events".to_string()
            } else {
                part.clone()
            };
            std::thread::spawn(move || {
                let mut c = db.connect();
                barrier.wait();
                let (mut ok, mut over) = (0, 0);
                for i in 0..10 {
                    match c.execute(
                        &format!("INSERT INTO {target} VALUES ($1::text::uuid, $2)"),
                        &[&ws, &(1000 + s as i32 * 100 + i)],
                    ) {
                        Ok(_) => ok += 1,
                        Err(e) if sqlstate(&e) == "53400" => over += 1,
                        Err(e) => panic!("session {s}: {:?}", e.as_db_error()),
                    }
                }
                (ok, over)
            })
        })
        .collect();
    barrier.wait();
    // another partition goes and comes back meanwhile: its workspaces' counts with it
    admin
        .batch_execute(&format!(
            "ALTER TABLE events DETACH PARTITION {0};
             ALTER TABLE events ATTACH PARTITION {0} FOR VALUES WITH (MODULUS 4, REMAINDER {1});",
            other.0, other.1
        ))
        .unwrap();
    let mut ok = 0;
    for h in handles {
        ok += h.join().unwrap().0;
    }
    let count = |c: &mut Client, w: &str| -> i64 {
        c.query_one(
            "SELECT count(*) FROM events WHERE \"workspaceId\" = $1::text::uuid",
            &[&w],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(ok, 60, "inserts that fitted");
    assert_eq!(count(&mut admin, &ws), limit as i64, "exactly at the limit");
    let err = admin
        .execute("INSERT INTO events VALUES ($1::text::uuid, 1)", &[&ws])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "53400", "{err}");
    assert_eq!(
        used(&mut admin, "events", &ws),
        limit as i64,
        "counter = count(*)"
    );
    assert!(drift(&mut admin).is_empty(), "{:?}", drift(&mut admin));

    // a workspace's partition swapped for an empty table, then back: the counter follows
    let ws2 = ws_id(&mut admin, "root", 2);
    let p2: String = admin
        .query_one(
            "SELECT tableoid::regclass::text FROM events WHERE \"workspaceId\" = $1::text::uuid LIMIT 1",
            &[&ws2],
        )
        .unwrap()
        .get(0);
    let rem: i32 = p2.trim_start_matches("events_").parse().unwrap();
    admin
        .execute(
            "SELECT tenancy.set_quota('events', 10, $1::text::uuid)",
            &[&ws2],
        )
        .unwrap();
    let insert2 =
        |c: &mut Client| c.execute("INSERT INTO events VALUES ($1::text::uuid, 5000)", &[&ws2]);
    assert_eq!(
        sqlstate(&insert2(&mut admin).unwrap_err()),
        "53400",
        "10 rows at a limit of 10"
    );
    admin
        .batch_execute(&format!(
            "ALTER TABLE events DETACH PARTITION {p2};
             CREATE TABLE events_new (LIKE events);
             ALTER TABLE events ATTACH PARTITION events_new FOR VALUES WITH (MODULUS 4, REMAINDER {rem});"
        ))
        .unwrap();
    for i in 0..5 {
        admin
            .execute(
                "INSERT INTO events VALUES ($1::text::uuid, $2)",
                &[&ws2, &(6000 + i)],
            )
            .unwrap_or_else(|e| panic!("insert {i} after the swap: {e}"));
    }
    assert_eq!(used(&mut admin, "events", &ws2), 5);
    admin
        .batch_execute(&format!(
            "ALTER TABLE events DETACH PARTITION events_new;
             ALTER TABLE events ATTACH PARTITION {p2} FOR VALUES WITH (MODULUS 4, REMAINDER {rem});"
        ))
        .unwrap();
    assert_eq!(count(&mut admin, &ws2), 10);
    assert_eq!(
        sqlstate(&insert2(&mut admin).unwrap_err()),
        "53400",
        "the partition's 10 rows are back"
    );
    assert!(drift(&mut admin).is_empty(), "{:?}", drift(&mut admin));
    // rows written into the partition directly count too
    admin
        .execute(
            "SELECT tenancy.set_quota('events', 11, $1::text::uuid)",
            &[&ws2],
        )
        .unwrap();
    admin
        .execute(
            &format!("INSERT INTO {p2} VALUES ($1::text::uuid, 7000)"),
            &[&ws2],
        )
        .unwrap();
    let err = admin
        .execute(
            &format!("INSERT INTO {p2} VALUES ($1::text::uuid, 7001)"),
            &[&ws2],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&err), "53400", "{err}");
}
