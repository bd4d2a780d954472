//! Load generation: callers spread over a few OS threads, each thread a current-thread tokio
//! runtime running its callers as local tasks (the workspace's tokio has no multi-thread
//! runtime: its features are the service's). The callers of a run keep their connections from
//! one scenario to the next; all threads start each scenario together (a barrier), and the
//! calling thread runs a hook at each such boundary (e.g. to sample CPU time).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use dirac_wire::client::RpcCall;
use tokio::io::BufStream;
use tokio::task::LocalSet;

use crate::LoadtestError;
use crate::connect::{Connector, Stream};
use crate::http::{self, Response};
use crate::report::{Call as Done, ConnEvents, Stats};
use crate::wire::{CallError, Conn, check_ok};

/// What a caller sends.
pub enum Request {
    /// HTTP/1.1: the same request bytes every time.
    Http {
        request: Vec<u8>,
        expect: Expect,
        /// Reuse the connection for the next call (if the server agrees).
        keep_alive: bool,
    },
    /// DISET: one new connection per call.
    Dips(RpcCall),
}

/// What makes an HTTP reply a success.
pub enum Expect {
    /// Any 2xx status.
    Success,
    /// DIRAC's HTTPS RPC: 200 (DIRAC answers S_OK and S_ERROR alike with 200) and a JSON body
    /// whose `"OK"` is true.
    DiracOk,
    /// 200 and a body starting with these bytes (cheaper than parsing it).
    BodyPrefix(Vec<u8>),
}

/// Longest excerpt of a failed reply's body in an error message.
const BODY_EXCERPT: usize = 200;

impl Expect {
    fn check(&self, reply: &Response) -> Result<(), CallError> {
        let excerpt = || reply.text().chars().take(BODY_EXCERPT).collect::<String>();
        let status_ok = match self {
            Expect::Success => (200..300).contains(&reply.status),
            Expect::DiracOk | Expect::BodyPrefix(_) => reply.status == 200,
        };
        if !status_ok {
            return Err(CallError::HttpStatus {
                code: reply.status,
                body: excerpt(),
            });
        }
        match self {
            Expect::Success => Ok(()),
            Expect::DiracOk => check_ok(&reply.body, "response body"),
            Expect::BodyPrefix(prefix) if reply.body.starts_with(prefix) => Ok(()),
            Expect::BodyPrefix(prefix) => Err(CallError::Protocol(format!(
                "the reply does not start with {}: {}",
                String::from_utf8_lossy(prefix),
                excerpt()
            ))),
        }
    }
}

/// When callers send.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// Closed loop: each caller sends its next request as soon as the reply to the last is in.
    Closed,
    /// Each caller sends one request per interval, the callers evenly out of phase. Latency
    /// counts from the actual send; a caller that falls behind sends at once and keeps to the
    /// interval after.
    Paced(Duration),
    /// Open loop: requests per second across all callers, each caller at most one in flight.
    /// Latency counts from the scheduled send time when the caller was late (the queueing a
    /// closed loop would hide).
    Rate(f64),
    /// A burst: each caller sends one request, all at once after the barrier; every call
    /// counts, there is no warm-up.
    Once,
}

/// One kind of load: a request, a schedule and how long.
pub struct Scenario {
    pub request: Request,
    pub schedule: Schedule,
    /// Load before counting starts.
    pub warmup: Duration,
    /// Counted time: calls sent after the warm-up and answered within it count. `None`: until
    /// `requests` calls were sent (or once, for a burst).
    pub measure: Option<Duration>,
    /// Counted calls to send at most, across all callers.
    pub requests: Option<u64>,
    /// Per-call limit, connection set-up included.
    pub timeout: Option<Duration>,
}

/// The callers and where they connect.
pub struct Load {
    pub connector: Arc<Connector>,
    pub callers: usize,
    /// OS threads the callers are spread over (at most one per caller).
    pub threads: usize,
    /// Open every caller's connection before the first scenario (timed, see
    /// [`Run::connect_seconds`]); otherwise each caller connects on its first call.
    pub connect_first: bool,
    /// Counters of every call (warm-up included) for a live display.
    pub progress: Option<Arc<Progress>>,
}

#[derive(Default)]
pub struct Progress {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
}

/// What a run gave.
pub struct Run {
    /// One per scenario, in order.
    pub scenarios: Vec<ScenarioStats>,
    /// Time to open the connections of `connect_first`.
    pub connect_seconds: f64,
    /// Connections of `connect_first` that failed (their callers connect again on their first
    /// call), and the first failure.
    pub connect_failures: u64,
    pub connect_error: Option<String>,
}

pub struct ScenarioStats {
    pub stats: Stats,
    /// When the warm-up ended: the start of the counted time.
    pub measure_start: Instant,
}

