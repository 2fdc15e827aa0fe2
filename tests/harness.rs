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
        .expect(
            "TENANCY_TEST_PORT is not set: run these tests through `make test` (scripts/test.sh)",
        )
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
    let name = format!(
        "t_{}_{}_{}",
        test,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = connect("postgres");
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .unwrap();
    // CREATE DATABASE ... TEMPLATE fails while another session is copying the same template;
    // retry briefly rather than serialising all tests.
    for attempt in 0.. {
        match admin.batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {}", template())) {
            Ok(()) => break,
            Err(e)
                if attempt < 50 && e.to_string().contains("is being accessed by other users") =>
            {
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
    client
        .query_one("SELECT fixture.ws_id($1, $2)::text", &[&kind, &n])
        .unwrap()
        .get(0)
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
        Cluster {
            name: name.to_string(),
            port,
        }
    }

    pub fn connect(&self, db: &str) -> Client {
        self.connect_as(db, "postgres")
    }

    pub fn connect_as(&self, db: &str, user: &str) -> Client {
        let conn = format!("host=127.0.0.1 port={} user={user} dbname={db}", self.port);
        Client::connect(&conn, NoTls).unwrap_or_else(|e| panic!("connect {conn}: {e}"))
    }

    /// A database with the extension and the Dittofeed fixture (2 parents x 2 children,
    /// 3 roots, 5 rows per table).
    pub fn fixture_db(&self, db: &str) -> Client {
        let mut admin = self.connect("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .unwrap();
        let mut c = self.connect(db);
        c.batch_execute("CREATE EXTENSION tenancy").unwrap();
        load_fixture(&mut c);
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

/// The Dittofeed-shaped fixture (fixture/): 2 parents x 2 children, 3 roots, 5 rows per table.
pub fn load_fixture(c: &mut Client) {
    c.batch_execute(include_str!("../fixture/dittofeed.sql"))
        .unwrap();
    c.batch_execute(include_str!("../fixture/generate.sql"))
        .unwrap();
    c.batch_execute("SELECT fixture.generate(2, 2, 3, 5)")
        .unwrap();
}

/// Every fix `shard_readiness()` gives, in its order; asserts that no blocker is left after.
/// Returns how many fixes ran.
pub fn apply_shard_fixes(c: &mut Client) -> usize {
    let fixes: Vec<String> = c
        .query(
            "SELECT fix FROM tenancy.shard_readiness() WHERE fix IS NOT NULL",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for f in &fixes {
        c.batch_execute(f).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    let blockers: i64 = c
        .query_one(
            "SELECT count(*) FROM tenancy.shard_readiness() WHERE blocker",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(blockers, 0, "no blocker after the fixes");
    fixes.len()
}

/// A random uuid (from the server), for workspaces no other test uses.
pub fn random_ws(client: &mut Client) -> String {
    client
        .query_one("SELECT gen_random_uuid()::text", &[])
        .unwrap()
        .get(0)
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

/// A pgbouncer of a test's own (Debian's `/usr/sbin/pgbouncer`), in front of the test cluster,
/// in transaction pooling mode, killed when dropped. Its config, auth file, pid file and log live
/// in `$TENANCY_RUN_DIR/pgbouncer-NAME/` (scripts/test.sh's cleanup kills whatever still runs
/// from `$TENANCY_RUN_DIR/pgbouncer*`). pgbouncer refuses to run as root: as root it is started
/// with `runuser -u postgres`. Clients must use the simple query protocol only (`simple_query`,
/// `batch_execute`): rust-postgres names its prepared statements, and named statements do not
/// survive transaction pooling in pgbouncer 1.18.
pub struct Pgbouncer {
    pub port: u16,
    pub dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

/// One `[databases]` entry of a [`Pgbouncer`]: clients connect to `alias`, pgbouncer to
/// database `dbname` of the test cluster; `pool_size` overrides `default_pool_size`.
pub struct PoolDb<'a> {
    pub alias: &'a str,
    pub dbname: &'a str,
    pub pool_size: Option<u32>,
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

impl Pgbouncer {
    /// Start pgbouncer `name` on 127.0.0.1:`listen_port` in front of the cluster on 127.0.0.1:`pg_port`
    /// (trust authentication for `users`), and wait until it accepts connections.
    pub fn start(
        name: &str,
        listen_port: u16,
        pg_port: u16,
        default_pool_size: u32,
        users: &[&str],
        databases: &[PoolDb],
    ) -> Pgbouncer {
        use std::fmt::Write as _;
        let run_dir =
            std::env::var("TENANCY_RUN_DIR").unwrap_or_else(|_| "/tmp/tenancy-run".into());
        let dir = std::path::Path::new(&run_dir).join(format!("pgbouncer-{name}"));
        let (ini, pidfile, log) = (
            dir.join("pgbouncer.ini"),
            dir.join("pgbouncer.pid"),
            dir.join("pgbouncer.log"),
        );

        // A pgbouncer of ours left over by a crashed run holds the port: end it (only it, by pid).
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(ini.to_str().unwrap()) {
                signal(pid, "-KILL");
                for _ in 0..50 {
                    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], listen_port));
        assert!(
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
                .is_err(),
            "pgbouncer {name}: port {listen_port} is already in use"
        );

        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut conf = String::from("[databases]\n");
        for db in databases {
            write!(
                conf,
                "{} = host=127.0.0.1 port={pg_port} dbname={}",
                db.alias, db.dbname
            )
            .unwrap();
            if let Some(n) = db.pool_size {
                write!(conf, " pool_size={n}").unwrap();
            }
            conf.push('\n');
        }
        write!(
            conf,
            "\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {listen_port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {auth}\n\
             logfile = {log}\n\
             pidfile = {pid}\n\
             pool_mode = transaction\n\
             default_pool_size = {default_pool_size}\n\
             min_pool_size = 0\n\
             reserve_pool_size = 0\n\
             max_client_conn = 200\n\
             ; transaction pooling runs no reset query between clients (DISCARD ALL is for session pooling)\n\
             server_reset_query_always = 0\n\
             ignore_startup_parameters = extra_float_digits,options\n",
            auth = dir.join("userlist.txt").display(),
            log = log.display(),
            pid = pidfile.display(),
        )
        .unwrap();
        std::fs::write(&ini, conf).unwrap();
        let auth: String = users.iter().map(|u| format!("\"{u}\" \"\"\n")).collect();
        std::fs::write(dir.join("userlist.txt"), auth).unwrap();

        let mut cmd = if running_as_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres", dir.to_str().unwrap()])
                .status()
                .expect("run chown");
            assert!(status.success(), "chown {}", dir.display());
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", "/usr/sbin/pgbouncer"]);
            c
        } else {
            std::process::Command::new("/usr/sbin/pgbouncer")
        };
        // Not daemonized (-d): the child is ours to end. Its messages go to the log file.
        let child = cmd
            .arg(&ini)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn pgbouncer");
        let mut bouncer = Pgbouncer {
            port: listen_port,
            dir,
            child: Some(child),
        };
        for _ in 0..100 {
            if let Some(status) = bouncer.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "pgbouncer {name} exited ({status}) before accepting connections:\n{}",
                    bouncer.log()
                );
            }
            if std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
                .is_ok()
            {
                return bouncer;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "pgbouncer {name} does not accept connections on port {listen_port}:\n{}",
            bouncer.log()
        );
    }

    /// A client connection through pgbouncer to database entry `alias`, as `user`.
    pub fn connect_as(&self, alias: &str, user: &str) -> Client {
        let conn = format!(
            "host=127.0.0.1 port={} user={user} dbname={alias} connect_timeout=10",
            self.port
        );
        Client::connect(&conn, NoTls)
            .unwrap_or_else(|e| panic!("connect via pgbouncer {conn}: {e}\n{}", self.log()))
    }

    /// The tail of pgbouncer's log, for failure messages.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM to pgbouncer itself (immediate shutdown); as root the child is runuser, which
        // then exits with it. Fall back to signalling the child.
        let pid = std::fs::read_to_string(self.dir.join("pgbouncer.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        signal(pid.unwrap_or(child.id()), "-TERM");
        for _ in 0..50 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        signal(child.id(), "-TERM"); // runuser forwards it, then kills pgbouncer after 2 s
        if let Some(pid) = pid {
            signal(pid, "-KILL");
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
