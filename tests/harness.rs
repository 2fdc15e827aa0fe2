//! Shared helpers for the out-of-process tests: they drive a real PostgreSQL 15 cluster started
//! by `scripts/test.sh` (see `scripts/cluster.sh`) over real connections.
//!
//! Environment (set by scripts/test.sh):
//! - `TENANCY_TEST_PORT`: the cluster's port on 127.0.0.1;
//! - `TENANCY_TEST_TEMPLATE`: a database holding the extension and the Dittofeed fixture,
//!   which each test clones into a database of its own, so tests never see each other's rows.

use std::sync::atomic::{AtomicUsize, Ordering};

pub use postgres::{Client, NoTls};

pub fn port() -> u16 {
    std::env::var("TENANCY_TEST_PORT")
        .expect("TENANCY_TEST_PORT is not set: run these tests through `make test` (scripts/test.sh)")
        .parse()
        .expect("TENANCY_TEST_PORT must be a port number")
}

pub fn template() -> String {
    std::env::var("TENANCY_TEST_TEMPLATE").unwrap_or_else(|_| "tenancy_fixture".into())
}

pub fn connect_as(db: &str, user: &str) -> Client {
    let conn = format!("host=127.0.0.1 port={} user={user} dbname={db}", port());
    Client::connect(&conn, NoTls).unwrap_or_else(|e| panic!("connect {conn}: {e}"))
}

pub fn connect(db: &str) -> Client {
    connect_as(db, "postgres")
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh database cloned from the fixture template, named after the test.
pub fn fresh_db(test: &str) -> String {
    let name = format!("t_{}_{}_{}", test, std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
    let mut admin = connect("postgres");
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).unwrap();
    // CREATE DATABASE ... TEMPLATE fails while another session is copying the same template;
    // retry briefly rather than serialising all tests.
    for attempt in 0.. {
        match admin.batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {}", template())) {
            Ok(()) => break,
            Err(e) if attempt < 50 && e.to_string().contains("is being accessed by other users") => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("create database {name}: {e}"),
        }
    }
    name
}

/// SQLSTATE and message of a failed statement.
pub fn sqlstate(err: &postgres::Error) -> String {
    err.as_db_error()
        .map(|e| e.code().code().to_string())
        .unwrap_or_else(|| panic!("not a database error: {err}"))
}

/// A fixture workspace id, as `fixture.ws_id(kind, n)` computes it.
pub fn ws_id(client: &mut Client, kind: &str, n: i32) -> String {
    client.query_one("SELECT fixture.ws_id($1, $2)::text", &[&kind, &n]).unwrap().get(0)
}

/// Create (once per cluster, race-free) a non-superuser, non-owner login role, and let it use
/// this database's fixture tables.
pub fn app_role(client: &mut Client, role: &str) {
    client
        .batch_execute(&format!(
            "DO $$ BEGIN
                 CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN
                 NULL; -- roles are per cluster: a test running in parallel made it first
             END $$;
             GRANT USAGE ON SCHEMA fixture TO {role};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};"
        ))
        .unwrap();
}

/// A scratch cluster of a test's own (eviction, no preload, crash), started with
/// `scripts/cluster.sh` and stopped when dropped.
pub struct Cluster {
    pub name: String,
    pub port: u16,
}

fn cluster_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
}

impl Cluster {
    /// `extra`: options of `cluster.sh start` (`--no-preload`, `--conf 'k = v'`).
    pub fn start(name: &str, port: u16, extra: &[&str]) -> Cluster {
        let status = std::process::Command::new("bash")
            .arg(cluster_script())
            .args(["start", name, &port.to_string(), "--fresh"])
            .args(extra)
            .status()
            .expect("run scripts/cluster.sh");
        assert!(status.success(), "cluster {name} did not start");
        Cluster { name: name.to_string(), port }
    }

    pub fn connect(&self, db: &str) -> Client {
        let conn = format!("host=127.0.0.1 port={} user=postgres dbname={db}", self.port);
        Client::connect(&conn, NoTls).unwrap_or_else(|e| panic!("connect {conn}: {e}"))
    }

    /// A database with the extension and the Dittofeed fixture (2 parents x 2 children,
    /// 3 roots, 5 rows per table).
    pub fn fixture_db(&self, db: &str) -> Client {
        let mut admin = self.connect("postgres");
        admin.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
        let mut c = self.connect(db);
        c.batch_execute("CREATE EXTENSION tenancy").unwrap();
        c.batch_execute(include_str!("../fixture/dittofeed.sql")).unwrap();
        c.batch_execute(include_str!("../fixture/generate.sql")).unwrap();
        c.batch_execute("SELECT fixture.generate(2, 2, 3, 5)").unwrap();
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(cluster_script())
            .args(["stop", &self.name])
            .status();
    }
}

/// A random uuid (from the server), for workspaces no other test uses.
pub fn random_ws(client: &mut Client) -> String {
    client.query_one("SELECT gen_random_uuid()::text", &[]).unwrap().get(0)
}

impl Cluster {
    fn script(&self, args: &[&str]) {
        let status = std::process::Command::new("bash")
            .arg(cluster_script())
            .args(args)
            .status()
            .expect("run scripts/cluster.sh");
        assert!(status.success(), "cluster.sh {args:?} failed");
    }

    /// Clean restart (`pg_ctl restart -m fast`).
    pub fn restart(&self) {
        self.script(&["restart", &self.name]);
    }

    pub fn stop(&self) {
        self.script(&["stop", &self.name]);
    }

    /// Start again, keeping the data folder.
    pub fn start_again(&self, extra: &[&str]) {
        let port = self.port.to_string();
        let mut args = vec!["start", self.name.as_str(), port.as_str()];
        args.extend_from_slice(extra);
        self.script(&args);
    }

    /// The cluster's folder (data in `data/`, log in `server.log`).
    pub fn dir(&self) -> std::path::PathBuf {
        let out = std::process::Command::new("bash")
            .arg(cluster_script())
            .args(["dir", &self.name])
            .output()
            .expect("run scripts/cluster.sh");
        std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    }
}
