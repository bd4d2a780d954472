//! The flood's report (schema `tokenmanager-flood/1`), its percentiles and the targets'
//! verdicts: pure functions of the measured figures, so that they can be tested alone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "tokenmanager-flood/1";

/// Nearest-rank percentile (`q` in 0..=1) of ascending values; `None` when there are none.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// One timed call of an identified caller. A failed call keeps its latency (until the failure);
/// a timed-out one has the timeout as its latency.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub latency_us: u64,
    /// The error kind (`connect`, `tls`, `io`, `protocol`, `http_status`, `s_error`, `timeout`)
    /// and its message.
    pub error: Option<(&'static str, String)>,
}

/// What the identified callers of one front-end got.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FrontendResult {
    /// `dirac-https`, `json` or `dips`.
    pub frontend: String,
    pub method: String,
    pub calls: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub error_samples: Vec<String>,
    /// Over every call, the failed ones included (a timeout counts as its timeout).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

const MAX_SAMPLES: usize = 5;

pub fn summarize(frontend: &str, method: &str, records: &[CallRecord]) -> FrontendResult {
    let mut latencies: Vec<u64> = records.iter().map(|r| r.latency_us).collect();
    latencies.sort_unstable();
    let ms = |q: f64| percentile(&latencies, q).map(|us| round3(us as f64 / 1000.0));
    let mut result = FrontendResult {
        frontend: frontend.to_owned(),
        method: method.to_owned(),
        calls: records.len() as u64,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: ms(1.0),
        ..FrontendResult::default()
    };
    for record in records {
        match &record.error {
            None => result.ok += 1,
            Some((kind, message)) => {
                result.errors += 1;
                *result.error_kinds.entry((*kind).to_owned()).or_default() += 1;
                if result.error_samples.len() < MAX_SAMPLES
                    && !result.error_samples.contains(message)
                {
                    result
                        .error_samples
                        .push(message.chars().take(200).collect());
                }
            }
        }
    }
    result
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Counters of one kind of attack connection (summed over the attack processes).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct AttackCounters {
    /// Connections this kind is to hold open.
    pub requested: u64,
    /// Open now (at the hold's end in the report).
    pub open: u64,
    /// Most open at once (summed over processes: an upper bound).
    pub peak_open: u64,
    /// Successful opens (TCP connect; for slow-body also the TLS handshake and the request head).
    pub opens: u64,
    /// Opens that replaced a connection the server had closed.
    pub reopens: u64,
    /// Open connections the server closed (or reset).
    pub closed_by_server: u64,
    /// Connections on which the server sent something (e.g. an error reply) before closing.
    pub server_replies: u64,
    /// TCP connects that failed or timed out.
    pub connect_errors: u64,
    /// TLS handshakes (slow-body) that failed or timed out.
    pub handshake_errors: u64,
    /// Body bytes dripped (slow-body).
    pub body_bytes: u64,
}

impl AttackCounters {
    pub fn add(&mut self, o: &AttackCounters) {
        self.requested += o.requested;
        self.open += o.open;
        self.peak_open += o.peak_open;
        self.opens += o.opens;
        self.reopens += o.reopens;
        self.closed_by_server += o.closed_by_server;
        self.server_replies += o.server_replies;
        self.connect_errors += o.connect_errors;
        self.handshake_errors += o.handshake_errors;
        self.body_bytes += o.body_bytes;
    }
}

/// The three kinds of attack connection.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Attack {
    pub idle_https: AttackCounters,
    pub idle_dips: AttackCounters,
    pub slow_body: AttackCounters,
}

impl Attack {
    pub fn add(&mut self, o: &Attack) {
        self.idle_https.add(&o.idle_https);
        self.idle_dips.add(&o.idle_dips);
        self.slow_body.add(&o.slow_body);
    }

