//! Noisy-neighbour load for `bench/admission.sh`: workspace A runs `--heavy` clients of a
//! CPU-heavy aggregation, workspace B `--light` clients of primary-key lookups, all through the
//! same pgbouncer pool (transaction pooling, simple protocol, one database user), for
//! `--seconds`. Each request is one transaction that sets the context with
//! `tenancy.set_workspace(ws, true)`. A client of A refused by admission control (53000)
//! backs off 20 ms and retries, as an application mapping 53000 to 429 would.
//! Prints one line: `b_p50_ms b_p95_ms b_requests b_errors a_done a_refused`.
//!
//! noisy HOST PORT DB USER A_WS B_WS HEAVY LIGHT SECONDS [B_IDS_FILE]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 10 {
        eprintln!("usage: noisy HOST PORT DB USER A_WS B_WS HEAVY LIGHT SECONDS");
        std::process::exit(2);
    }
    let conn = format!(
        "host={} port={} dbname={} user={} connect_timeout=30",
        args[1], args[2], args[3], args[4]
    );
    let (a, b) = (args[5].clone(), args[6].clone());
    let heavy: usize = args[7].parse().unwrap();
    let light: usize = args[8].parse().unwrap();
    let seconds: u64 = args[9].parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (a_done, a_refused, b_errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));

    let mut threads = Vec::new();
    for _ in 0..heavy {
        let (conn, a, stop, done, refused) = (
            conn.clone(),
            a.clone(),
            stop.clone(),
            a_done.clone(),
            a_refused.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect(&conn, NoTls).expect("connect A");
            while !stop.load(Relaxed) {
                let r = c.batch_execute(&format!(
                    "BEGIN; SELECT tenancy.set_workspace('{a}', true);
                     SELECT count(*), sum(length(definition::text)), max(name) FROM \"Segment\" WHERE \"workspaceId\" = '{a}'; COMMIT"
                ));
                match r {
                    Ok(()) => {
                        done.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        let _ = c.batch_execute("ROLLBACK");
                        if e.code().map(|c| c.code()) == Some("53000") {
                            refused.fetch_add(1, Relaxed);
                            std::thread::sleep(Duration::from_millis(20));
                        } else {
                            panic!("A: {e}");
                        }
                    }
                }
            }
        }));
    }
    for t in 0..light {
        let (conn, b, stop, errors, latencies) = (
            conn.clone(),
            b.clone(),
            stop.clone(),
            b_errors.clone(),
            latencies.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect(&conn, NoTls).expect("connect B");
            let ids: Vec<String> = c
                .simple_query(&format!("BEGIN; SELECT tenancy.set_workspace('{b}', true); SELECT id FROM \"Segment\" WHERE \"workspaceId\" = '{b}' LIMIT 200; COMMIT"))
                .unwrap()
                .into_iter()
                .filter_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .collect();
            let mut mine = Vec::new();
            let mut i = t;
            while !stop.load(Relaxed) {
                let id = &ids[i % ids.len()];
                i += 7;
                let start = Instant::now();
                let r = c.batch_execute(&format!(
                    "BEGIN; SELECT tenancy.set_workspace('{b}', true); SELECT * FROM \"Segment\" WHERE id = '{id}'; COMMIT"
                ));
                match r {
                    Ok(()) => mine.push(start.elapsed().as_secs_f64() * 1000.0),
                    Err(_) => {
                        errors.fetch_add(1, Relaxed);
                        let _ = c.batch_execute("ROLLBACK");
                    }
                }
            }
            latencies.lock().unwrap().extend(mine);
        }));
    }
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let mut l = latencies.lock().unwrap().clone();
    l.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let pct = |p: f64| {
        if l.is_empty() {
            f64::NAN
        } else {
            l[((l.len() as f64 - 1.0) * p).round() as usize]
        }
    };
    println!(
        "{:.3} {:.3} {} {} {} {}",
        pct(0.50),
        pct(0.95),
        l.len(),
        b_errors.load(Relaxed),
        a_done.load(Relaxed),
        a_refused.load(Relaxed)
    );
}
