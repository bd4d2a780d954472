//! Load generation: worker OS threads, each with a current-thread runtime running its share
//! of the callers, plus the live progress line.

use super::diset::Conversation;
use super::http::{self, Response};
use super::report::{ConnEvents, Stats};
use super::tls::{self, TlsStream};
use super::wire::{CallError, Conn, check_ok};
use super::{LoadtestError, Plan, Report};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// The prepared bytes of one call.
pub(super) enum Wire {
    Http {
        request: Vec<u8>,
        keep_alive: bool,
        /// DIRAC RPC: success also needs `"OK": true` in the JSON body.
        dirac: bool,
    },
    Dips(Conversation),
}

/// State shared by all callers of all threads.
struct Shared {
    plan: Plan,
    start: Instant,
    measure_start: Instant,
    end: Option<Instant>,
    /// Open loop: nanoseconds between scheduled sends, across all callers.
    interval_ns: Option<f64>,
    next_slot: AtomicU64,
    /// Measured requests still to send, with `--requests`.
    remaining: Option<AtomicU64>,
    live_ok: AtomicU64,
    live_errors: AtomicU64,
}

impl Shared {
    fn claim(&self) -> bool {
        self.remaining.as_ref().is_none_or(|r| {
            r.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                .is_ok()
        })
    }

    fn past_end(&self, t: Instant) -> bool {
        self.end.is_some_and(|end| t >= end)
    }
}

struct Caller {
    shared: Arc<Shared>,
    /// Idle keep-alive connection, reused by the next call.
    conn: Option<Conn<TlsStream>>,
}

impl Caller {
    async fn open(&self, ev: &mut ConnEvents) -> Result<Conn<TlsStream>, CallError> {
        let (stream, resumed) = self.shared.plan.connector.connect().await?;
        ev.opened += 1;
        ev.tls_resumed += u64::from(resumed);
        Ok(Conn::new(stream))
    }

    async fn exchange(&mut self, ev: &mut ConnEvents) -> Result<(), CallError> {
        let shared = Arc::clone(&self.shared);
        match &shared.plan.wire {
            Wire::Dips(conversation) => {
                let mut conn = self.open(ev).await?;
                let result = conversation.call(&mut conn).await;
                tls::close(conn.stream).await;
                result
            }
            Wire::Http {
                request,
                keep_alive,
                dirac,
            } => loop {
                let reused = self.conn.is_some();
                let mut conn = match self.conn.take() {
                    Some(conn) => conn,
                    None => self.open(ev).await?,
                };
                let result = async {
                    conn.send(request).await?;
                    http::read_response(&mut conn).await
                }
                .await;
                match result {
                    Ok(resp) => {
                        if *keep_alive && resp.keep_alive {
                            self.conn = Some(conn);
                        } else {
                            tls::close(conn.stream).await;
                        }
                        return evaluate(&resp, *dirac);
                    }
                    // The server may close an idle keep-alive connection just as we reuse
                    // it; like HTTP client libraries, retry once on a fresh connection.
                    Err(CallError::Io(_)) if reused => ev.keepalive_retries += 1,
                    Err(e) => return Err(e),
                }
            },
        }
    }

