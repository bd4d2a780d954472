//! `tokenmanager-loadtest`: a load generator that speaks the TokenManager's three wire
//! protocols with a client certificate (including RFC 3820 grid proxies, which rustls-based
//! tools reject, and which wrk cannot present at all). The command line is [`LoadtestArgs`] and
//! [`run`]; the benchmarks drive [`engine`] directly.
//!
//! * `dirac-https`: DIRAC "Tornado" RPC, `POST /Framework/TokenManager` with a form body
//!   `method=..&args=<JSON list>&clientVO=unknown&clientSetup=None`; success is HTTP 200
//!   with a JSON body whose `"OK"` is true.
//! * `json`: `POST <url path>/api/v1/<method>` with a JSON object body; success is any 2xx.
//! * `dips`: DISET, one TLS connection per call: proposal, accept, arguments, result.
//!
//! Load is either closed-loop (`--concurrency` callers, each sending its next request when
//! the previous reply is in) or open-loop (`--rate`: sends at fixed intervals, latency taken
//! from the *scheduled* send time so a slow server cannot hide its queueing delay). A call
//! counts if it was sent after the warm-up and, with `--duration`, answered within it.
//!
//! # JSON report (`--json-out`), schema `tokenmanager-loadtest/1`
//!
//! Field names are stable; new fields may be added within the same schema version.
//!
//! ```text
//! schema            "tokenmanager-loadtest/1"
//! target            {url, protocol: "dirac-https"|"json"|"dips", method, path}
//! load              {mode: "closed"|"open", concurrency, rate_target (req/s or null),
//!                    threads, connection: "keep-alive"|"new-connection",
//!                    tls_resumption (bool), warmup_s, timeout_s}
//! elapsed_s         measured wall time (after warm-up, until the last counted reply)
//! requests          measured calls = ok + errors.total
//! ok                successful calls
//! errors            {total, connect, tls, http_status: {"<code>": count}, s_error,
//!                    timeout, protocol, io}
//! error_samples     up to 5 distinct error messages (for diagnosis)
//! rate_ok_per_s     ok / elapsed_s
//! latency_us        {min, mean, p50, p90, p99, p99_9, max} of successful calls, in µs
//!                   (HDR histogram, 3 significant digits, 1 µs .. 60 s); null if ok = 0
//! connections       {opened, tls_resumed, keepalive_retries}, in the measured window
//! ```

pub mod connect;
mod encode;
pub mod engine;
pub mod flood;
pub mod http;
mod report;
mod wire;

#[cfg(test)]
mod tests;

pub use report::{
    ConnEvents, ErrorCounts, Latency, LoadInfo, Report, Stats, TargetInfo, print_report,
};
pub use wire::CallError;

use connect::{Connector, Identity, TlsOptions, Trust};
use dirac_wire::Value as DiracValue;
use dirac_wire::client::RpcCall;
use engine::{Expect, Load, Progress, Request, Scenario, Schedule};
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Wire protocol to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// DIRAC HTTPS ("Tornado") form-encoded RPC.
    DiracHttps,
    /// JSON API: POST /api/v1/<method> with a JSON object body.
    Json,
    /// DISET (dips://), one TLS connection per call.
    Dips,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::DiracHttps => "dirac-https",
            Protocol::Json => "json",
            Protocol::Dips => "dips",
        }
    }
}

