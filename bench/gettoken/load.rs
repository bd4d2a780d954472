//! Load generation. Closed loop: each caller owns one kept-alive connection and sends its next
//! request when the previous reply has arrived. Callers are spread over a few OS threads, each
//! with its own single-threaded tokio runtime (the crate's tokio has no multi-thread runtime
//! feature, and enabling one for the bench would rebuild the server with other features).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::task::LocalSet;

use crate::client::{Conn, Response, Target};
use crate::fixture::{cpu_seconds, machine_busy_seconds};

/// Latencies in microseconds, 1 µs to 120 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).unwrap()
}

/// One kind of request of a load point.
#[derive(Clone)]
pub struct Scenario {
    pub name: String,
    pub request: Arc<Vec<u8>>,
    /// The reply must start with this (e.g. `{"ok":true`).
    pub expect_prefix: &'static [u8],
    /// Each caller sends exactly one request, all at once after the barrier (a burst), instead
    /// of looping for the warm-up and measuring time.
    pub once: bool,
    /// Paced: each caller sends one request per this interval (callers evenly out of phase)
    /// instead of one as soon as the previous reply is in. Latency is still measured from the
    /// actual send; a caller that falls behind sends at once and keeps to the interval after.
    pub pace: Option<Duration>,
}

/// What one scenario at one concurrency gave.
pub struct Outcome {
    pub scenario: String,
    pub concurrency: usize,
    /// Good replies counted in the measuring window (or all, for a burst).
    pub ok: u64,
    /// Bad or failed replies in the window (or all, for a burst).
    pub errors: u64,
    /// Connections re-opened inside the window (server closed one).
    pub reconnects: u64,
    /// The measuring window (for a burst: first send to last reply).
    pub seconds: f64,
    pub latency: Histogram<u64>,
    /// A sample of what went wrong.
    pub first_error: Option<String>,
    /// Time to open all the connections of this concurrency (TLS handshakes).
    pub connect_seconds: f64,
    /// Good replies of the whole scenario, warm-up included.
    pub all_ok: u64,
    /// Wall time of the whole scenario, warm-up included.
    pub wall_seconds: f64,
    /// CPU seconds each of the probed processes used during the whole scenario, then the busy
    /// CPU seconds of the whole machine.
    pub cpu_seconds: Vec<f64>,
}

impl Outcome {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }

    /// CPU microseconds per good reply of probed process `i`, over the whole scenario.
    pub fn cpu_us_per_request(&self, i: usize) -> f64 {
        self.cpu_seconds.get(i).copied().unwrap_or(0.0) * 1e6 / self.all_ok.max(1) as f64
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

struct ThreadResult {
    ok: u64,
    all_ok: u64,
    errors: u64,
    reconnects: u64,
    latency: Histogram<u64>,
    first_error: Option<String>,
    first_send: Option<Instant>,
    last_reply: Option<Instant>,
}

struct Window {
    measure_from: Instant,
    until: Instant,
}

#[derive(Default)]
struct Counters {
    ok: Cell<u64>,
    all_ok: Cell<u64>,
    errors: Cell<u64>,
    reconnects: Cell<u64>,
    first_error: RefCell<Option<String>>,
    first_send: Cell<Option<Instant>>,
    last_reply: Cell<Option<Instant>>,
}

impl Counters {
    fn error(&self, what: String) {
        self.errors.set(self.errors.get() + 1);
        self.first_error.borrow_mut().get_or_insert(what);
    }
}

fn check(scenario: &Scenario, reply: &Response) -> Result<(), String> {
    if reply.status == 200 && reply.body.starts_with(scenario.expect_prefix) {
        Ok(())
    } else {
        Err(format!("HTTP {}: {}", reply.status, reply.text()))
    }
}

async fn open(target: &Target, count: usize) -> Vec<Option<Conn>> {
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let target = target.clone();
            tokio::task::spawn_local(async move { target.connect().await })
        })
        .collect();
    let mut conns = Vec::with_capacity(count);
    for task in tasks {
        match task.await.unwrap() {
            Ok(conn) => conns.push(Some(conn)),
            Err(e) => {
                eprintln!("  connection failed: {e}");
                conns.push(None);
            }
        }
    }
    conns
}

