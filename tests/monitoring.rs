//! Prometheus metrics through Debian's real prometheus-postgres-exporter (0.11) with
//! `monitoring/queries.yaml`: the values it exports equal the views', the less active workspaces
//! are summed exactly into workspace="_other", the series count stays bounded with 1,000 active
//! workspaces, and `promtool check metrics` accepts the tenancy_ metrics. With a real Prometheus
//! scraping that exporter: the values it holds equal the views', every Grafana panel's and every
//! console graph's expression returns a series, and the console page renders its graphs in
//! headless Chromium (the screenshot is kept in $TENANCY_RUN_DIR/artifacts/console.png).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};

use tenancy_it::*;

const EXPORTER_PORT: u16 = 25468;
/// The exporter and Prometheus of the Prometheus test (the two tests run at once).
const PROM_EXPORTER_PORT: u16 = 25471;
const PROMETHEUS_PORT: u16 = 25472;
/// The exporter of the dropped-databases test.
const DROPPED_EXPORTER_PORT: u16 = 25475;
const ROLE: &str = "tenancy_it_exporter";
/// The Prometheus test's exporter role (with the default tenancy.metrics_workspaces, 50).
const PROM_ROLE: &str = "tenancy_it_prometheus";

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

struct Exporter(Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_exporter(db: &str) -> Exporter {
    start_exporter_on(db, EXPORTER_PORT, ROLE, &["--disable-default-metrics"])
}

fn start_exporter_on(db: &str, port_: u16, role: &str, extra: &[&str]) -> Exporter {
    let queries =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring/queries.yaml");
    let child = Command::new("/usr/bin/prometheus-postgres-exporter")
        .arg(format!("--extend.query-path={}", queries.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port_}"))
        .arg("--disable-settings-metrics")
        .args(extra)
        .env(
            "DATA_SOURCE_NAME",
            format!(
                "host=127.0.0.1 port={} user={role} dbname={db} sslmode=disable",
                port()
            ),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-postgres-exporter (apt-get install prometheus-postgres-exporter)");
    let exporter = Exporter(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port_)).is_ok() {
            return exporter;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the exporter does not listen on {port_}");
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

/// GET (or POST form data to) `url`: (HTTP status, body).
fn http(url: &str, form: &[(&str, &str)]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}"]);
    for (k, v) in form {
        cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
    }
    let out = cmd.arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// An instant query against the test's Prometheus: its result vector.
fn promql(expr: &str) -> Vec<serde_json::Value> {
    let (code, body) = http(
        &format!("http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query"),
        &[("query", expr)],
    );
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{expr}: {e}: {body}"));
    assert_eq!(code, 200, "{expr}: {body}");
    assert_eq!(v["status"], "success", "{expr}: {body}");
    match &v["data"]["result"] {
        serde_json::Value::Array(a) => a.clone(),
        // a scalar or string result is one value
        other => vec![other.clone()],
    }
}

/// label value -> sample value of a query's result vector
fn by_label(result: &[serde_json::Value], label: &str) -> BTreeMap<String, f64> {
    result
        .iter()
        .map(|r| {
            (
                r["metric"][label].as_str().unwrap_or("").to_string(),
                r["value"][1].as_str().unwrap().parse::<f64>().unwrap(),
            )
        })
        .collect()
}

struct Prometheus(Child, std::path::PathBuf);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn start_prometheus() -> Prometheus {
    let dir = std::env::temp_dir().join(format!("tenancy-it-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let repo = repo();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: ['{}']\n\
             scrape_configs:\n  - job_name: tenancy\n    static_configs:\n      - targets: ['127.0.0.1:{PROM_EXPORTER_PORT}']\n",
            repo.join("monitoring/alerts.yml").display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/bin/prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"))
        .arg(format!(
            "--web.console.templates={}",
            repo.join("monitoring/consoles").display()
        ))
        .arg("--web.console.libraries=/usr/share/doc/prometheus/examples/console_libraries")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (apt-get install prometheus)");
    let prometheus = Prometheus(child, dir);
    for _ in 0..300 {
        if http(&format!("http://127.0.0.1:{PROMETHEUS_PORT}/-/ready"), &[]).0 == 200 {
            return prometheus;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("prometheus is not ready on {PROMETHEUS_PORT}");
}

/// Every `expr` of the Grafana dashboard's panels (nested rows included), with the dashboard
/// variables a test can stand in for: `$database` (all) and `$__rate_interval`.
fn grafana_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("monitoring/grafana/tenancy.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("").to_string();
            if p["type"] != "row" {
                let targets = p["targets"].as_array().cloned().unwrap_or_default();
                assert!(!targets.is_empty(), "panel {title:?} has no query");
                for t in targets {
                    let expr = t["expr"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{title}: no expr"));
                    out.push((title.clone(), expr.to_string()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out.into_iter()
        .map(|(t, e)| {
            let e = e
                .replace("$database", ".*")
                .replace("$__rate_interval", "1m");
            assert!(
                !e.contains('$'),
                "{t}: a variable the test does not know: {e}"
            );
            (t, e)
        })
        .collect()
}

/// Every graph's `expr: "..."` and every `query "..."` of the console template.
fn console_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("monitoring/consoles/tenancy.html")).unwrap();
    let mut out = Vec::new();
    for marker in ["expr: \"", "query \""] {
        let mut rest = text.as_str();
        while let Some(i) = rest.find(marker) {
            rest = &rest[i + marker.len()..];
            let end = rest.find('"').unwrap();
            out.push(rest[..end].replace("\\\"", "\""));
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn prometheus_holds_the_views_values_and_every_panel_and_console_graph_has_data() {
    let db = fresh_db("prom");
    let mut admin = connect(&db);
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {PROM_ROLE} LOGIN IN ROLE pg_monitor; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             SELECT tenancy.enforce_quota('\"Segment\"'); SELECT tenancy.set_quota('\"Segment\"', 1000);"
        ))
        .unwrap();
    // a known workload: root n runs 4 * n statements (n = 1..=60: more than the 50 workspaces
    // with a label of their own, so _other has 10 of them)
    let mut c = connect(&db);
    let ids: Vec<String> = admin
        .query(
            "INSERT INTO \"Workspace\" (name) SELECT 'prom-' || g FROM generate_series(1, 60) g RETURNING id::text",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let sql: String = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            format!("SET tenancy.workspace_id = '{id}';\n") + &"SELECT 1;\n".repeat(4 * (i + 1))
        })
        .collect();
    c.batch_execute(&sql).unwrap();
    c.batch_execute("RESET tenancy.workspace_id").unwrap();
    let _exporter = start_exporter_on(&db, PROM_EXPORTER_PORT, PROM_ROLE, &[]);
    let _prometheus = start_prometheus();
    // wait for a few scrapes (rates need two samples)
    let mut scrapes = 0.0;
    for _ in 0..200 {
        let r = promql("count_over_time(tenancy_stats_capacity_entries[1m])");
        scrapes = r
            .first()
            .map_or(0.0, |r| r["value"][1].as_str().unwrap().parse().unwrap());
        if scrapes >= 4.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(scrapes >= 4.0, "Prometheus scraped {scrapes} times");

    // what Prometheus holds equals the views: the 50 most active by name, _other the remainder
    let held = by_label(
        &promql(&format!(
            "tenancy_workspace_statements_total{{database=\"{db}\"}}"
        )),
        "workspace",
    );
    let view: BTreeMap<String, f64> = admin
        .query("SELECT workspace_id::text, queries::float8 FROM tenancy.workspace_stats WHERE database = current_database()", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(view.len(), 60, "{view:?}");
    let mut expected: BTreeMap<String, f64> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            view[id],
            4.0 * (i + 1) as f64,
            "the view counts the workload exactly"
        );
        let key = if i >= 10 {
            id.clone()
        } else {
            "_other".to_string()
        };
        *expected.entry(key).or_default() += view[id];
    }
    assert_eq!(held, expected, "Prometheus vs the views");
    let used = by_label(
        &promql("sum by (workspace) (tenancy_quota_used_rows)"),
        "workspace",
    );
    let view_used: BTreeMap<String, f64> = admin
        .query(
            "SELECT workspace_id::text, used::float8 FROM tenancy.quota_usage WHERE used > 0",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        used.values().sum::<f64>(),
        view_used.values().sum::<f64>(),
        "quota used: {used:?} vs {view_used:?}"
    );
    for (ws, v) in &used {
        if ws != "_other" {
            assert_eq!(view_used.get(ws), Some(v), "quota used of {ws}");
        }
    }

    // live traffic from here on, so that rates are not all zero in the graphs
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, db, ids) = (stop.clone(), db.clone(), ids.clone());
        std::thread::spawn(move || {
            let mut c = connect(&db);
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = &ids[(i * 7) % ids.len()];
                let n = 1 + (i * 13) % 20;
                c.batch_execute(&format!(
                    "SET tenancy.workspace_id = '{id}'; {}",
                    "SELECT count(*) FROM \"Segment\";".repeat(n)
                ))
                .unwrap();
                i += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_secs(6));

    // every Grafana panel and every console graph shows something
    let panels = grafana_exprs();
    assert!(panels.len() >= 10, "{} panel queries", panels.len());
    for (title, expr) in &panels {
        assert!(
            !promql(expr).is_empty(),
            "Grafana panel {title:?}: no series for {expr}"
        );
    }
    let console = console_exprs();
    assert!(console.len() >= 8, "{console:?}");
    for expr in &console {
        assert!(!promql(expr).is_empty(), "console: no series for {expr}");
    }
    // the label values of the dashboard's database variable
    let (_, body) = http(
        &format!("http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/label/database/values"),
        &[],
    );
    assert!(
        body.contains(&db),
        "the database variable lists {db}: {body}"
    );

    // the console page renders (the template) and draws its graphs (Chromium runs the page's
    // JavaScript, which queries Prometheus and draws one SVG line per series)
    let page_url = format!("http://127.0.0.1:{PROMETHEUS_PORT}/consoles/tenancy.html");
    let (code, page) = http(&page_url, &[]);
    assert_eq!(code, 200, "{page}");
    for bad in ["error executing template", "<no value>", "template:"] {
        assert!(!page.contains(bad), "console page: {bad}");
    }
    // the last two minutes (the page's time control reads its range from the fragment)
    let url = format!("{page_url}#pctc%7B%22duration%22%3A120%2C%22endTime%22%3A0%7D");
    let chromium = |args: &[&str]| {
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .args(["--window-size=1400,1800", "--virtual-time-budget=5000"])
            .args(args)
            .arg(&url)
            .stderr(Stdio::null())
            .output()
            .expect("chromium (apt-get install chromium)")
    };
    let dom = String::from_utf8_lossy(&chromium(&["--dump-dom"]).stdout).to_string();
    // Rickshaw draws each series as <path class="path">: at least one per graph
    let graphs = std::fs::read_to_string(repo().join("monitoring/consoles/tenancy.html"))
        .unwrap()
        .matches("new PromConsole.Graph(")
        .count();
    let lines = dom.matches("class=\"path\"").count();
    assert!(graphs >= 8, "{graphs} graphs");
    assert!(
        lines >= graphs,
        "the console's {graphs} graphs drew {lines} series"
    );
    let artifacts = std::path::PathBuf::from(
        std::env::var("TENANCY_RUN_DIR").unwrap_or_else(|_| "/tmp/tenancy-run".into()),
    )
    .join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = artifacts.join("console.png");
    let _ = std::fs::remove_file(&png);
    chromium(&[&format!("--screenshot={}", png.display())]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    let bytes = std::fs::read(&png).expect("the screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 50_000,
        "screenshot of {} bytes",
        bytes.len()
    );
}

/// Statistics left by dropped databases have no database name: two such databases with the
/// same workspace would give the exporter one label set twice, and it fails the whole scrape
/// (HTTP 500). workspace_metrics() leaves them out.
#[test]
fn dropped_databases_do_not_break_the_scrape() {
    let mut admin = connect("postgres");
    let mut ws = String::new();
    for _ in 0..2 {
        let db = fresh_db("metrics_dropped");
        let mut c = connect(&db);
        ws = ws_id(&mut c, "root", 1);
        c.batch_execute(&format!(
            "SET tenancy.workspace_id = '{ws}'; SELECT 1; SELECT 2;"
        ))
        .unwrap();
        drop(c);
        admin
            .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
            .unwrap();
    }
    let db = fresh_db("metrics_scrape");
    let mut c = connect(&db);
    c.batch_execute(&format!(
        "DO $$ BEGIN CREATE ROLE {PROM_ROLE} LOGIN IN ROLE pg_monitor; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    ))
    .unwrap();
    let orphans: i64 = c
        .query_one(
            "SELECT count(*) FROM tenancy.workspace_stats WHERE database IS NULL AND workspace_id = $1::text::uuid",
            &[&ws],
        )
        .unwrap()
        .get(0);
    assert!(
        orphans >= 2,
        "the dropped databases' statistics are still in the table"
    );
    let r = c
        .query_one(
            "SELECT count(*) FILTER (WHERE database IS NULL), count(*), count(DISTINCT (database, workspace))
               FROM tenancy.workspace_metrics()",
            &[],
        )
        .unwrap();
    let (unnamed, rows, distinct): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
    assert_eq!(unnamed, 0, "no row without a database");
    assert_eq!(rows, distinct, "one row per (database, workspace)");
    let _exporter = start_exporter_on(&db, DROPPED_EXPORTER_PORT, PROM_ROLE, &[]);
    let (code, body) = http(
        &format!("http://127.0.0.1:{DROPPED_EXPORTER_PORT}/metrics"),
        &[],
    );
    assert_eq!(code, 200, "{}", &body[..body.len().min(2000)]);
    assert!(body.contains("tenancy_workspace_statements_total{"));
}