    async fn run(mut self) -> Stats {
        let shared = Arc::clone(&self.shared);
        let mut stats = Stats::new();
        loop {
            let scheduled = match shared.interval_ns {
                None => Instant::now(),
                Some(interval_ns) => {
                    let slot = shared.next_slot.fetch_add(1, Relaxed);
                    shared.start + Duration::from_nanos((slot as f64 * interval_ns) as u64)
                }
            };
            if shared.past_end(scheduled) {
                break;
            }
            // Open loop: latency counts from the scheduled time when the caller was late (the
            // queueing a closed loop would hide), but from the timer's wake-up when it was early:
            // tokio's timer fires up to a millisecond after the deadline, which is the load
            // generator's delay, not the server's.
            let sent_from = if shared.interval_ns.is_some() && scheduled > Instant::now() {
                tokio::time::sleep_until(scheduled.into()).await;
                Instant::now()
            } else {
                scheduled
            };
            let measured = scheduled >= shared.measure_start;
            if measured && !shared.claim() {
                break;
            }
            let mut ev = ConnEvents::default();
            let result =
                match tokio::time::timeout(shared.plan.timeout, self.exchange(&mut ev)).await {
                    Ok(result) => result,
                    // The half-used connection was taken out of `self.conn` and is dropped.
                    Err(_) => Err(CallError::Timeout),
                };
            let latency = sent_from.elapsed();
            match &result {
                Ok(()) => shared.live_ok.fetch_add(1, Relaxed),
                Err(_) => shared.live_errors.fetch_add(1, Relaxed),
            };
            if measured {
                stats.record(result, latency, ev);
            }
        }
        if let Some(conn) = self.conn.take() {
            tls::close(conn.stream).await;
        }
        stats
    }
}

fn evaluate(resp: &Response, dirac: bool) -> Result<(), CallError> {
    if dirac {
        // DIRAC answers both S_OK and S_ERROR with 200; anything else is a transport failure.
        if resp.status != 200 {
            return Err(CallError::HttpStatus(resp.status));
        }
        check_ok(&resp.body, "response body")
    } else if (200..300).contains(&resp.status) {
        Ok(())
    } else {
        Err(CallError::HttpStatus(resp.status))
    }
}

fn worker(shared: Arc<Shared>, callers: usize) -> Result<Stats, LoadtestError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LoadtestError::Worker(format!("cannot start runtime: {e}")))?;
    rt.block_on(async {
        let mut set = JoinSet::new();
        for _ in 0..callers {
            set.spawn(
                Caller {
                    shared: Arc::clone(&shared),
                    conn: None,
                }
                .run(),
            );
        }
        let mut total = Stats::new();
        while let Some(joined) = set.join_next().await {
            total.merge(
                joined.map_err(|e| LoadtestError::Worker(format!("caller task failed: {e}")))?,
            );
        }
        Ok(total)
    })
}

pub(super) async fn execute(plan: Plan) -> Result<Report, LoadtestError> {
    let start = Instant::now();
    let measure_start = start + plan.warmup;
    let threads = plan.load.threads;
    let concurrency = plan.load.concurrency;
    let shared = Arc::new(Shared {
        start,
        measure_start,
        end: plan.duration.map(|d| measure_start + d),
        interval_ns: plan.load.rate_target.map(|rate| 1e9 / rate),
        next_slot: AtomicU64::new(0),
        remaining: plan.requests.map(AtomicU64::new),
        live_ok: AtomicU64::new(0),
        live_errors: AtomicU64::new(0),
        plan,
    });

    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads {
        let callers = concurrency / threads + usize::from(i < concurrency % threads);
        let shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name(format!("loadtest-{i}"))
            .spawn(move || worker(shared, callers))
            .map_err(|e| LoadtestError::Worker(format!("cannot spawn thread: {e}")))?;
        handles.push(handle);
    }

    // Progress only on a terminal, so logs and CI output get just the final report.
    let progress = std::io::stderr().is_terminal();
    let (mut last_print, mut last_count) = (Instant::now(), 0);
    while !handles.iter().all(|h| h.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if progress && last_print.elapsed() >= Duration::from_secs(1) {
            let (ok, errors) = (
                shared.live_ok.load(Relaxed),
                shared.live_errors.load(Relaxed),
            );
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
    }
    if progress {
        eprint!("\r\x1b[K");
    }

    let mut total = Stats::new();
    for handle in handles {
        let stats = handle
            .join()
            .map_err(|_| LoadtestError::Worker("worker thread panicked".to_owned()))??;
        total.merge(stats);
    }
    let plan = &shared.plan;
    Ok(total.into_report(plan.report_target.clone(), plan.load.clone(), measure_start))
}
