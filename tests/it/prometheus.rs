//! grafana/ against a real Prometheus scraping the real service: promtool accepts the example
//! configuration and the alert rules, and every PromQL expression of the dashboard and of the
//! alert rules returns data once the service has handled a little of everything. A misspelt
//! metric, label or variable would otherwise only show as an empty panel or a dead alert.
//!
//! Expressions are evaluated as Grafana would send them: the dashboard's query variables are
//! resolved through Prometheus (`label_values(selector, label)` → the label's values, "All" →
//! `(v1|v2)` with Grafana's regex escaping), the built-ins get Grafana's values for a 15 s scrape
//! interval (`$__rate_interval` = 1m, which also spans this short test), and `$method` is tried
//! both as "All" and as `getToken` alone. Alert rules are read back from Prometheus's rules API
//! (so they are the ones it loaded) and evaluated without their final comparison (the
//! convention written at the top of alerts.yml).

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokenmanager::x509::pki::{CertifiedKey, ProxyKind};

use crate::client::{Client, Reply, Request, form_encode_component, http_get};
use crate::idp::TestIdp;
use crate::pki::TestPki;
use crate::process::{ServeProcess, spawn_process};
use crate::support::TestDb;
use crate::test_config::dn;

const JOB: &str = "tokenmanager";
const CE: &str = "https://ce.example.org";

fn grafana_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("grafana")
        .join(relative)
}

fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool is installed (tests/setup.sh installs Debian's prometheus)");
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Debian's `prometheus` on 127.0.0.1, scraping `metrics_port` every second and evaluating
/// `rules` every second; killed when dropped (also when the test panics).
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn spawn(metrics_port: u16, rules: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        // The job name is the one of grafana/prometheus/prometheus.yml: the rules select it.
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n",
                rules.display()
            ),
        )
        .unwrap();
        promtool(&["check", "config", config.to_str().unwrap()]);
        // A free port: bound, then released for Prometheus (which cannot report a port 0).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus is installed (tests/setup.sh installs Debian's prometheus)");
        let mut prometheus = Self { child, port, dir };
        prometheus.wait_until("ready", Duration::from_secs(30), |p| {
            p.get("/-/ready").is_some_and(|(status, _)| status == 200)
        });
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// A GET; None without a whole reply (not listening yet, say).
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = Client::http()
            .timeout(Duration::from_secs(20))
            .send(self.port, &Request::get(path))
            .ok()?;
        Some((response.status, response.text()))
    }

    /// GET of a JSON API path; `Err` carries Prometheus's error (bad expression, ...).
    fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = self
            .get(path)
            .ok_or_else(|| format!("no answer from Prometheus to {path}"))?;
        let value: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if value["status"] != "success" {
            return Err(format!(
                "HTTP {status}: {} {}",
                value["errorType"], value["error"]
            ));
        }
        Ok(value["data"].clone())
    }

    /// An instant query at the current time: its samples (label set and value).
    fn query(&self, expr: &str) -> Result<Vec<(Value, String)>, String> {
        let data = self.api(&format!(
            "/api/v1/query?query={}",
            form_encode_component(expr)
        ))?;
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["metric"].clone(),
                        s["value"][1].as_str().unwrap().to_owned(),
                    )
                })
                .collect()),
            Some("scalar") => Ok(vec![(
                json!({}),
                data["result"][1].as_str().unwrap().to_owned(),
            )]),
            other => Err(format!("a {other:?} result, not an instant vector")),
        }
    }

    /// The value of a query that must return exactly one sample.
    fn scalar(&self, expr: &str) -> Option<f64> {
        match self.query(expr) {
            Ok(samples) if samples.len() == 1 => samples[0].1.parse().ok(),
            _ => None,
        }
    }

    fn wait_until(&mut self, what: &str, timeout: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "prometheus exited ({status}) waiting for {what}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "prometheus: no {what} within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The service on SQLite with the test OpenID provider as `test-idp`, as in get_token.rs.
struct Service {
    // Fields drop in order: the service before its IdP and database.
    app: ServeProcess,
    idp: TestIdp,
    _db: TestDb,
    full: CertifiedKey,
    manager: CertifiedKey,
}

impl Service {
    fn spawn() -> Self {
        let db = TestDb::new(tokenmanager::config::Backend::Sqlite);
        let idp = TestIdp::spawn();
        let app = spawn_process(&db, |c| {
            c.test_idp(&idp.issuer(), &format!("{CE}, https://fts.example.org"));
        });
        let pki = TestPki::shared();
        Self {
            app,
            idp,
            _db: db,
            full: pki.proxy(&dn("full"), ProxyKind::Rfc3820, Some("g_full")),
            manager: pki.proxy(&dn("manager"), ProxyKind::Rfc3820, Some("g_manager")),
        }
    }

    fn json(&self, credential: Option<&CertifiedKey>, method: &str, body: Value) -> Reply {
        Client::https(credential).post(
            self.app.https,
            &format!("/api/v1/{method}"),
            &body.to_string(),
        )
    }

    /// DIRAC's HTTPS protocol, as DIRAC 9's TornadoClient posts it.
    fn dirac_https(&self, method: &str, args: &str) -> Reply {
        let form = [
            ("method", method),
            ("args", args),
            ("clientVO", "dteam"),
            ("clientSetup", "None"),
        ];
        Client::with_certificate(&self.full).call(
            self.app.https,
            &Request::post("/Framework/TokenManager").form(&form),
        )
    }

    fn get_token(&self, user: Option<&str>, audience: &str) -> Reply {
        let body = json!({"username": user, "userGroup": "g_user", "scope": ["compute.read"],
                          "audience": audience, "requiredTimeLeft": 0});
        self.json(Some(&self.full), "getToken", body)
    }
}

fn assert_ok(reply: &Reply, what: &str) {
    assert_eq!(reply.status(), Some(200), "{what}: {reply:?}");
}

/// A little of everything the dashboard shows: echo and ping over JSON and DIRAC HTTPS, a
/// refused call, a delegation, getToken misses (IdP refreshes and client-credentials grants),
/// hits and a concurrent burst (coalesced callers), a configuration reload.
fn drive_load(service: &Arc<Service>) {
    for i in 0..5 {
        assert_ok(
            &service.json(Some(&service.full), "echo", json!({"data": i})),
            "JSON echo",
        );
        assert_ok(
            &service.json(Some(&service.full), "ping", json!({})),
            "JSON ping",
        );
        let echo = service.dirac_https("echo", &format!("[{i}]"));
        assert_eq!(echo.body()["OK"], json!(true), "DIRAC echo: {echo:?}");
        let ping = service.dirac_https("ping", "[]");
        assert_eq!(ping.body()["OK"], json!(true), "DIRAC ping: {ping:?}");
    }
    assert_eq!(
        Client::anonymous()
            .post(service.app.https, "/api/v1/ping", "{}")
            .status(),
        Some(401),
        "an anonymous call is refused"
    );

    let grant = service
        .idp
        .grant("id-plain", "openid offline_access compute.read");
    let body = json!({"token": {"refresh_token": grant.refresh_token, "access_token": grant.access_token,
                                "expires_in": grant.expires_in},
                      "userID": "id-plain", "provider": "test-idp"});
    assert_ok(
        &service.json(Some(&service.manager), "updateToken", body),
        "updateToken",
    );
    for user in [Some("plain"), None] {
        // The first call misses and goes to the IdP; the next ones are cache hits.
        for _ in 0..3 {
            assert_ok(&service.get_token(user, CE), "getToken");
        }
    }
    // Eight callers at once on a key nobody asked for yet: one refresh, the rest queued behind it.
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let service = service.clone();
            std::thread::spawn(move || service.get_token(Some("plain"), "https://fts.example.org"))
        })
        .collect();
    for reply in burst {
        assert_ok(&reply.join().unwrap(), "getToken burst");
    }
    service.app.signal("HUP");
}

