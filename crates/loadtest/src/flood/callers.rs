//! The identified callers (client certificate, from the default source address), timed while
//! the flood is held, and the bursts of legitimate connections. Each front-end's callers run on
//! a thread and runtime of their own, so that nothing in this process delays them; the attack
//! runs in other processes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::LocalSet;

use super::outcome::{BurstPart, CallRecord, round3};
use crate::connect::Connector;
use crate::engine::{self, Load, Request, Scenario, Schedule};
use crate::wire::CallError;
use crate::{LoadtestArgs, LoadtestError};

/// One front-end as an identified caller sees it: the load generator's own arguments, so that
/// connector and request are built by the same code as `tokenmanager-loadtest`'s.
#[derive(Clone)]
pub struct Frontend {
    pub name: &'static str,
    pub method: String,
    pub args: LoadtestArgs,
}

impl Frontend {
    pub fn prepare(&self) -> Result<(Arc<Connector>, Arc<Request>), LoadtestError> {
        let (connector, request) = crate::prepare(&self.args)?;
        Ok((connector, Arc::new(request)))
    }
}

pub fn error_kind(error: &CallError) -> &'static str {
    match error {
        CallError::Connect(_) => "connect",
        CallError::Tls(_) => "tls",
        CallError::Io(_) => "io",
        CallError::Protocol(_) => "protocol",
        CallError::HttpStatus { .. } => "http_status",
        CallError::SError(_) => "s_error",
        CallError::Timeout => "timeout",
    }
}

/// One call on a new connection, timed; a timeout counts as failed, with the timeout as latency.
async fn timed_call(connector: &Arc<Connector>, request: &Request, limit: Duration) -> CallRecord {
    let sent = Instant::now();
    let result = tokio::time::timeout(limit, engine::call_once(connector, request))
        .await
        .unwrap_or(Err(CallError::Timeout));
    let latency = match result {
        Err(CallError::Timeout) => limit,
        _ => sent.elapsed(),
    };
    CallRecord {
        latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        error: result.err().map(|e| (error_kind(&e), e.to_string())),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// `n` calls one after the other, on the calling thread.
pub fn sequence(
    frontend: &Frontend,
    n: usize,
    limit: Duration,
) -> Result<Vec<CallRecord>, LoadtestError> {
    let (connector, request) = frontend.prepare()?;
    let runtime = runtime().map_err(|e| LoadtestError::Worker(e.to_string()))?;
    Ok(runtime.block_on(async {
        let mut records = Vec::with_capacity(n);
        for _ in 0..n {
            records.push(timed_call(&connector, &request, limit).await);
        }
        records
    }))
}

/// Paced identified callers: per front-end, `callers` callers each starting a call every
/// `interval` (or at once when the last one took longer), out of phase, until `until`. Every
/// call started before `until` counts, however late it ends. Blocks until all are done; the
/// records per front-end, in the order of `frontends`.
pub fn paced(
    frontends: &[Frontend],
    callers: usize,
    interval: Duration,
    limit: Duration,
    until: Instant,
) -> Result<Vec<Vec<CallRecord>>, LoadtestError> {
    let prepared: Vec<_> = frontends
        .iter()
        .map(Frontend::prepare)
        .collect::<Result<_, _>>()?;
    std::thread::scope(|scope| {
        let threads: Vec<_> = prepared
            .into_iter()
            .map(|(connector, request)| {
                scope.spawn(move || -> std::io::Result<Vec<CallRecord>> {
                    let runtime = runtime()?;
                    let local = LocalSet::new();
                    Ok(local.block_on(&runtime, async {
                        let start = Instant::now();
                        let tasks: Vec<_> = (0..callers.max(1))
                            .map(|i| {
                                let (connector, request) =
                                    (Arc::clone(&connector), Arc::clone(&request));
                                let mut due = start + interval.mul_f64(i as f64 / callers as f64);
                                tokio::task::spawn_local(async move {
                                    let mut records = Vec::new();
                                    while due < until {
                                        tokio::time::sleep_until(due.into()).await;
                                        records.push(timed_call(&connector, &request, limit).await);
                                        due = (due + interval).max(Instant::now());
                                    }
                                    records
                                })
                            })
                            .collect();
                        let mut all = Vec::new();
                        for task in tasks {
                            all.extend(task.await.expect("a caller does not panic"));
                        }
                        all
                    }))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| LoadtestError::Worker("a caller thread panicked".into()))?
                    .map_err(|e| LoadtestError::Worker(format!("cannot start a runtime: {e}")))
            })
            .collect()
    })
}

/// One burst: `size` calls at once, split evenly over `frontends`, each on a new connection
/// (the load generator's engine, one thread per front-end).
pub fn burst(
    frontends: &[Frontend],
    size: usize,
    limit: Duration,
) -> Result<(Vec<BurstPart>, f64), LoadtestError> {
    let started = Instant::now();
    let n = frontends.len().max(1);
    let parts = std::thread::scope(|scope| {
        let threads: Vec<_> = frontends
            .iter()
            .enumerate()
            .map(|(i, frontend)| {
                let callers = size / n + usize::from(i < size % n);
                scope.spawn(move || -> Result<BurstPart, LoadtestError> {
                    let (connector, request) = crate::prepare(&frontend.args)?;
                    let load = Load {
                        connector,
                        callers: callers.max(1),
                        threads: 1,
                        connect_first: false,
                        progress: None,
                    };
                    let scenario = Scenario {
                        request,
                        schedule: Schedule::Once,
                        warmup: Duration::ZERO,
                        measure: None,
                        requests: None,
                        timeout: Some(limit),
                    };
                    let run = engine::run(&load, vec![scenario], || {})?;
                    let stats = &run.scenarios[0].stats;
                    let h = &stats.latency;
                    let ms = |q: f64| {
                        (stats.ok > 0).then(|| round3(h.value_at_quantile(q) as f64 / 1000.0))
                    };
                    Ok(BurstPart {
                        frontend: frontend.name.to_owned(),
                        calls: stats.ok + stats.errors.total,
                        ok: stats.ok,
                        errors: stats.errors.total,
                        error_samples: stats.samples.clone(),
                        p50_ms: ms(0.5),
                        p99_ms: ms(0.99),
                        max_ms: (stats.ok > 0).then(|| round3(h.max() as f64 / 1000.0)),
                    })
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| LoadtestError::Worker("a burst thread panicked".into()))?
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    Ok((parts, started.elapsed().as_secs_f64()))
}
