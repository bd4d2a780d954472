//! Result collection (per caller, merged at the end) and the report: a readable table and
//! the JSON document described in the module docs.

use crate::wire::CallError;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Instant;

const SCHEMA: &str = "tokenmanager-loadtest/1";
const MAX_SAMPLES: usize = 5;
const MAX_SAMPLE_LEN: usize = 200;
/// Histogram range in µs: 1 µs .. 60 s, 3 significant digits.
const HIST_MAX_US: u64 = 60_000_000;

#[derive(Debug, Clone, Serialize)]
pub struct TargetInfo {
    pub url: String,
    pub protocol: &'static str,
    pub method: String,
    /// HTTP request path, or the DISET service path.
    pub path: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadInfo {
    /// `closed` (concurrency-driven) or `open` (rate-driven).
    pub mode: &'static str,
    pub concurrency: usize,
    pub rate_target: Option<f64>,
    pub threads: usize,
    /// `keep-alive` or `new-connection`.
    pub connection: &'static str,
    pub tls_resumption: bool,
    pub warmup_s: f64,
    pub timeout_s: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ErrorCounts {
    pub total: u64,
    pub connect: u64,
    pub tls: u64,
    /// Unexpected HTTP status codes (as strings, for JSON object keys) and their counts.
    pub http_status: BTreeMap<String, u64>,
    /// DIRAC `{"OK": false, ...}` replies.
    pub s_error: u64,
    pub timeout: u64,
    /// Malformed or unexpected replies.
    pub protocol: u64,
    /// Connection broken after the handshake.
    pub io: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnEvents {
    pub opened: u64,
    pub tls_resumed: u64,
    pub keepalive_retries: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub target: TargetInfo,
    pub load: LoadInfo,
    pub elapsed_s: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors: ErrorCounts,
    pub error_samples: Vec<String>,
    pub rate_ok_per_s: f64,
    pub latency_us: Option<Latency>,
    pub connections: ConnEvents,
}

/// Measurements of some callers (those of one thread, or a merge of several threads) in one
/// scenario. Only counted calls (sent after the warm-up, answered within the measured time) are
/// in it, but for `all_ok`.
pub struct Stats {
    pub ok: u64,
    /// Good replies, warm-up and late replies included.
    pub all_ok: u64,
    pub errors: ErrorCounts,
    /// Latencies of the good replies, in µs.
    pub latency: Histogram<u64>,
    pub connections: ConnEvents,
    /// Up to 5 distinct error messages, the first first.
    pub samples: Vec<String>,
    pub first_send: Option<Instant>,
    pub last_done: Option<Instant>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            ok: 0,
            all_ok: 0,
            errors: ErrorCounts::default(),
            latency: Histogram::new_with_bounds(1, HIST_MAX_US, 3)
                .expect("constant histogram bounds are valid"),
            connections: ConnEvents::default(),
            samples: Vec::new(),
            first_send: None,
            last_done: None,
        }
    }
}

/// One call: what came of it and when.
pub(crate) struct Call {
    pub(crate) result: Result<(), CallError>,
    pub(crate) sent: Instant,
    pub(crate) done: Instant,
    pub(crate) connections: ConnEvents,
    pub(crate) counted: bool,
}

impl Stats {
    pub(crate) fn record(&mut self, call: Call) {
        if call.result.is_ok() {
            self.all_ok += 1;
        }
        if !call.counted {
            return;
        }
        self.first_send = Some(self.first_send.map_or(call.sent, |t| t.min(call.sent)));
        self.last_done = Some(self.last_done.map_or(call.done, |t| t.max(call.done)));
        let c = &mut self.connections;
        c.opened += call.connections.opened;
        c.tls_resumed += call.connections.tls_resumed;
        c.keepalive_retries += call.connections.keepalive_retries;
        let err = match call.result {
            Ok(()) => {
                self.ok += 1;
                let latency = call.done.duration_since(call.sent);
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.latency.saturating_record(us.clamp(1, HIST_MAX_US));
                return;
            }
            Err(err) => err,
        };
        let e = &mut self.errors;
        e.total += 1;
        match &err {
            CallError::Connect(_) => e.connect += 1,
            CallError::Tls(_) => e.tls += 1,
            CallError::Io(_) => e.io += 1,
            CallError::Protocol(_) => e.protocol += 1,
            CallError::HttpStatus { code, .. } => {
                *e.http_status.entry(code.to_string()).or_default() += 1
            }
            CallError::SError(_) => e.s_error += 1,
            CallError::Timeout => e.timeout += 1,
        }
        if self.samples.len() < MAX_SAMPLES {
            self.add_sample(err.to_string());
        }
    }