/// Grafana's regex escaping of a multi-value variable, inside a PromQL string.
fn grafana_regex_escape(value: &str) -> String {
    let mut escaped = value.replace('\\', "\\\\\\\\");
    for special in [
        '$', '^', '*', '{', '}', '[', ']', '\'', '+', '?', '.', '(', ')', '|',
    ] {
        escaped = escaped.replace(special, &format!("\\\\{special}"));
    }
    escaped
}

/// `$name` and `${name}` replaced, longest names first (`$__interval` is a prefix of
/// `$__interval_ms`); `None` if a `$` is left: a variable this test does not know.
fn substitute(expr: &str, variables: &[(String, String)]) -> Option<String> {
    let mut sorted: Vec<_> = variables.iter().collect();
    sorted.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut text = expr.to_owned();
    for (name, value) in sorted {
        text = text
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    (!text.contains('$')).then_some(text)
}

/// Every `targets[].expr` anywhere in the dashboard (rows may nest panels), with its panel.
fn dashboard_exprs(value: &Value, panel: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            let title = map
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or(panel)
                .to_owned();
            if let Some(Value::Array(targets)) = map.get("targets") {
                for target in targets {
                    if let Some(expr) = target["expr"].as_str() {
                        out.push((title.clone(), expr.to_owned()));
                    }
                }
            }
            for (key, child) in map {
                if key != "targets" {
                    dashboard_exprs(child, &title, out);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                dashboard_exprs(item, panel, out);
            }
        }
        _ => {}
    }
}

