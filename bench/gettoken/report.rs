//! The results: a table on stdout and the same numbers as JSON.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use crate::outcome::Outcome;

/// A target of the issue, checked against a measured value.
pub struct Target {
    pub name: String,
    pub measured: String,
    pub limit: String,
    pub pass: bool,
}

impl Target {
    pub fn json(&self) -> Value {
        json!({"name": self.name, "measured": self.measured, "limit": self.limit, "pass": self.pass})
    }

    pub fn line(&self) -> String {
        format!(
            "  [{}] {:<58} {:>12}  (target {})",
            if self.pass { "PASS" } else { "FAIL" },
            self.name,
            self.measured,
            self.limit
        )
    }
}

pub fn outcome_json(outcome: &Outcome, ping: Option<&Outcome>) -> Value {
    let mut point = json!({
        "scenario": outcome.scenario,
        "concurrency": outcome.concurrency,
        "requests_per_second": round(outcome.throughput(), 1),
        "p50_ms": round(outcome.ms(0.50), 3),
        "p99_ms": round(outcome.ms(0.99), 3),
        "max_ms": round(outcome.max_ms(), 3),
        "ratio_to_ping": ping.map(|p| round(outcome.throughput() / p.throughput(), 3)),
        "ok": outcome.ok(),
        "errors": outcome.errors(),
        "reconnects": outcome.reconnects(),
        "first_error": outcome.first_error(),
        "window_seconds": round(outcome.seconds, 3),
        "connect_seconds": round(outcome.connect_seconds, 3),
        "server_cpu_us_per_request": round(outcome.cpu_us_per_request(0), 1),
        "server_cores": round(outcome.cores(0), 2),
        "client_cores": round(outcome.cores(1), 2),
        "idp_cores": round(outcome.cores(2), 2),
        "other_cores": round(outcome.other_cores(), 2),
    });
    if let Some(calls) = &outcome.db_calls {
        point["db_calls"] = calls.json(outcome.ok());
    }
    point
}

pub fn round(value: f64, decimals: i32) -> f64 {
    let factor = 10f64.powi(decimals);
    (value * factor).round() / factor
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The hit table: one row per (concurrency, scenario).
pub fn hit_table(levels: &[Vec<Outcome>]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {:>7}  {:<22} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>15} {:>6}",
        "callers",
        "request",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "vs ping",
        "srv",
        "errors",
        "srv/cli/idp/oth",
        "reconn"
    );
    let _ = writeln!(
        out,
        "  {:>7}  {:<22} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>15} {:>6}",
        "", "", "", "", "", "", "", "µs/req", "", "cores", ""
    );
    for level in levels {
        let ping = level.iter().find(|o| o.scenario == "ping");
        for outcome in level {
            let ratio = match ping {
                Some(p) if outcome.scenario != "ping" => {
                    format!("{:.1} %", 100.0 * outcome.throughput() / p.throughput())
                }
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "  {:>7}  {:<22} {:>8.0} {:>8.3} {:>8.3} {:>8.2} {:>8} {:>7.0} {:>7} {:>15} {:>6}",
                outcome.concurrency,
                outcome.scenario,
                outcome.throughput(),
                outcome.ms(0.50),
                outcome.ms(0.99),
                outcome.max_ms(),
                ratio,
                outcome.cpu_us_per_request(0),
                outcome.errors(),
                format!(
                    "{:.1}/{:.1}/{:.1}/{:.1}",
                    outcome.cores(0),
                    outcome.cores(1),
                    outcome.cores(2),
                    outcome.other_cores()
                ),
                outcome.reconnects()
            );
        }
    }
    out
}

pub fn write_json(path: &Path, value: &Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap() + "\n").unwrap();
}