    pub fn kinds(&self) -> [(&'static str, &AttackCounters); 3] {
        [
            ("idle-https", &self.idle_https),
            ("idle-dips", &self.idle_dips),
            ("slow-body", &self.slow_body),
        ]
    }
}

/// The pass/fail limits, part of the report so that the verdicts follow from it alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// Identified callers' p99 must be below this.
    pub p99_ms: f64,
    /// Server RSS during the flood must be below this.
    pub rss_kb_during: u64,
    /// After release, descriptors must fall to at most idle + this.
    pub fd_slack: u64,
    /// After release and after the bursts' idle wait, RSS at most this × idle.
    pub rss_factor: f64,
    /// How long after the release descriptors and RSS may take to come back.
    pub recovery_s: f64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Resources {
    pub rss_kb: u64,
    pub fds: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Recovery {
    /// Seconds waited after the release (until both figures were back at once, or the limit).
    pub waited_s: f64,
    /// The figures when the wait ended.
    pub rss_kb: u64,
    pub fds: u64,
    /// Seconds until descriptors were first back to idle + slack / RSS to the factor × idle;
    /// `None`: not within the wait.
    pub fds_back_after_s: Option<f64>,
    pub rss_back_after_s: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FloodPhase {
    pub attack_processes: usize,
    /// Attack source addresses, e.g. `127.0.0.2-127.0.0.254`, and how many.
    pub sources: String,
    pub source_count: usize,
    /// Time until every attack connection had been tried once.
    pub ramp_s: f64,
    pub ramp_complete: bool,
    pub hold_s: f64,
    /// Attack counters when the flood was released.
    pub attack: Attack,
    pub callers_per_frontend: usize,
    pub call_interval_ms: f64,
    pub call_timeout_s: f64,
    pub frontends: Vec<FrontendResult>,
    /// Maxima over the samples taken from the ramp's start to the release.
    pub during: Resources,
    pub recovery: Recovery,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BurstPart {
    pub frontend: String,
    pub calls: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// Of the successful calls.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BurstRound {
    pub seconds: f64,
    pub parts: Vec<BurstPart>,
    /// Right after the burst's last reply.
    pub after: Resources,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BurstsPhase {
    pub size: usize,
    pub rounds: Vec<BurstRound>,
    pub idle_s: f64,
    pub after_idle: Resources,
    /// Maxima over the samples of the bursts.
    pub during: Resources,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// Seconds since the tool started.
    pub t: f64,
    pub phase: String,
    pub rss_kb: u64,
    pub fds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerInfo {
    pub pid: u32,
    pub https_port: u16,
    pub dips_port: u16,
    /// Soft "Max open files" of the server process.
    pub fd_limit: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Target {
    pub name: String,
    pub measured: String,
    pub limit: String,
    pub pass: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FloodReport {
    pub schema: String,
    pub server: ServerInfo,
    pub limits: Limits,
    /// After the warm-up, before any load.
    pub idle: Resources,
    pub flood: Option<FloodPhase>,
    pub bursts: Option<BurstsPhase>,
    /// Set when the server process went away during the run.
    pub server_exited: Option<String>,
    pub targets: Vec<Target>,
    pub samples: Vec<Sample>,
}

pub fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

/// The targets' verdicts, from the report's figures and limits.
pub fn evaluate(r: &FloodReport) -> Vec<Target> {
    let l = &r.limits;
    let mut targets = Vec::new();
    let mut push = |name: String, measured: String, limit: String, pass: bool| {
        targets.push(Target {
            name,
            measured,
            limit,
            pass,
        })
    };
    let rss_cap = (r.idle.rss_kb as f64 * l.rss_factor) as u64;
    let rss_cap_text = format!(
        "<= {} × idle {} = {}",
        l.rss_factor,
        mib(r.idle.rss_kb),
        mib(rss_cap)
    );
    if let Some(f) = &r.flood {
        for fe in &f.frontends {
            push(
                format!("flood: {} {} p99 latency", fe.frontend, fe.method),
                match fe.p99_ms {
                    Some(p99) => format!("{p99:.1} ms over {} calls", fe.calls),
                    None => "no call".to_owned(),
                },
                format!("< {} ms", l.p99_ms),
                fe.p99_ms.is_some_and(|p| p < l.p99_ms),
            );
            let kinds: Vec<String> = fe
                .error_kinds
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            push(
                format!("flood: {} {} errors", fe.frontend, fe.method),
                if kinds.is_empty() {
                    format!("0 of {}", fe.calls)
                } else {
                    format!("{} of {} ({})", fe.errors, fe.calls, kinds.join(", "))
                },
                "0".to_owned(),
                fe.errors == 0 && fe.calls > 0,
            );
        }
        push(
            "flood: server RSS during the flood (max)".to_owned(),
            mib(f.during.rss_kb),
            format!("< {}", mib(l.rss_kb_during)),
            f.during.rss_kb < l.rss_kb_during,
        );
        let fd_cap = r.idle.fds + l.fd_slack;
        push(
            "flood: server descriptors after release".to_owned(),
            match f.recovery.fds_back_after_s {
                Some(s) => format!("back {s:.1} s after release ({} then)", f.recovery.fds),
                None => format!("{} after {:.0} s", f.recovery.fds, f.recovery.waited_s),
            },
            format!(
                "<= idle {} + slack {} = {fd_cap} within {:.0} s",
                r.idle.fds, l.fd_slack, l.recovery_s
            ),
            f.recovery.fds_back_after_s.is_some(),
        );
        push(
            "flood: server RSS after release".to_owned(),
            match f.recovery.rss_back_after_s {
                Some(s) => format!(
                    "back {s:.1} s after release ({} then)",
                    mib(f.recovery.rss_kb)
                ),
                None => format!(
                    "{} after {:.0} s",
                    mib(f.recovery.rss_kb),
                    f.recovery.waited_s
                ),
            },
            format!("{rss_cap_text} within {:.0} s", l.recovery_s),
            f.recovery.rss_back_after_s.is_some(),
        );
    }
    if let Some(b) = &r.bursts {
        push(
            format!(
                "bursts: server RSS {:.0} s after {} bursts of {}",
                b.idle_s,
                b.rounds.len(),
                b.size
            ),
            mib(b.after_idle.rss_kb),
            rss_cap_text,
            b.after_idle.rss_kb <= rss_cap,
        );
    }
    if let Some(why) = &r.server_exited {
        push(
            "server alive through the run".to_owned(),
            why.clone(),
            "alive".to_owned(),
            false,
        );
    }
    targets
}

/// The message `--check` prints for failed targets; `None` when all passed.
pub fn failures(targets: &[Target]) -> Option<String> {
    let failed: Vec<String> = targets
        .iter()
        .filter(|t| !t.pass)
        .map(|t| format!("  {}: {} (target {})", t.name, t.measured, t.limit))
        .collect();
    (!failed.is_empty()).then(|| {
        format!(
            "{} of {} targets FAILED:\n{}",
            failed.len(),
            targets.len(),
            failed.join("\n")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 0.99), None);
        assert_eq!(percentile(&[7], 0.0), Some(7));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        // With fewer than 100 calls, p99 is the slowest: one slow call is enough to fail.
        let mut w: Vec<u64> = vec![1_000; 50];
        w.push(2_000_000);
        assert_eq!(percentile(&w, 0.99), Some(2_000_000));
        // 1 slow call in 200 stays under p99.
        let mut x: Vec<u64> = vec![1_000; 199];
        x.push(9_000_000);
        assert_eq!(percentile(&x, 0.99), Some(1_000));
    }

    fn ok(us: u64) -> CallRecord {
        CallRecord {
            latency_us: us,
            error: None,
        }
    }

    fn failed(us: u64, kind: &'static str) -> CallRecord {
        CallRecord {
            latency_us: us,
            error: Some((kind, format!("{kind} error"))),
        }
    }

    #[test]
    fn failed_calls_count_in_the_latency() {
        let mut records: Vec<CallRecord> = (0..98).map(|_| ok(2_000)).collect();
        records.push(failed(10_000_000, "timeout"));
        records.push(failed(10_000_000, "timeout"));
        records.push(failed(50, "connect"));
        let s = summarize("dips", "ping", &records);
        assert_eq!((s.calls, s.ok, s.errors), (101, 98, 3));
        assert_eq!(s.error_kinds["timeout"], 2);
        assert_eq!(s.error_kinds["connect"], 1);
        assert_eq!(s.error_samples, vec!["timeout error", "connect error"]);
        assert_eq!(s.p50_ms, Some(2.0));
        assert_eq!(s.p99_ms, Some(10_000.0));
        assert_eq!(s.max_ms, Some(10_000.0));
        let none = summarize("json", "ping", &[]);
        assert_eq!((none.calls, none.p99_ms), (0, None));
    }

    fn frontend(name: &str, p99_ms: f64, errors: u64) -> FrontendResult {
        FrontendResult {
            frontend: name.into(),
            method: "ping".into(),
            calls: 100,
            ok: 100 - errors,
            errors,
            error_kinds: if errors > 0 {
                [("timeout".to_owned(), errors)].into()
            } else {
                BTreeMap::new()
            },
            p50_ms: Some(1.0),
            p99_ms: Some(p99_ms),
            max_ms: Some(p99_ms),
            ..FrontendResult::default()
        }
    }

    fn passing() -> FloodReport {
        FloodReport {
            schema: SCHEMA.into(),
            server: ServerInfo {
                pid: 1,
                https_port: 1,
                dips_port: 2,
                fd_limit: Some(1024),
            },
            limits: Limits {
                p99_ms: 1000.0,
                rss_kb_during: 256 * 1024,
                fd_slack: 8,
                rss_factor: 2.0,
                recovery_s: 60.0,
            },
            idle: Resources {
                rss_kb: 40 * 1024,
                fds: 30,
            },
            flood: Some(FloodPhase {
                frontends: ["dirac-https", "json", "dips"]
                    .iter()
                    .map(|n| frontend(n, 20.0, 0))
                    .collect(),
                during: Resources {
                    rss_kb: 100 * 1024,
                    fds: 900,
                },
                recovery: Recovery {
                    waited_s: 3.0,
                    rss_kb: 60 * 1024,
                    fds: 35,
                    fds_back_after_s: Some(2.0),
                    rss_back_after_s: Some(0.0),
                },
                ..FloodPhase::default()
            }),
            bursts: Some(BurstsPhase {
                size: 2000,
                rounds: vec![BurstRound::default(); 4],
                idle_s: 60.0,
                after_idle: Resources {
                    rss_kb: 80 * 1024,
                    fds: 30,
                },
                during: Resources::default(),
            }),
            server_exited: None,
            targets: Vec::new(),
            samples: Vec::new(),
        }
    }

    fn failed_names(r: &FloodReport) -> Vec<String> {
        evaluate(r)
            .into_iter()
            .filter(|t| !t.pass)
            .map(|t| t.name)
            .collect()
    }

    #[test]
    fn all_targets_pass() {
        let r = passing();
        let targets = evaluate(&r);
        // p99 and errors per front-end, RSS during, descriptors and RSS after, bursts' RSS.
        assert_eq!(targets.len(), 3 * 2 + 3 + 1);
        assert!(targets.iter().all(|t| t.pass), "{targets:#?}");
        assert_eq!(failures(&targets), None);
    }

    #[test]
    fn each_missed_target_is_named() {
        let mut r = passing();
        let f = r.flood.as_mut().unwrap();
        f.frontends[2] = frontend("dips", 10_000.0, 3);
        f.frontends[0].p99_ms = Some(1000.0); // the limit is exclusive
        f.during.rss_kb = 256 * 1024;
        f.recovery.fds_back_after_s = None;
        f.recovery.fds = 500;
        r.bursts.as_mut().unwrap().after_idle.rss_kb = 80 * 1024 + 1;
        assert_eq!(
            failed_names(&r),
            [
                "flood: dirac-https ping p99 latency",
                "flood: dips ping p99 latency",
                "flood: dips ping errors",
                "flood: server RSS during the flood (max)",
                "flood: server descriptors after release",
                "bursts: server RSS 60 s after 4 bursts of 2000",
            ]
        );
        let message = failures(&evaluate(&r)).unwrap();
        assert!(message.starts_with("6 of 10 targets FAILED:"), "{message}");
        assert!(
            message.contains("flood: dips ping errors: 3 of 100 (timeout 3) (target 0)"),
            "{message}"
        );
        assert!(message.contains("500 after 3 s"), "{message}");
    }

    #[test]
    fn no_calls_or_a_dead_server_fail() {
        let mut r = passing();
        let f = r.flood.as_mut().unwrap();
        f.frontends[1] = FrontendResult {
            frontend: "json".into(),
            method: "ping".into(),
            ..FrontendResult::default()
        };
        f.recovery.rss_back_after_s = None;
        r.server_exited = Some("gone".into());
        assert_eq!(
            failed_names(&r),
            [
                "flood: json ping p99 latency",
                "flood: json ping errors",
                "flood: server RSS after release",
                "server alive through the run",
            ]
        );
    }

    #[test]
    fn scenarios_not_run_have_no_targets() {
        let mut r = passing();
        r.flood = None;
        assert_eq!(evaluate(&r).len(), 1);
        r.bursts = None;
        assert!(evaluate(&r).is_empty());
    }

    #[test]
    fn the_report_round_trips_through_json() {
        let mut r = passing();
        r.targets = evaluate(&r);
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<FloodReport>(&text).unwrap(), r);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["schema"], "tokenmanager-flood/1");
        assert_eq!(value["flood"]["recovery"]["fds_back_after_s"], 2.0);
    }
}