/// Load-test a running TokenManager over DIRAC's HTTPS protocol, the JSON API or DISET, with an
/// X.509 certificate or a grid proxy; prints rate, errors and latency percentiles.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tokenmanager-loadtest", version)]
pub struct LoadtestArgs {
    /// Service URL: https://HOST[:PORT][/PATH] or dips://HOST:PORT[/System/Service].
    /// An empty path means /Framework/TokenManager (json protocol: /).
    pub url: String,
    /// Wire protocol [default: dips for dips:// URLs, else dirac-https].
    #[arg(long, value_enum)]
    pub protocol: Option<Protocol>,
    /// RPC method to call.
    #[arg(long, default_value = "echo")]
    pub method: String,
    /// Positional arguments as a JSON list [default: ["loadtest"] for echo, else []].
    #[arg(long, value_name = "JSON")]
    pub args: Option<String>,
    /// Request body for --protocol json, a JSON object of named arguments [default:
    /// {"data": "loadtest"} for echo, else {}].
    #[arg(long, value_name = "JSON")]
    pub json_body: Option<String>,
    /// Client certificate PEM; a grid proxy file (cert + key + chain) works as is.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Private key PEM (unencrypted) [default: the --cert file].
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Hashed CA directory to verify the server [default: $X509_CERT_DIR].
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Do not verify the server certificate or host name.
    #[arg(long)]
    pub insecure: bool,
    /// Do not resume TLS sessions on new connections (full handshake every time).
    #[arg(long)]
    pub no_resume: bool,
    /// Number of concurrent callers (with --rate: the cap on requests in flight).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub concurrency: usize,
    /// Open loop: target requests per second across all callers.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Measured run time, e.g. 10s, 500ms, 2m [default: 10s unless --requests is given].
    #[arg(long, value_parser = parse_duration, value_name = "TIME")]
    pub duration: Option<Duration>,
    /// Stop after this many measured requests.
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// Load applied before measuring starts (not counted).
    #[arg(long, value_parser = parse_duration, default_value = "0s", value_name = "TIME")]
    pub warmup: Duration,
    /// Reuse connections for many calls (default for dirac-https and json).
    #[arg(long, conflicts_with = "new_connection")]
    pub keep_alive: bool,
    /// Open a new TLS connection per call, like DIRAC's own clients (always for dips).
    #[arg(long, alias = "reconnect")]
    pub new_connection: bool,
    /// Per-request timeout, connection set-up included.
    #[arg(long, value_parser = parse_duration, default_value = "30s", value_name = "TIME")]
    pub timeout: Duration,
    /// OS threads, each running its share of the callers on its own runtime.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: usize,
    /// Also write the report as JSON to this file (schema in the module docs).
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("client credentials: {0}")]
    Credentials(String),
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("cannot write JSON report {}: {source}", path.display())]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("worker thread failed: {0}")]
    Worker(String),
}

fn invalid(msg: impl Into<String>) -> LoadtestError {
    LoadtestError::InvalidArgument(msg.into())
}

/// Parses `1.5s`, `250ms`, `2m`, `1h`, `30us`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (examples: 10s, 500ms, 2m)"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use us, ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("duration {s:?} out of range"))
}

/// `scheme://host[:port][path]`, with `[v6]` host literals.
#[derive(Debug, PartialEq)]
struct Url {
    scheme: String,
    host: String,
    port: Option<u16>,
    path: String,
}

