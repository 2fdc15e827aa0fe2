//! Prometheus metrics through Debian's real prometheus-postgres-exporter (0.11) with
//! `monitoring/queries.yaml`: the values it exports equal the views', the less active workspaces
//! are summed exactly into workspace="_other", the series count stays bounded with 1,000 active
//! workspaces, and `promtool check metrics` accepts the tenancy_ metrics.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};

use tenancy_it::*;

const EXPORTER_PORT: u16 = 25468;
const ROLE: &str = "tenancy_it_exporter";

struct Exporter(Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_exporter(db: &str) -> Exporter {
    let queries =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring/queries.yaml");
    let child = Command::new("/usr/bin/prometheus-postgres-exporter")
        .arg(format!("--extend.query-path={}", queries.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{EXPORTER_PORT}"))
        .arg("--disable-settings-metrics")
        .arg("--disable-default-metrics")
        .env(
            "DATA_SOURCE_NAME",
            format!(
                "host=127.0.0.1 port={} user={ROLE} dbname={db} sslmode=disable",
                port()
            ),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-postgres-exporter (apt-get install prometheus-postgres-exporter)");
    let exporter = Exporter(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", EXPORTER_PORT)).is_ok() {
            return exporter;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the exporter does not listen on {EXPORTER_PORT}");
}

fn scrape() -> String {
    let out = Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{EXPORTER_PORT}/metrics")])
        .output()
        .expect("curl");
    String::from_utf8(out.stdout).unwrap()
}

/// value of `metric` by its `label` (other labels filtered by `filter`)
fn series(text: &str, metric: &str, filter: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
    {
        if !line.contains(filter) {
            continue;
        }
        let labels = &line[line.find('{').unwrap() + 1..line.rfind('}').unwrap()];
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        let key = format!("{label}=\"");
        let start = labels.find(&key).unwrap() + key.len();
        let v = &labels[start..start + labels[start..].find('"').unwrap()];
        out.insert(v.to_string(), value);
    }
    out
}

#[test]
fn exported_values_equal_the_views_and_cardinality_is_bounded() {
    let db = fresh_db("metrics");
    let mut admin = connect(&db);
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {ROLE} LOGIN IN ROLE pg_monitor; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             ALTER ROLE {ROLE} SET tenancy.metrics_workspaces = 2;
             SELECT tenancy.enforce_quota('\"Segment\"'); SELECT tenancy.set_quota('\"Segment\"', 1000);"
        ))
        .unwrap();
    // a known workload: root n runs 5 * n statements
    let mut ws = Vec::new();
    for n in 1..=3 {
        let id = ws_id(&mut admin, "root", n);
        let mut c = connect(&db);
        c.batch_execute(&format!("SET tenancy.workspace_id = '{id}'"))
            .unwrap();
        for _ in 0..5 * n {
            c.query("SELECT 1", &[]).unwrap();
        }
        ws.push(id);
    }
    let exporter = start_exporter(&db);
    let text = scrape();
    drop(exporter);
    let filter = format!("database=\"{db}\"");
    let exported = series(
        &text,
        "tenancy_workspace_statements_total",
        &filter,
        "workspace",
    );
    let view: BTreeMap<String, f64> = admin
        .query("SELECT workspace_id::text, queries::float8 FROM tenancy.workspace_stats WHERE database = current_database()", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let total: f64 = view.values().sum();
    assert_eq!(
        exported.values().sum::<f64>(),
        total,
        "the totals stay exact: {exported:?} vs {view:?}"
    );
    // the database's two most active workspaces have their own series with the view's values,
    // the third is _other
    let expected: BTreeMap<String, f64> = [
        (ws[2].clone(), view[&ws[2]]),
        (ws[1].clone(), view[&ws[1]]),
        ("_other".to_string(), total - view[&ws[2]] - view[&ws[1]]),
    ]
    .into();
    assert_eq!(exported, expected);
    // quota use, per table and workspace, as quota_usage shows it
    let used = series(&text, "tenancy_quota_used_rows", "", "workspace");
    let view_used: f64 = admin
        .query_one("SELECT sum(used)::float8 FROM tenancy.quota_usage", &[])
        .unwrap()
        .get(0);
    assert_eq!(used.values().sum::<f64>(), view_used);
    assert!(used.len() <= 3, "top 2 + _other: {used:?}");
    // promtool accepts the tenancy_ metrics
    let tenancy_lines: String = text
        .lines()
        .filter(|l| {
            l.starts_with("tenancy_")
                || l.starts_with("# HELP tenancy_")
                || l.starts_with("# TYPE tenancy_")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(tenancy_lines.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 1,000 active workspaces: the series stay bounded by (top + 1) per database
    let mut c = connect(&db);
    c.batch_execute("SET tenancy.stats_new_entry_limit = -1")
        .unwrap();
    for _ in 0..1000 {
        let id: String = c
            .query_one("SELECT gen_random_uuid()::text", &[])
            .unwrap()
            .get(0);
        c.batch_execute(&format!("SET tenancy.workspace_id = '{id}'; SELECT 1"))
            .unwrap();
    }
    let entries: i64 = admin
        .query_one(
            "SELECT count(*) FROM tenancy.workspace_stats WHERE database = current_database()",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(entries >= 1000, "{entries}");
    let exporter = start_exporter(&db);
    let text = scrape();
    drop(exporter);
    let all = text
        .lines()
        .filter(|l| l.starts_with("tenancy_workspace_statements_total{"))
        .count();
    let databases: i64 = admin
        .query_one(
            "SELECT count(DISTINCT database) FROM tenancy.workspace_stats",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        all as i64 <= 3 * databases,
        "{all} series for {databases} databases with top 2 (+ _other) each"
    );
    let here = series(
        &text,
        "tenancy_workspace_statements_total",
        &filter,
        "workspace",
    );
    assert_eq!(
        here.len(),
        3,
        "this database: 2 workspaces + _other: {here:?}"
    );
    let view_total: f64 = admin.query_one("SELECT sum(queries)::float8 FROM tenancy.workspace_stats WHERE database = current_database()", &[]).unwrap().get(0);
    assert_eq!(
        here.values().sum::<f64>(),
        view_total,
        "still exact with 1,000 workspaces"
    );
}

/// The alert rules load, and their promtool unit tests pass (each rule fires on the series it is
/// for, at the time it should, with its labels and text, and stays quiet otherwise).
#[test]
fn alert_rules_pass_their_promtool_tests() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (apt-get install prometheus)");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