/// One caller; `phase` (0 to 1) spreads paced callers over the interval.
async fn caller(
    mut conn: Option<Conn>,
    target: Target,
    scenario: Rc<Scenario>,
    window: Rc<Window>,
    latency: Rc<RefCell<Histogram<u64>>>,
    counters: Rc<Counters>,
    phase: f64,
) -> Option<Conn> {
    let mut next = scenario
        .pace
        .map(|pace| Instant::now() + pace.mul_f64(phase));
    loop {
        if let (Some(pace), Some(due)) = (scenario.pace, next.as_mut()) {
            tokio::time::sleep_until((*due).into()).await;
            *due = (*due + pace).max(Instant::now());
        }
        let now = Instant::now();
        if now >= window.until && !scenario.once {
            break;
        }
        let measuring = scenario.once || now >= window.measure_from;
        if conn.is_none() {
            match target.connect().await {
                Ok(c) => {
                    conn = Some(c);
                    if measuring {
                        counters.reconnects.set(counters.reconnects.get() + 1);
                    }
                }
                Err(e) => {
                    if measuring {
                        counters.error(format!("connect: {e}"));
                    }
                    if scenario.once {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let sent = Instant::now();
        if counters.first_send.get().is_none() {
            counters.first_send.set(Some(sent));
        }
        let result = conn.as_mut().unwrap().send(&scenario.request).await;
        let done = Instant::now();
        counters.last_reply.set(Some(done));
        let counted = scenario.once || (sent >= window.measure_from && done <= window.until);
        match result {
            Ok(reply) => {
                match check(&scenario, &reply) {
                    Ok(()) => {
                        counters.all_ok.set(counters.all_ok.get() + 1);
                        if counted {
                            counters.ok.set(counters.ok.get() + 1);
                            let micros = done.duration_since(sent).as_micros() as u64;
                            latency.borrow_mut().saturating_record(micros.max(1));
                        }
                    }
                    Err(what) if counted => counters.error(what),
                    Err(_) => {}
                }
                if reply.close {
                    conn = None;
                }
            }
            Err(e) => {
                conn = None;
                if counted {
                    counters.error(format!("I/O: {e}"));
                }
            }
        }
        if scenario.once {
            break;
        }
    }
    conn
}

/// Opens `concurrency` connections to `target` (spread over `threads` threads), then runs each
/// scenario in turn on them: `warmup`, then `measure` counted. Connections stay open from one
/// scenario to the next (they are re-opened only if the server closes one). The CPU time of the
/// processes `probed` is sampled at each scenario's start and end.
pub fn run_level(
    target: &Target,
    concurrency: usize,
    threads: usize,
    scenarios: &[Scenario],
    warmup: Duration,
    measure: Duration,
    probed: &[u32],
) -> Vec<Outcome> {
    let sample = || -> (Instant, Vec<f64>) {
        (
            Instant::now(),
            probed
                .iter()
                .map(|&pid| cpu_seconds(pid))
                .chain([machine_busy_seconds()])
                .collect(),
        )
    };
    let threads = threads.clamp(1, concurrency.max(1));
    let barrier = Arc::new(Barrier::new(threads + 1));
    let opened = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let share = concurrency / threads + usize::from(t < concurrency % threads);
            let target = target.clone();
            let scenarios = scenarios.to_vec();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let local = LocalSet::new();
                let mut conns = local.block_on(&runtime, open(&target, share));
                let mut results = Vec::new();
                for scenario in scenarios {
                    // Everyone connected (first round) or done with the previous scenario.
                    barrier.wait();
                    let start = Instant::now();
                    let window = Rc::new(Window {
                        measure_from: start + warmup,
                        until: start + warmup + measure,
                    });
                    let scenario = Rc::new(scenario);
                    let latency = Rc::new(RefCell::new(histogram()));
                    let counters = Rc::new(Counters::default());
                    conns = local.block_on(&runtime, async {
                        let tasks: Vec<_> = conns
                            .drain(..)
                            .enumerate()
                            .map(|(i, conn)| {
                                let phase = (t + i * threads) as f64 / concurrency as f64;
                                tokio::task::spawn_local(caller(
                                    conn,
                                    target.clone(),
                                    scenario.clone(),
                                    window.clone(),
                                    latency.clone(),
                                    counters.clone(),
                                    phase,
                                ))
                            })
                            .collect();
                        let mut kept = Vec::with_capacity(tasks.len());
                        for task in tasks {
                            kept.push(task.await.unwrap());
                        }
                        kept
                    });
                    results.push(ThreadResult {
                        ok: counters.ok.get(),
                        all_ok: counters.all_ok.get(),
                        errors: counters.errors.get(),
                        reconnects: counters.reconnects.get(),
                        latency: latency.replace(histogram()),
                        first_error: counters.first_error.take(),
                        first_send: counters.first_send.get(),
                        last_reply: counters.last_reply.get(),
                    });
                }
                results
            })
        })
        .collect();
    // Released when every thread has opened its connections, then at each next scenario.
    barrier.wait();
    let connect_seconds = opened.elapsed().as_secs_f64();
    let mut samples = vec![sample()];
    for _ in 1..scenarios.len() {
        barrier.wait();
        samples.push(sample());
    }
    let per_thread: Vec<Vec<ThreadResult>> =
        workers.into_iter().map(|w| w.join().unwrap()).collect();
    samples.push(sample());

    scenarios
        .iter()
        .enumerate()
        .map(|(i, scenario)| {
            let mut outcome = Outcome {
                scenario: scenario.name.clone(),
                concurrency,
                ok: 0,
                errors: 0,
                reconnects: 0,
                seconds: measure.as_secs_f64(),
                latency: histogram(),
                first_error: None,
                connect_seconds,
                all_ok: 0,
                wall_seconds: samples[i + 1].0.duration_since(samples[i].0).as_secs_f64(),
                cpu_seconds: samples[i + 1]
                    .1
                    .iter()
                    .zip(&samples[i].1)
                    .map(|(end, start)| end - start)
                    .collect(),
            };
            let (mut first, mut last) = (None::<Instant>, None::<Instant>);
            for results in &per_thread {
                let r = &results[i];
                outcome.ok += r.ok;
                outcome.all_ok += r.all_ok;
                outcome.errors += r.errors;
                outcome.reconnects += r.reconnects;
                outcome.latency.add(&r.latency).unwrap();
                if outcome.first_error.is_none() {
                    outcome.first_error = r.first_error.clone();
                }
                first = match (first, r.first_send) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                last = match (last, r.last_reply) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            }
            if scenario.once
                && let (Some(first), Some(last)) = (first, last)
            {
                outcome.seconds = last.duration_since(first).as_secs_f64();
            }
            outcome
        })
        .collect()
}