/// State of one scenario shared by the callers of all threads.
struct Shared {
    scenario: Scenario,
    /// Set by the first thread past the barrier.
    start: OnceLock<Instant>,
    /// Open loop: the next send slot, across all callers.
    next_slot: AtomicU64,
    /// Counted calls still to send, with `requests`.
    remaining: Option<AtomicU64>,
}

impl Shared {
    fn claim(&self) -> bool {
        self.remaining.as_ref().is_none_or(|r| {
            r.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                .is_ok()
        })
    }
}

/// One scenario as one thread's callers see it.
struct Window {
    shared: Arc<Shared>,
    start: Instant,
    measure_from: Instant,
    until: Option<Instant>,
}

impl Window {
    fn new(shared: Arc<Shared>) -> Window {
        let start = *shared.start.get_or_init(Instant::now);
        let measure_from = start + shared.scenario.warmup;
        let until = shared.scenario.measure.map(|m| measure_from + m);
        Window {
            shared,
            start,
            measure_from,
            until,
        }
    }

    fn past_end(&self, t: Instant) -> bool {
        self.until.is_some_and(|end| t >= end)
    }
}

/// A failed connection is retried after this pause, not in a busy loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

struct Caller {
    connector: Arc<Connector>,
    progress: Option<Arc<Progress>>,
    /// An idle kept-alive connection, used by the next call.
    conn: Option<Conn<Stream>>,
}

impl Caller {
    async fn open(&self, events: &mut ConnEvents) -> Result<Stream, CallError> {
        let (stream, resumed) = self.connector.connect().await?;
        events.opened += 1;
        events.tls_resumed += u64::from(resumed);
        Ok(stream)
    }

    async fn exchange(
        &mut self,
        request: &Request,
        events: &mut ConnEvents,
    ) -> Result<(), CallError> {
        match request {
            Request::Dips(call) => {
                let mut stream = BufStream::new(self.open(events).await?);
                let result = call.run(&mut stream).await;
                stream.into_inner().close().await;
                result.map(drop).map_err(CallError::from)
            }
            Request::Http {
                request,
                expect,
                keep_alive,
            } => loop {
                let reused = self.conn.is_some();
                let mut conn = match self.conn.take() {
                    Some(conn) => conn,
                    None => Conn::new(self.open(events).await?),
                };
                let result = async {
                    conn.send(request).await?;
                    http::read_response(&mut conn).await
                }
                .await;
                match result {
                    Ok(reply) => {
                        if *keep_alive && reply.keep_alive {
                            self.conn = Some(conn);
                        } else {
                            conn.stream.close().await;
                        }
                        return expect.check(&reply);
                    }
                    // The server may close an idle kept-alive connection just as we reuse it;
                    // like HTTP client libraries, retry once on a fresh connection.
                    Err(CallError::Io(_)) if reused => events.keepalive_retries += 1,
                    Err(e) => return Err(e),
                }
            },
        }
    }

