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

/// Create (once per database) a non-superuser, non-owner login role that can read the fixture.
pub fn app_role(client: &mut Client, role: &str) {
    client
        .batch_execute(&format!(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                     CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS;
                 END IF;
             END $$;
             GRANT USAGE ON SCHEMA fixture TO {role};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};"
        ))
        .unwrap();
}