    fn add_sample(&mut self, mut msg: String) {
        if let Some((cut, _)) = msg.char_indices().nth(MAX_SAMPLE_LEN) {
            msg.truncate(cut);
            msg.push('…');
        }
        if self.samples.len() < MAX_SAMPLES && !self.samples.contains(&msg) {
            self.samples.push(msg);
        }
    }

    pub fn merge(&mut self, other: Stats) {
        self.ok += other.ok;
        self.all_ok += other.all_ok;
        let (e, o) = (&mut self.errors, other.errors);
        e.total += o.total;
        e.connect += o.connect;
        e.tls += o.tls;
        e.s_error += o.s_error;
        e.timeout += o.timeout;
        e.protocol += o.protocol;
        e.io += o.io;
        for (code, n) in o.http_status {
            *e.http_status.entry(code).or_default() += n;
        }
        self.latency
            .add(&other.latency)
            .expect("histograms with identical bounds always merge");
        let (c, o) = (&mut self.connections, other.connections);
        c.opened += o.opened;
        c.tls_resumed += o.tls_resumed;
        c.keepalive_retries += o.keepalive_retries;
        for s in other.samples {
            self.add_sample(s);
        }
        self.first_send = match (self.first_send, other.first_send) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_done = self.last_done.max(other.last_done);
    }

    pub(crate) fn into_report(
        self,
        target: TargetInfo,
        load: LoadInfo,
        measure_start: Instant,
    ) -> Report {
        let elapsed_s = self.last_done.map_or(0.0, |t| {
            t.saturating_duration_since(measure_start).as_secs_f64()
        });
        let h = &self.latency;
        let latency_us = (self.ok > 0).then(|| Latency {
            min: h.min(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
        });
        Report {
            schema: SCHEMA,
            target,
            load,
            elapsed_s,
            requests: self.ok + self.errors.total,
            ok: self.ok,
            rate_ok_per_s: if elapsed_s > 0.0 {
                self.ok as f64 / elapsed_s
            } else {
                0.0
            },
            errors: self.errors,
            error_samples: self.samples,
            latency_us,
            connections: self.connections,
        }
    }
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// Writes the human-readable report.
pub fn print_report(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    let l = &r.load;
    let shape = match l.rate_target {
        Some(rate) => format!(
            "open loop at {rate} req/s, at most {} in flight",
            l.concurrency
        ),
        None => format!("closed loop, {} callers", l.concurrency),
    };
    writeln!(
        out,
        "target       {} ({}, method {}, path {})",
        r.target.url, r.target.protocol, r.target.method, r.target.path
    )?;
    writeln!(
        out,
        "load         {shape} on {} thread(s), {}, TLS resumption {}",
        l.threads,
        l.connection,
        if l.tls_resumption { "on" } else { "off" }
    )?;
    writeln!(
        out,
        "measured     {:.2} s after {:.2} s warm-up, timeout {} s",
        r.elapsed_s, l.warmup_s, l.timeout_s
    )?;
    writeln!(
        out,
        "requests     {} total, {} ok, {} errors",
        r.requests, r.ok, r.errors.total
    )?;
    writeln!(out, "throughput   {:.1} ok/s", r.rate_ok_per_s)?;
    let e = &r.errors;
    let statuses: Vec<String> = e
        .http_status
        .iter()
        .map(|(code, n)| format!("{code}: {n}"))
        .collect();
    let statuses = if statuses.is_empty() {
        "0".to_owned()
    } else {
        statuses.join(", ")
    };
    writeln!(
        out,
        "errors       connect {}, tls {}, http status {statuses}, S_ERROR {}, timeout {}, protocol {}, io {}",
        e.connect, e.tls, e.s_error, e.timeout, e.protocol, e.io
    )?;
    let c = &r.connections;
    writeln!(
        out,
        "connections  {} opened, {} TLS resumed, {} keep-alive retries (measured window only)",
        c.opened, c.tls_resumed, c.keepalive_retries
    )?;
    match &r.latency_us {
        Some(lat) => {
            writeln!(
                out,
                "latency (ms)      min      p50      p90      p99    p99.9      max     mean"
            )?;
            writeln!(
                out,
                "             {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8.3}",
                ms(lat.min),
                ms(lat.p50),
                ms(lat.p90),
                ms(lat.p99),
                ms(lat.p99_9),
                ms(lat.max),
                lat.mean / 1000.0
            )?;
        }
        None => writeln!(out, "latency      no successful requests")?,
    }
    if !r.error_samples.is_empty() {
        writeln!(out, "error samples:")?;
        for s in &r.error_samples {
            writeln!(out, "  {s}")?;
        }
    }
    Ok(())
}