    /// Runs one scenario; `phase` (0 to 1) spreads paced callers over the interval.
    async fn run(&mut self, window: &Window, stats: &RefCell<Stats>, phase: f64) {
        let scenario = &window.shared.scenario;
        let once = scenario.schedule == Schedule::Once;
        let mut due = match scenario.schedule {
            Schedule::Paced(pace) => Some(Instant::now() + pace.mul_f64(phase)),
            _ => None,
        };
        loop {
            // `scheduled` decides whether the call counts; latency counts from `sent`.
            let (scheduled, sent) = match scenario.schedule {
                Schedule::Closed | Schedule::Once => {
                    let now = Instant::now();
                    (now, now)
                }
                Schedule::Paced(pace) => {
                    let next = due.as_mut().expect("paced callers have a due time");
                    tokio::time::sleep_until((*next).into()).await;
                    *next = (*next + pace).max(Instant::now());
                    let now = Instant::now();
                    (now, now)
                }
                Schedule::Rate(rate) => {
                    let slot = window.shared.next_slot.fetch_add(1, Relaxed);
                    let scheduled = window.start + Duration::from_secs_f64(slot as f64 / rate);
                    // From the timer's wake-up when early: tokio's timer fires up to a
                    // millisecond after the deadline, which is the load generator's delay, not
                    // the server's.
                    if !window.past_end(scheduled) && scheduled > Instant::now() {
                        tokio::time::sleep_until(scheduled.into()).await;
                        (scheduled, Instant::now())
                    } else {
                        (scheduled, scheduled)
                    }
                }
            };
            if !once && window.past_end(scheduled) {
                break;
            }
            let measured = once || scheduled >= window.measure_from;
            if measured && !window.shared.claim() {
                break;
            }
            let mut events = ConnEvents::default();
            let result = match scenario.timeout {
                // A connection taken out of `self.conn` when the time ran out is dropped.
                Some(limit) => {
                    tokio::time::timeout(limit, self.exchange(&scenario.request, &mut events))
                        .await
                        .unwrap_or(Err(CallError::Timeout))
                }
                None => self.exchange(&scenario.request, &mut events).await,
            };
            let done = Instant::now();
            let failed_to_connect =
                matches!(result, Err(CallError::Connect(_) | CallError::Tls(_)));
            if let Some(progress) = &self.progress {
                match &result {
                    Ok(()) => progress.ok.fetch_add(1, Relaxed),
                    Err(_) => progress.errors.fetch_add(1, Relaxed),
                };
            }
            stats.borrow_mut().record(Done {
                result,
                sent,
                done,
                connections: events,
                counted: measured && (once || window.until.is_none_or(|end| done <= end)),
            });
            if once {
                break;
            }
            if failed_to_connect {
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
}

/// Runs `scenarios` one after the other with `load`'s callers. `at_boundary` runs on the
/// calling thread when the callers start the first scenario (connections open), at each next
/// scenario's start, and once all are done: `scenarios.len() + 1` times.
pub fn run(
    load: &Load,
    scenarios: Vec<Scenario>,
    mut at_boundary: impl FnMut(),
) -> Result<Run, LoadtestError> {
    let callers = load.callers.max(1);
    let threads = load.threads.clamp(1, callers);
    let count = scenarios.len();
    if count == 0 {
        return Err(LoadtestError::InvalidArgument(
            "no scenario to run".to_owned(),
        ));
    }
    let shared: Vec<Arc<Shared>> = scenarios
        .into_iter()
        .map(|scenario| {
            Arc::new(Shared {
                remaining: scenario.requests.map(AtomicU64::new),
                scenario,
                start: OnceLock::new(),
                next_slot: AtomicU64::new(0),
            })
        })
        .collect();
    let barrier = Arc::new(Barrier::new(threads + 1));
    let opened = Instant::now();
    let mut workers = Vec::with_capacity(threads);
    for t in 0..threads {
        let share = callers / threads + usize::from(t < callers % threads);
        let phases: Vec<f64> = (0..share)
            .map(|i| (t + i * threads) as f64 / callers as f64)
            .collect();
        let (shared, barrier) = (shared.clone(), Arc::clone(&barrier));
        let caller = |conn| Caller {
            connector: Arc::clone(&load.connector),
            progress: load.progress.clone(),
            conn,
        };
        let mut callers: Vec<Caller> = (0..share).map(|_| caller(None)).collect();
        let connect_first = load.connect_first;
        let worker = std::thread::Builder::new()
            .name(format!("loadtest-{t}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        // The others wait at the barrier for this thread, at every scenario.
                        for _ in 0..count {
                            barrier.wait();
                        }
                        return Err(LoadtestError::Worker(format!("cannot start runtime: {e}")));
                    }
                };
                let local = LocalSet::new();
                let failures = if connect_first {
                    local.block_on(&runtime, connect_all(&mut callers))
                } else {
                    Vec::new()
                };
                let mut results = Vec::with_capacity(shared.len());
                for scenario in shared {
                    // Everyone connected (first round) or done with the previous scenario.
                    barrier.wait();
                    let window = Rc::new(Window::new(scenario));
                    let stats = Rc::new(RefCell::new(Stats::default()));
                    callers = local.block_on(&runtime, async {
                        let tasks: Vec<_> = callers
                            .drain(..)
                            .zip(&phases)
                            .map(|(mut caller, &phase)| {
                                let (window, stats) = (Rc::clone(&window), Rc::clone(&stats));
                                tokio::task::spawn_local(async move {
                                    caller.run(&window, &stats, phase).await;
                                    caller
                                })
                            })
                            .collect();
                        let mut kept = Vec::with_capacity(tasks.len());
                        for task in tasks {
                            kept.push(task.await.expect("a caller does not panic"));
                        }
                        kept
                    });
                    results.push(ScenarioStats {
                        stats: stats.take(),
                        measure_start: window.measure_from,
                    });
                }
                local.block_on(&runtime, async {
                    for caller in callers {
                        if let Some(conn) = caller.conn {
                            conn.stream.close().await;
                        }
                    }
                });
                Ok((results, failures))
            })
            .map_err(|e| LoadtestError::Worker(format!("cannot spawn thread: {e}")))?;
        workers.push(worker);
    }
    // Released when every thread has opened its connections, then at each next scenario.
    barrier.wait();
    let connect_seconds = opened.elapsed().as_secs_f64();
    at_boundary();
    for _ in 1..count {
        barrier.wait();
        at_boundary();
    }
    let mut per_thread = Vec::with_capacity(threads);
    for worker in workers {
        per_thread.push(
            worker
                .join()
                .map_err(|_| LoadtestError::Worker("worker thread panicked".to_owned()))??,
        );
    }
    at_boundary();

    let mut run = Run {
        scenarios: Vec::with_capacity(count),
        connect_seconds,
        connect_failures: 0,
        connect_error: None,
    };
    for (results, failures) in &mut per_thread {
        run.connect_failures += failures.len() as u64;
        if run.connect_error.is_none() {
            run.connect_error = failures.first().cloned();
        }
        for (i, result) in results.drain(..).enumerate() {
            match run.scenarios.get_mut(i) {
                Some(total) => {
                    total.stats.merge(result.stats);
                    total.measure_start = total.measure_start.min(result.measure_start);
                }
                None => run.scenarios.push(result),
            }
        }
    }
    Ok(run)
}

/// One call on a new connection, closed afterwards (whatever the request's keep-alive): what a
/// DIRAC client does, and what the flood's identified callers time.
pub async fn call_once(connector: &Arc<Connector>, request: &Request) -> Result<(), CallError> {
    let mut caller = Caller {
        connector: Arc::clone(connector),
        progress: None,
        conn: None,
    };
    let result = caller.exchange(request, &mut ConnEvents::default()).await;
    if let Some(conn) = caller.conn.take() {
        conn.stream.close().await;
    }
    result
}

/// Opens every caller's connection at once; the failures' messages.
async fn connect_all(callers: &mut [Caller]) -> Vec<String> {
    let tasks: Vec<_> = callers
        .iter()
        .map(|caller| {
            let connector = Arc::clone(&caller.connector);
            tokio::task::spawn_local(async move { connector.connect().await })
        })
        .collect();
    let mut failures = Vec::new();
    for (caller, task) in callers.iter_mut().zip(tasks) {
        match task.await.expect("a connection task does not panic") {
            Ok((stream, _)) => caller.conn = Some(Conn::new(stream)),
            Err(e) => failures.push(e.to_string()),
        }
    }
    failures
}

/// Sends each of `requests` once over at most `connections` kept-alive connections, on the
/// calling thread; the replies in the order of the requests, and the time it took. A request
/// whose connection breaks is sent again on a new one (at most 3 tries).
pub fn send_all(
    connector: &Arc<Connector>,
    connections: usize,
    requests: Vec<Vec<u8>>,
) -> Result<(Vec<Response>, Duration), CallError> {
    let (replies, elapsed) = send_all_timed(connector, connections, requests)?;
    Ok((
        replies.into_iter().map(|(reply, _)| reply).collect(),
        elapsed,
    ))
}

/// A reply and its latency.
type Timed = (Response, Duration);

/// [`send_all`], with each reply's latency: from its request's first byte written to the reply's
/// last byte read, on a connection already open (its opening and TLS handshake are not counted).
pub fn send_all_timed(
    connector: &Arc<Connector>,
    connections: usize,
    requests: Vec<Vec<u8>>,
) -> Result<(Vec<Timed>, Duration), CallError> {
    const TRIES: usize = 3;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = LocalSet::new();
    let count = requests.len();
    let queue = Rc::new(RefCell::new(
        requests.into_iter().enumerate().collect::<VecDeque<_>>(),
    ));
    let replies: Rc<RefCell<Vec<Option<Timed>>>> =
        Rc::new(RefCell::new((0..count).map(|_| None).collect()));
    let started = Instant::now();
    local.block_on(&runtime, async {
        let tasks: Vec<_> = (0..connections.clamp(1, count.max(1)))
            .map(|_| {
                let (connector, queue, replies) = (
                    Arc::clone(connector),
                    Rc::clone(&queue),
                    Rc::clone(&replies),
                );
                tokio::task::spawn_local(async move {
                    let mut conn: Option<Conn<Stream>> = None;
                    loop {
                        let Some((index, request)) = queue.borrow_mut().pop_front() else {
                            break;
                        };
                        let mut tries = 0;
                        let reply = loop {
                            tries += 1;
                            let mut open = match conn.take() {
                                Some(open) => open,
                                None => Conn::new(connector.connect().await?.0),
                            };
                            let sent = Instant::now();
                            let result = async {
                                open.send(&request).await?;
                                http::read_response(&mut open).await
                            }
                            .await;
                            match result {
                                Ok(reply) => {
                                    let took = sent.elapsed();
                                    if reply.keep_alive {
                                        conn = Some(open);
                                    }
                                    break (reply, took);
                                }
                                Err(_) if tries < TRIES => {}
                                Err(e) => return Err(e),
                            }
                        };
                        replies.borrow_mut()[index] = Some(reply);
                    }
                    if let Some(open) = conn {
                        open.stream.close().await;
                    }
                    Ok(())
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("a sending task does not panic")?;
        }
        Ok::<_, CallError>(())
    })?;
    let elapsed = started.elapsed();
    let replies = replies
        .take()
        .into_iter()
        .map(|reply| reply.expect("every request was answered"))
        .collect();
    Ok((replies, elapsed))
}