fn parse_url(url: &str) -> Result<Url, LoadtestError> {
    let bad = |why: &str| invalid(format!("URL {url:?}: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected scheme://host:port[/path]"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(bad("user information is not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unterminated [IPv6] host"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("invalid port"))
        })
        .transpose()?;
    Ok(Url {
        scheme: scheme.to_ascii_lowercase(),
        host: host.to_owned(),
        port,
        path: path.to_owned(),
    })
}

/// Everything a run needs, validated before any load is sent.
struct Plan {
    report_target: TargetInfo,
    load: Load,
    scenario: Scenario,
    report_load: LoadInfo,
}

const DEFAULT_SERVICE_PATH: &str = "/Framework/TokenManager";

fn parse_json(flag: &str, text: &str) -> Result<Value, LoadtestError> {
    serde_json::from_str(text).map_err(|e| invalid(format!("{flag} is not valid JSON: {e}")))
}

impl Plan {
    fn new(a: &LoadtestArgs) -> Result<Plan, LoadtestError> {
        let url = parse_url(&a.url)?;
        let protocol = match (a.protocol, url.scheme.as_str()) {
            (None, "dips") => Protocol::Dips,
            (None, "https") => Protocol::DiracHttps,
            (Some(p @ Protocol::Dips), "dips")
            | (Some(p @ (Protocol::DiracHttps | Protocol::Json)), "https") => p,
            (Some(p), "dips" | "https") => {
                return Err(invalid(format!(
                    "--protocol {} does not fit a {}:// URL",
                    p.name(),
                    url.scheme
                )));
            }
            (_, other) => {
                return Err(invalid(format!(
                    "URL scheme {other:?} not supported (use https:// or dips://; plain HTTP is not)"
                )));
            }
        };
        let port = match (url.port, protocol) {
            (Some(p), _) => p,
            (None, Protocol::Dips) => return Err(invalid("a dips:// URL needs an explicit port")),
            (None, _) => 443,
        };
        if a.method.is_empty()
            || !a
                .method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(invalid(format!(
                "--method {:?} must be a non-empty identifier",
                a.method
            )));
        }
        if protocol == Protocol::Dips && a.keep_alive {
            return Err(invalid(
                "--keep-alive is not possible with dips: DISET uses one connection per call",
            ));
        }
        let keep_alive = protocol != Protocol::Dips && !a.new_connection;

        let trimmed_path = url.path.trim_end_matches('/');
        let (path, request) = match protocol {
            Protocol::Json => {
                if a.args.is_some() {
                    return Err(invalid(
                        "--args is for dirac-https and dips; use --json-body with --protocol json",
                    ));
                }
                let body = match &a.json_body {
                    Some(text) => parse_json("--json-body", text)?,
                    // The JSON API's echo takes its argument by name.
                    None if a.method == "echo" => serde_json::json!({"data": "loadtest"}),
                    None => Value::Object(Default::default()),
                };
                if !body.is_object() {
                    return Err(invalid("--json-body must be a JSON object"));
                }
                let path = format!("{trimmed_path}/api/v1/{}", a.method);
                let body = serde_json::to_vec(&body)
                    .expect("serialising a serde_json::Value into a Vec cannot fail");
                let request = post(
                    &url.host,
                    port,
                    &path,
                    "application/json",
                    &body,
                    keep_alive,
                );
                (
                    path,
                    Request::Http {
                        request,
                        expect: Expect::Success,
                        keep_alive,
                    },
                )
            }
            Protocol::DiracHttps | Protocol::Dips => {
                if a.json_body.is_some() {
                    return Err(invalid(
                        "--json-body is only for --protocol json; use --args",
                    ));
                }
                let args = match &a.args {
                    Some(text) => parse_json("--args", text)?,
                    None if a.method == "echo" => serde_json::json!(["loadtest"]),
                    None => serde_json::json!([]),
                };
                if !args.is_array() {
                    return Err(invalid(
                        "--args must be a JSON list of positional arguments",
                    ));
                }
                let path = if trimmed_path.is_empty() {
                    DEFAULT_SERVICE_PATH.to_owned()
                } else {
                    url.path.clone()
                };
                if protocol == Protocol::Dips {
                    let service = path.trim_matches('/');
                    let args = args.as_array().into_iter().flatten().cloned();
                    let call = RpcCall::new(
                        service,
                        &a.method,
                        args.map(DiracValue::from_json).collect(),
                        DiracValue::Str(String::new()),
                        "loadtest",
                    )
                    .map_err(|e| invalid(format!("--args cannot be sent over DISET: {e}")))?;
                    (path.clone(), Request::Dips(call))
                } else {
                    let mut body = b"method=".to_vec();
                    encode::form_encode_into(&mut body, a.method.as_bytes());
                    body.extend_from_slice(b"&args=");
                    encode::form_encode_into(&mut body, &encode::python_json(&args));
                    body.extend_from_slice(b"&clientVO=unknown&clientSetup=None");
                    let request = post(
                        &url.host,
                        port,
                        &path,
                        "application/x-www-form-urlencoded",
                        &body,
                        keep_alive,
                    );
                    (
                        path,
                        Request::Http {
                            request,
                            expect: Expect::DiracOk,
                            keep_alive,
                        },
                    )
                }
            }
        };

        if a.concurrency == 0 || a.threads == 0 {
            return Err(invalid("--concurrency and --threads must be at least 1"));
        }
        if a.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return Err(invalid(
                "--rate must be a positive number of requests per second",
            ));
        }
        if a.requests == Some(0) || a.duration.is_some_and(|d| d.is_zero()) || a.timeout.is_zero() {
            return Err(invalid(
                "--requests, --duration and --timeout must be positive",
            ));
        }
        let duration = match (a.duration, a.requests) {
            (None, None) => Some(Duration::from_secs(10)),
            (d, _) => d,
        };

        let addrs: Vec<_> = (url.host.as_str(), port)
            .to_socket_addrs()
            .map_err(|source| LoadtestError::Resolve {
                host: url.host.clone(),
                source,
            })?
            .collect();
        let trust = if a.insecure {
            Trust::Insecure
        } else {
            let ca_dir = a.ca_dir.clone().or_else(|| {
                std::env::var_os("X509_CERT_DIR")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            });
            Trust::CaDir(ca_dir.ok_or_else(|| {
                LoadtestError::Credentials(
                    "no CA directory: pass --ca-dir, set X509_CERT_DIR, or use --insecure"
                        .to_owned(),
                )
            })?)
        };
        let identity = a
            .cert
            .as_deref()
            .map(|cert| Identity::from_pem_files(cert, a.key.as_deref()))
            .transpose()?;
        let tls = TlsOptions {
            identity,
            trust,
            resume: !a.no_resume,
        };
        let connector = Connector::tls(tls, &url.host, addrs)?;

        let threads = a.threads.min(a.concurrency);
        Ok(Plan {
            report_target: TargetInfo {
                url: a.url.clone(),
                protocol: protocol.name(),
                method: a.method.clone(),
                path,
            },
            load: Load {
                connector: Arc::new(connector),
                callers: a.concurrency,
                threads,
                connect_first: false,
                // Progress only on a terminal, so logs and CI output get just the final report.
                progress: std::io::stderr()
                    .is_terminal()
                    .then(|| Arc::new(Progress::default())),
            },
            scenario: Scenario {
                request,
                schedule: a.rate.map_or(Schedule::Closed, Schedule::Rate),
                warmup: a.warmup,
                measure: duration,
                requests: a.requests,
                timeout: Some(a.timeout),
            },
            report_load: LoadInfo {
                mode: if a.rate.is_some() { "open" } else { "closed" },
                concurrency: a.concurrency,
                rate_target: a.rate,
                threads,
                connection: if keep_alive {
                    "keep-alive"
                } else {
                    "new-connection"
                },
                tls_resumption: !a.no_resume,
                warmup_s: a.warmup.as_secs_f64(),
                timeout_s: a.timeout.as_secs_f64(),
            },
        })
    }
}