/// `expr` without its final top-level comparison against a number (alerts.yml's convention), or
/// None if it does not end so.
fn strip_comparison(expr: &str) -> Option<(String, f64)> {
    let bytes = expr.as_bytes();
    let (mut depth, mut quote, mut last) = (0i32, None, None);
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) => {
                if c == b'\\' {
                    i += 1;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                b'"' | b'\'' | b'`' => quote = Some(c),
                b'(' | b'{' | b'[' => depth += 1,
                b')' | b'}' | b']' => depth -= 1,
                b'=' | b'!' | b'<' | b'>' if depth == 0 => {
                    let two = bytes.get(i + 1) == Some(&b'=');
                    if (c != b'=' && c != b'!') || two {
                        last = Some((i, if two { 2 } else { 1 }));
                    }
                    if two {
                        i += 1;
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    let (at, len) = last?;
    let threshold = expr[at + len..].trim().parse().ok()?;
    Some((expr[..at].trim().to_owned(), threshold))
}

/// Why an evaluation does not count as data: an error, nothing, or only NaN (a quantile over a
/// histogram that saw no observation in the window).
fn check(prometheus: &Prometheus, expr: &str) -> Result<usize, String> {
    let samples = prometheus.query(expr)?;
    if samples.is_empty() {
        return Err("empty result".into());
    }
    if samples.iter().all(|(_, value)| value == "NaN") {
        return Err(format!("only NaN: {samples:?}"));
    }
    Ok(samples.len())
}

#[test]
fn dashboard_and_alert_rules_query_a_live_service_through_prometheus() {
    let started = Instant::now();
    let dashboard_path = grafana_file("dashboards/tokenmanager.json");
    let rules_path = grafana_file("prometheus/alerts.yml");

    // (a) The shipped files as an operator would check them; `check config` also loads the
    // rule file the example names.
    promtool(&[
        "check",
        "config",
        grafana_file("prometheus/prometheus.yml").to_str().unwrap(),
    ]);
    promtool(&["check", "rules", rules_path.to_str().unwrap()]);

    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&dashboard_path).unwrap()).unwrap();
    // Every panel asks for the data source through the variable: a provisioned or imported
    // dashboard then works with whatever the Prometheus data source is called.
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate panel id: {panel}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
        }
    }
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard["panels"], "", &mut exprs);

    // (b) The service, and Prometheus scraping it; load only once Prometheus has a sample from
    // before it, so that every rate() sees the load as an increase.
    let service = Arc::new(Service::spawn());
    let mut prometheus = Prometheus::spawn(service.app.metrics, &rules_path);
    let up = format!("up{{job=\"{JOB}\"}}");
    prometheus.wait_until("first scrape", Duration::from_secs(20), |p| {
        p.scalar(&up) == Some(1.0)
    });

    // The dashboard covers every family the service exports (a new one needs a panel).
    let (status, exposition) = http_get(service.app.metrics, "/metrics");
    assert_eq!(status, 200);
    let all_exprs: String = exprs.iter().map(|(_, e)| e.as_str()).collect();
    for family in exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|name| name.starts_with("tokenmanager_"))
        .chain([
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
        ])
    {
        assert!(
            all_exprs.contains(family),
            "no dashboard panel shows {family}"
        );
    }

    // (c) The load.
    drive_load(&service);
    let load_done = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();

    // (d) Scrapes that started after the load (so the last sample has all of it), at least 3 in
    // all, and every rule evaluated at least once.
    let scrapes = format!("count_over_time({up}[5m])");
    let last_scrape = format!("timestamp({up})");
    prometheus.wait_until("scrapes after the load", Duration::from_secs(20), |p| {
        p.scalar(&scrapes).is_some_and(|n| n >= 3.0)
            && p.scalar(&last_scrape).is_some_and(|t| t > load_done + 0.1)
    });
    let rules = |p: &Prometheus| -> Vec<Value> {
        p.api("/api/v1/rules").unwrap()["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect()
    };
    prometheus.wait_until("rule evaluations", Duration::from_secs(20), |p| {
        rules(p).iter().all(|r| r["health"] != "unknown")
    });

    // Prometheus saw what the load did (a family that stayed at zero would pass the checks
    // below without proving anything).
    let expectations = [
        (
            "sum(tokenmanager_requests_total{method=\"echo\", outcome=\"ok\"})",
            10.0,
        ),
        (
            "sum(tokenmanager_requests_total{method=\"ping\", outcome=\"unauthenticated\"})",
            1.0,
        ),
        (
            "sum(tokenmanager_token_cache_lookups_total{result=\"hit\", kind=\"user\"})",
            2.0,
        ),
        (
            "sum(tokenmanager_token_cache_lookups_total{result=\"hit\", kind=\"client\"})",
            2.0,
        ),
        (
            "sum(tokenmanager_idp_requests_total{grant=\"refresh_token\", outcome=\"ok\"})",
            2.0,
        ),
        (
            "sum(tokenmanager_idp_requests_total{grant=\"client_credentials\", outcome=\"ok\"})",
            1.0,
        ),
        (
            "sum(tokenmanager_stored_credentials{state=\"active\"})",
            1.0,
        ),
        (
            "sum(tokenmanager_config_reloads_total{outcome=\"ok\"})",
            1.0,
        ),
    ];
    // The stored-credential gauges (counted in the background) and the reload (SIGHUP is
    // handled asynchronously) follow the load by a moment: later scrapes have them.
    let seen = |p: &Prometheus| {
        expectations
            .iter()
            .all(|(expr, at_least)| p.scalar(expr).is_some_and(|v| v >= *at_least))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen(&prometheus) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    for (expr, at_least) in expectations {
        let value = prometheus.scalar(expr);
        assert!(
            value.is_some_and(|v| v >= at_least),
            "{expr} = {value:?}, expected ≥ {at_least}"
        );
    }

    // The dashboard's variables, resolved as Grafana does: label_values through Prometheus.
    let mut variables: Vec<(String, String)> = [
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__range", "1m"),
        ("datasource", "prometheus"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    let mut failures = Vec::new();
    let mut checked = 0;
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let name = variable["name"].as_str().unwrap();
        match variable["type"].as_str().unwrap() {
            "datasource" => assert_eq!(variable["query"], "prometheus"),
            "query" => {
                let query = variable["query"]["query"]
                    .as_str()
                    .or(variable["query"].as_str())
                    .unwrap();
                let (selector, label) = query
                    .strip_prefix("label_values(")
                    .and_then(|q| q.strip_suffix(')'))
                    .and_then(|q| q.rsplit_once(','))
                    .unwrap_or_else(|| {
                        panic!("${name}: not label_values(selector, label): {query}")
                    });
                let selector = substitute(selector, &variables)
                    .unwrap_or_else(|| panic!("${name}: unknown variable in {selector}"));
                checked += 1;
                let values: BTreeSet<String> = match prometheus.query(&selector) {
                    Ok(samples) => samples
                        .iter()
                        .filter_map(|(labels, _)| labels[label.trim()].as_str().map(str::to_owned))
                        .collect(),
                    Err(error) => panic!("${name}: {selector}: {error}"),
                };
                assert!(!values.is_empty(), "${name}: {selector} has no {label}");
                let escaped: Vec<_> = values.iter().map(|v| grafana_regex_escape(v)).collect();
                let all = if escaped.len() == 1 {
                    escaped[0].clone()
                } else {
                    format!("({})", escaped.join("|"))
                };
                variables.push((name.to_owned(), all));
            }
            other => panic!("${name}: a {other} variable this test cannot resolve"),
        }
    }
    // Each expression with every variable at "All", and those filtering on the method also for
    // getToken alone (the method this service exists for: all its histograms have data).
    let mut only_get_token = variables.clone();
    for (name, value) in &mut only_get_token {
        if name == "method" {
            *value = "getToken".into();
        }
    }
    for (panel, expr) in &exprs {
        let scenarios: &[&[(String, String)]] = if expr.contains("$method") {
            &[&variables, &only_get_token]
        } else {
            &[&variables]
        };
        for scenario in scenarios {
            let Some(promql) = substitute(expr, scenario) else {
                failures.push(format!("panel {panel:?}: unknown variable in {expr}"));
                continue;
            };
            checked += 1;
            if let Err(error) = check(&prometheus, &promql) {
                failures.push(format!("panel {panel:?}: {promql}\n    {error}"));
            }
        }
    }

    // The alert rules as Prometheus loaded them: all of the file, all healthy, each query
    // returning series while all is well.
    let loaded = rules(&prometheus);
    let in_file = std::fs::read_to_string(&rules_path)
        .unwrap()
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(loaded.len(), in_file, "rules loaded: {loaded:?}");
    for rule in &loaded {
        let name = rule["name"].as_str().unwrap();
        let query = rule["query"].as_str().unwrap();
        if rule["health"] != "ok" {
            failures.push(format!(
                "alert {name}: health {} {}",
                rule["health"], rule["lastError"]
            ));
        }
        let Some((inner, _)) = strip_comparison(query) else {
            failures.push(format!(
                "alert {name}: does not end in `<comparison> <number>`: {query}"
            ));
            continue;
        };
        checked += 1;
        if let Err(error) = check(&prometheus, &inner) {
            failures.push(format!("alert {name}: {inner}\n    {error}"));
        }
    }

    assert!(
        failures.is_empty(),
        "{} of {checked} expressions return no data:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The count and time in the test's output, for whoever tunes it.
    eprintln!(
        "{checked} expressions checked ({} dashboard targets, {} alert rules) in {:?}",
        exprs.len(),
        loaded.len(),
        started.elapsed()
    );
}

#[test]
fn strip_comparison_takes_the_last_top_level_comparison_only() {
    assert_eq!(
        strip_comparison("up{job=\"tm\"} == 0"),
        Some(("up{job=\"tm\"}".into(), 0.0))
    );
    assert_eq!(
        strip_comparison("sum(rate(x{a!~\"b|c\", d=\"<\"}[5m])) / sum(rate(x[5m])) > 0.05"),
        Some((
            "sum(rate(x{a!~\"b|c\", d=\"<\"}[5m])) / sum(rate(x[5m]))".into(),
            0.05
        ))
    );
    assert_eq!(strip_comparison("x > bool 1"), None);
    assert_eq!(strip_comparison("sum(x > 1)"), None);
    assert_eq!(strip_comparison("x > y"), None);
}