/// Sends every request of `requests` over `connections` kept-alive connections to `target`, on
/// the calling thread; returns the replies in order, and the time it took.
pub fn run_list(
    target: &Target,
    connections: usize,
    requests: Vec<Vec<u8>>,
) -> (Vec<Response>, Duration) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = LocalSet::new();
    let count = requests.len();
    let queue = Rc::new(RefCell::new(
        requests.into_iter().enumerate().collect::<VecDeque<_>>(),
    ));
    let replies: Rc<RefCell<Vec<Option<Response>>>> =
        Rc::new(RefCell::new((0..count).map(|_| None).collect()));
    let started = Instant::now();
    local.block_on(&runtime, async {
        let tasks: Vec<_> = (0..connections.min(count.max(1)))
            .map(|_| {
                let (target, queue, replies) = (target.clone(), queue.clone(), replies.clone());
                tokio::task::spawn_local(async move {
                    let mut conn: Option<Conn> = None;
                    loop {
                        let Some((index, request)) = queue.borrow_mut().pop_front() else {
                            break;
                        };
                        let mut attempts = 0;
                        let reply = loop {
                            attempts += 1;
                            if conn.is_none() {
                                conn = Some(target.connect().await.unwrap_or_else(|e| {
                                    panic!("cannot connect to port {}: {e}", target.port())
                                }));
                            }
                            match conn.as_mut().unwrap().send(&request).await {
                                Ok(reply) => break reply,
                                // A kept-alive connection the server closed while idle.
                                Err(e) if attempts < 3 => {
                                    let _ = e;
                                    conn = None;
                                }
                                Err(e) => panic!("request {index} failed: {e}"),
                            }
                        };
                        if reply.close {
                            conn = None;
                        }
                        replies.borrow_mut()[index] = Some(reply);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let elapsed = started.elapsed();
    let replies = Rc::try_unwrap(replies)
        .ok()
        .unwrap()
        .into_inner()
        .into_iter()
        .map(Option::unwrap)
        .collect();
    (replies, elapsed)
}