/// The connector and the request a run of `args` would use, without running it: for tools that
/// drive the calls themselves (the flood's identified callers and bursts).
pub fn prepare(args: &LoadtestArgs) -> Result<(Arc<Connector>, Request), LoadtestError> {
    let plan = Plan::new(args)?;
    Ok((plan.load.connector, plan.scenario.request))
}

/// A POST as DIRAC's Python clients send it.
fn post(
    host: &str,
    port: u16,
    path: &str,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let host = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let user_agent = concat!("tokenmanager-loadtest/", env!("CARGO_PKG_VERSION"));
    let connection = if keep_alive { "keep-alive" } else { "close" };
    http::request(
        "POST",
        &host,
        path,
        &[
            ("User-Agent", user_agent),
            ("Accept", "*/*"),
            ("Connection", connection),
            ("Content-Type", content_type),
        ],
        Some(body),
    )
}

/// Runs the load test described by `args` and returns the report. Also writes `--json-out`
/// when given (the file is created before any load is sent, so a bad path fails fast).
pub fn run(args: LoadtestArgs) -> Result<Report, LoadtestError> {
    let plan = Plan::new(&args)?;
    let json_out = args
        .json_out
        .as_ref()
        .map(|path| {
            std::fs::File::create(path)
                .map(|f| (path, f))
                .map_err(|source| LoadtestError::Output {
                    path: path.clone(),
                    source,
                })
        })
        .transpose()?;
    let started = Instant::now();
    let done = AtomicBool::new(false);
    let run = std::thread::scope(|scope| {
        if let Some(progress) = &plan.load.progress {
            let measure_start = started + plan.scenario.warmup;
            let done = &done;
            scope.spawn(move || show_progress(progress, done, started, measure_start));
        }
        let run = engine::run(&plan.load, vec![plan.scenario], || {});
        done.store(true, Relaxed);
        run
    })?;
    let measured = run
        .scenarios
        .into_iter()
        .next()
        .expect("one result per scenario");
    let report =
        measured
            .stats
            .into_report(plan.report_target, plan.report_load, measured.measure_start);
    if let Some((path, file)) = json_out {
        let mut w = std::io::BufWriter::new(file);
        serde_json::to_writer_pretty(&mut w, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| w.write_all(b"\n"))
            .and_then(|()| w.flush())
            .map_err(|source| LoadtestError::Output {
                path: path.clone(),
                source,
            })?;
    }
    Ok(report)
}

/// The live line on standard error: calls so far and the current rate, once a second.
fn show_progress(progress: &Progress, done: &AtomicBool, start: Instant, measure_start: Instant) {
    let (mut last_print, mut last_count) = (Instant::now(), 0);
    while !done.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if last_print.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let (ok, errors) = (progress.ok.load(Relaxed), progress.errors.load(Relaxed));
        let rate = (ok + errors - last_count) as f64 / last_print.elapsed().as_secs_f64();
        let phase = if Instant::now() < measure_start {
            "warm-up"
        } else {
            "measuring"
        };
        eprint!(
            "\r\x1b[K{:6.1}s {phase}: {ok} ok, {errors} errors, {rate:.0} req/s",
            start.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
        (last_print, last_count) = (Instant::now(), ok + errors);
    }
    eprint!("\r\x1b[K");
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("https://host.example:8443/Framework/TokenManager").unwrap();
        assert_eq!(
            (u.scheme.as_str(), u.host.as_str(), u.port, u.path.as_str()),
            (
                "https",
                "host.example",
                Some(8443),
                "/Framework/TokenManager"
            )
        );
        let u = parse_url("dips://[::1]:9181").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", Some(9181), "")
        );
        assert_eq!(parse_url("HTTPS://h").unwrap().port, None);
        for bad in [
            "",
            "localhost:8443",
            "https://",
            "https://h:0",
            "https://h:99999",
            "https://h:x/",
            "https://u@h:1",
            "https://[::1:1",
        ] {
            assert!(
                matches!(parse_url(bad), Err(LoadtestError::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(
            parse_duration("ten").is_err()
                && parse_duration("5 parsecs").is_err()
                && parse_duration("-1s").is_err()
        );
    }
}
