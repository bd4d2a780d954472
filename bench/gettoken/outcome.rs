//! The bench's view of the load generator (`tokenmanager_loadtest::engine`): its scenarios at
//! one concurrency, and what each gave, with the CPU time of the server, this client and the IdP
//! around each scenario.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenmanager_loadtest::Stats;
use tokenmanager_loadtest::engine::{self, Expect, Load, Request, Schedule};

use crate::dbcalls::{self, DbCalls, DbOperations};
use crate::fixture::{cpu_seconds, machine_busy_seconds};
use crate::target::Target;

/// One kind of request of a load point.
#[derive(Clone)]
pub struct Scenario {
    pub name: String,
    pub request: Vec<u8>,
    /// The reply must start with this (e.g. `{"ok":true`).
    pub expect_prefix: &'static [u8],
    /// `Closed`, `Paced` or `Once` (a burst: each caller sends one request, all at once).
    pub schedule: Schedule,
}

/// What one scenario at one concurrency gave.
pub struct Outcome {
    pub scenario: String,
    pub concurrency: usize,
    /// The counted calls (sent after the warm-up and answered within the measured time; for a
    /// burst, all): good ones with their latency, errors, connections re-opened.
    pub stats: Stats,
    /// The measuring window (for a burst: first send to last reply).
    pub seconds: f64,
    /// Time to open all the connections of this concurrency (TLS handshakes).
    pub connect_seconds: f64,
    /// Wall time of the whole scenario, warm-up included.
    pub wall_seconds: f64,
    /// CPU seconds each of the probed processes used during the whole scenario, then the busy
    /// CPU seconds of the whole machine.
    pub cpu_seconds: Vec<f64>,
    /// What the server asked its database over the counted run (when its metrics were scraped).
    pub db_calls: Option<DbCalls>,
}

impl Outcome {
    pub fn ok(&self) -> u64 {
        self.stats.ok
    }

    pub fn errors(&self) -> u64 {
        self.stats.errors.total
    }

    /// Connections re-opened inside the window (the server closed one).
    pub fn reconnects(&self) -> u64 {
        self.stats.connections.opened
    }

    /// A sample of what went wrong.
    pub fn first_error(&self) -> Option<&str> {
        self.stats.samples.first().map(String::as_str)
    }

    pub fn throughput(&self) -> f64 {
        self.ok() as f64 / self.seconds
    }

    pub fn ms(&self, quantile: f64) -> f64 {
        self.stats.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.stats.latency.max() as f64 / 1000.0
    }

    /// CPU microseconds per good reply of probed process `i`, over the whole scenario.
    pub fn cpu_us_per_request(&self, i: usize) -> f64 {
        self.cpu_seconds.get(i).copied().unwrap_or(0.0) * 1e6 / self.stats.all_ok.max(1) as f64
    }

    /// Cores process `i` kept busy on average during the scenario.
    pub fn cores(&self, i: usize) -> f64 {
        self.cpu_seconds.get(i).copied().unwrap_or(0.0) / self.wall_seconds.max(1e-9)
    }

    /// Cores kept busy by everything else (other processes, the kernel outside them).
    pub fn other_cores(&self) -> f64 {
        let Some((machine, probed)) = self.cpu_seconds.split_last() else {
            return 0.0;
        };
        ((machine - probed.iter().sum::<f64>()) / self.wall_seconds.max(1e-9)).max(0.0)
    }
}

/// Opens `concurrency` connections to `target` (spread over `threads` threads), then runs each
/// scenario in turn on them: `warmup`, then `measure` counted (a burst: once). Connections stay
/// open from one scenario to the next (they are re-opened only if the server closes one). The
/// CPU time of the processes `probed` is sampled at each scenario's start and end. With
/// `metrics` (the server's metrics port), its database-operation counters are scraped when each
/// scenario's counted run begins (a thread that waits out the warm-up) and when the scenario
/// ends (the next boundary: the last reply is in, the next scenario's callers start meanwhile).
#[expect(
    clippy::too_many_arguments,
    reason = "one scenario's parameters, spelled out at the call sites"
)]
pub fn run_level(
    target: &Target,
    concurrency: usize,
    threads: usize,
    scenarios: &[Scenario],
    warmup: Duration,
    measure: Duration,
    probed: &[u32],
    metrics: Option<&Target>,
) -> Vec<Outcome> {
    let load = Load {
        connector: Arc::clone(target),
        callers: concurrency,
        threads,
        connect_first: true,
        progress: None,
    };
    let runs = scenarios
        .iter()
        .map(|s| {
            let once = s.schedule == Schedule::Once;
            engine::Scenario {
                request: Request::Http {
                    request: s.request.clone(),
                    expect: Expect::BodyPrefix(s.expect_prefix.to_vec()),
                    keep_alive: true,
                },
                schedule: s.schedule,
                warmup: if once { Duration::ZERO } else { warmup },
                measure: (!once).then_some(measure),
                requests: None,
                timeout: None,
            }
        })
        .collect();
    let mut samples: Vec<(Instant, Vec<f64>)> = Vec::new();
    let mut counted_from: Vec<std::thread::JoinHandle<DbOperations>> = Vec::new();
    let mut counted_to: Vec<DbOperations> = Vec::new();
    let run = engine::run(&load, runs, || {
        let now = Instant::now();
        let boundary = samples.len();
        if let Some(metrics) = metrics {
            // The end of the previous scenario, first: the next one's callers are starting.
            if boundary > 0 {
                counted_to.push(dbcalls::scrape(metrics));
            }
            if let Some(scenario) = scenarios.get(boundary) {
                let metrics = Arc::clone(metrics);
                let from = match scenario.schedule {
                    Schedule::Once => now,
                    _ => now + warmup,
                };
                counted_from.push(std::thread::spawn(move || {
                    std::thread::sleep(from.saturating_duration_since(Instant::now()));
                    dbcalls::scrape(&metrics)
                }));
            }
        }
        samples.push((
            Instant::now(),
            probed
                .iter()
                .map(|&pid| cpu_seconds(pid))
                .chain([machine_busy_seconds()])
                .collect(),
        ))
    })
    .expect("the load generator runs");
    let mut db_calls: Vec<Option<DbCalls>> = counted_from
        .into_iter()
        .zip(&counted_to)
        .map(|(from, to)| {
            let from = from.join().expect("the metrics scrape does not panic");
            Some(DbCalls::between(&from, to))
        })
        .collect();
    db_calls.resize(scenarios.len(), None);
    if run.connect_failures > 0 {
        eprintln!(
            "  {} connections failed (first: {})",
            run.connect_failures,
            run.connect_error.as_deref().unwrap_or_default()
        );
    }
    scenarios
        .iter()
        .zip(run.scenarios)
        .enumerate()
        .map(|(i, (scenario, measured))| {
            let seconds = match (
                scenario.schedule,
                measured.stats.first_send,
                measured.stats.last_done,
            ) {
                (Schedule::Once, Some(first), Some(last)) => {
                    last.duration_since(first).as_secs_f64()
                }
                _ => measure.as_secs_f64(),
            };
            Outcome {
                scenario: scenario.name.clone(),
                concurrency,
                stats: measured.stats,
                seconds,
                connect_seconds: run.connect_seconds,
                wall_seconds: samples[i + 1].0.duration_since(samples[i].0).as_secs_f64(),
                cpu_seconds: samples[i + 1]
                    .1
                    .iter()
                    .zip(&samples[i].1)
                    .map(|(end, start)| end - start)
                    .collect(),
                db_calls: db_calls[i].take(),
            }
        })
        .collect()
}
