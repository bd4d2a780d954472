//! `tokenmanager-flood`: does an unauthenticated flood stall or exhaust the service?
//!
//! Against a running server (its ports and PID given), it
//! 1. warms up with a few identified calls on each front-end and reads the server's idle RSS
//!    and descriptor count from /proc;
//! 2. **flood**: child processes ([`attack`]) open and hold idle HTTPS sockets, idle DISET
//!    sockets and slow-body TLS requests without a client certificate, from a range of source
//!    addresses, reopening whatever the server closes; while they are held, identified callers
//!    ([`callers`]) time `ping` on DIRAC HTTPS, the JSON API and DISET, each call on a new TLS
//!    connection; the server's RSS and descriptors are sampled every 250 ms; then the flood is
//!    released and the tool waits (60 s at most) for descriptors and RSS to come back;
//! 3. **bursts**: bursts of legitimate new connections (DISET and DIRAC HTTPS pings), then an
//!    idle wait, RSS read after each;
//! 4. judges the targets ([`outcome::evaluate`]), prints a summary, writes the JSON report
//!    (schema `tokenmanager-flood/1`, [`outcome::FloodReport`]) and, with `--check`, exits 1
//!    naming each failed target.

pub mod attack;
pub mod callers;
pub mod outcome;
pub mod probe;

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::{LoadtestArgs, parse_duration};
use attack::{WorkerArgs, WorkerStatus};
use callers::Frontend;
use outcome::{
    Attack, BurstRound, BurstsPhase, FloodPhase, FloodReport, Limits, Recovery, Resources,
    ServerInfo, mib, round3, summarize,
};
use probe::Sampler;

/// Floods a running TokenManager with unauthenticated connections (idle HTTPS, idle DISET,
/// slow-body POSTs), times identified callers on its three front-ends meanwhile, watches its
/// memory and descriptors, then runs bursts of legitimate connections; judges the targets.
#[derive(Debug, Clone, Parser)]
#[command(name = "tokenmanager-flood", version)]
pub struct FloodArgs {
    /// Server address (IPv4).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: Ipv4Addr,
    /// The server's HTTPS port (DIRAC HTTPS and JSON API).
    #[arg(long)]
    pub https_port: u16,
    /// The server's DISET port.
    #[arg(long)]
    pub dips_port: u16,
    /// The server's process ID (its /proc/<pid> is sampled).
    #[arg(long)]
    pub pid: u32,
    /// Identified caller's certificate PEM (a grid proxy file works as is).
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Its private key [default: the --cert file].
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Hashed CA directory to verify the server [default: $X509_CERT_DIR].
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Do not verify the server certificate (identified callers).
    #[arg(long)]
    pub insecure: bool,
    /// Idle TCP connections to the HTTPS port (never a ClientHello).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub idle_https: usize,
    /// Idle TCP connections to the DISET port.
    #[arg(long, default_value_t = 0, value_name = "M")]
    pub idle_dips: usize,
    /// TLS connections without client certificate dripping a POST body, one byte per
    /// --drip-interval.
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub slow_body: usize,
    /// How long the flood is held while the identified callers are timed.
    #[arg(long, value_parser = parse_duration, default_value = "15s", value_name = "TIME")]
    pub hold: Duration,
    /// Longest wait after the release for descriptors and RSS to come back.
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "TIME")]
    pub recovery: Duration,
    /// Longest wait for every attack connection to be tried once before the hold starts.
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "TIME")]
    pub ramp_timeout: Duration,
    /// Attackers' source addresses (inclusive range, round-robin).
    #[arg(long, default_value = "127.0.0.2-127.0.0.254", value_name = "A-B")]
    pub sources: String,
    /// Child processes the attack connections are spread over.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub attack_processes: usize,
    /// Attack: connect (and TLS handshake) timeout; a failed open is tried again after 250 ms.
    #[arg(long, value_parser = parse_duration, default_value = "5s", value_name = "TIME")]
    pub connect_timeout: Duration,
    /// Attack: pause before reopening a connection the server closed [default: at once].
    #[arg(long, value_parser = parse_duration, default_value = "0s", value_name = "TIME")]
    pub reopen_delay: Duration,
    /// Slow-body: one body byte per this interval.
    #[arg(long, value_parser = parse_duration, default_value = "1s", value_name = "TIME")]
    pub drip_interval: Duration,
    /// Slow-body: the announced Content-Length.
    #[arg(long, default_value_t = 100_000, value_name = "BYTES")]
    pub content_length: usize,
    /// Slow-body and DIRAC HTTPS path.
    #[arg(long, default_value = "/Framework/TokenManager", value_name = "PATH")]
    pub path: String,
    /// Identified callers per front-end.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub callers: usize,
    /// Each identified caller starts a call every this interval.
    #[arg(long, value_parser = parse_duration, default_value = "100ms", value_name = "TIME")]
    pub call_interval: Duration,
    /// Per-call timeout of the identified callers (a timeout is a failed call of that latency).
    #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "TIME")]
    pub call_timeout: Duration,
    /// JSON API method of the identified callers (ping or whoami).
    #[arg(long, default_value = "ping", value_name = "METHOD")]
    pub json_method: String,
    /// Resume TLS sessions on the identified callers' new connections (default: a full
    /// handshake per call, as DIRAC's clients do).
    #[arg(long)]
    pub resume: bool,
    /// Identified calls per front-end before the idle figures are read (must all succeed).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub warmup_calls: usize,
    /// Scenarios to run, in this order: flood, bursts.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "flood,bursts",
        value_name = "LIST"
    )]
    pub scenarios: Vec<String>,
    /// Bursts of the bursts scenario.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub bursts: usize,
    /// Parallel new connections per burst, split evenly over the burst front-ends.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub burst_size: usize,
    /// Front-ends of the bursts (pings): dips, dirac-https, json.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "dips,dirac-https",
        value_name = "LIST"
    )]
    pub burst_frontends: Vec<String>,
    /// Per-call timeout in the bursts.
    #[arg(long, value_parser = parse_duration, default_value = "30s", value_name = "TIME")]
    pub burst_timeout: Duration,
    /// Pause between bursts.
    #[arg(long, value_parser = parse_duration, default_value = "1s", value_name = "TIME")]
    pub burst_gap: Duration,
    /// Idle wait after the last burst, before RSS is judged.
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "TIME")]
    pub burst_idle: Duration,
    /// Target: identified callers' p99 below this.
    #[arg(long, value_parser = parse_duration, default_value = "1s", value_name = "TIME")]
    pub p99_limit: Duration,
    /// Target: server RSS during the flood below this many MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub rss_limit_mib: u64,
    /// Target: descriptors after the release at most idle + this.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub fd_slack: u64,
    /// Target: RSS after the release and after the bursts' idle wait at most this × idle.
    #[arg(long, default_value_t = 2.0, value_name = "X")]
    pub rss_factor: f64,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// Exit with status 1, naming each failed target, when a target is missed.
    #[arg(long)]
    pub check: bool,
}

/// The tool failed (before or instead of measuring): exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FloodError(String);

fn fail(msg: impl Into<String>) -> FloodError {
    FloodError(msg.into())
}

impl From<crate::LoadtestError> for FloodError {
    fn from(e: crate::LoadtestError) -> Self {
        FloodError(e.to_string())
    }
}

const FRONTENDS: [&str; 3] = ["dirac-https", "json", "dips"];
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Descriptors this process keeps beyond a burst's connections.
const SPARE_FDS: u64 = 128;

impl FloodArgs {
    fn frontend(&self, name: &'static str, method: &str) -> Result<Frontend, FloodError> {
        let (scheme, port) = match name {
            "dips" => ("dips", self.dips_port),
            "dirac-https" | "json" => ("https", self.https_port),
            other => return Err(fail(format!("unknown front-end {other:?}"))),
        };
        let mut argv: Vec<String> = vec![
            "tokenmanager-loadtest".into(),
            format!("{scheme}://{}:{port}", self.host),
            "--protocol".into(),
            name.into(),
            "--method".into(),
            method.into(),
            "--new-connection".into(),
            "--cert".into(),
            self.cert.display().to_string(),
        ];
        if let Some(key) = &self.key {
            argv.extend(["--key".into(), key.display().to_string()]);
        }
        if let Some(dir) = &self.ca_dir {
            argv.extend(["--ca-dir".into(), dir.display().to_string()]);
        }
        if self.insecure {
            argv.push("--insecure".into());
        }
        if !self.resume {
            argv.push("--no-resume".into());
        }
        let args = LoadtestArgs::try_parse_from(&argv)
            .map_err(|e| fail(format!("front-end {name}: {e}")))?;
        let frontend = Frontend {
            name,
            method: method.to_owned(),
            args,
        };
        // Fails now on a bad certificate, key or CA directory.
        frontend.prepare()?;
        Ok(frontend)
    }

    fn limits(&self) -> Limits {
        Limits {
            p99_ms: self.p99_limit.as_secs_f64() * 1000.0,
            rss_kb_during: self.rss_limit_mib * 1024,
            fd_slack: self.fd_slack,
            rss_factor: self.rss_factor,
            recovery_s: self.recovery.as_secs_f64(),
        }
    }

    /// The attack split over the worker processes.
    fn workers(&self) -> Vec<WorkerArgs> {
        let n = self.attack_processes.max(1);
        let share = |total: usize, i: usize| total / n + usize::from(i < total % n);
        let mut first_slot = 0;
        (0..n)
            .map(|i| {
                let w = WorkerArgs {
                    host: self.host,
                    https_port: self.https_port,
                    dips_port: self.dips_port,
                    idle_https: share(self.idle_https, i),
                    idle_dips: share(self.idle_dips, i),
                    slow_body: share(self.slow_body, i),
                    sources: self.sources.clone(),
                    first_slot,
                    connect_timeout: self.connect_timeout,
                    reopen_delay: self.reopen_delay,
                    drip_interval: self.drip_interval,
                    path: self.path.clone(),
                    content_length: self.content_length,
                };
                first_slot += w.total();
                w
            })
            .collect()
    }
}

/// The attack processes and what they last reported.
struct Workers {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    statuses: Arc<Mutex<Vec<WorkerView>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

#[derive(Default, Clone)]
struct WorkerView {
    latest: Option<WorkerStatus>,
    ended: bool,
}

impl Workers {
    fn spawn(args: &[WorkerArgs]) -> Result<Workers, FloodError> {
        let exe = std::env::current_exe()
            .map_err(|e| fail(format!("cannot find this executable: {e}")))?;
        let statuses = Arc::new(Mutex::new(vec![WorkerView::default(); args.len()]));
        let mut workers = Workers {
            children: Vec::new(),
            stdins: Vec::new(),
            statuses: Arc::clone(&statuses),
            readers: Vec::new(),
        };
        for (i, w) in args.iter().enumerate() {
            let mut child = Command::new(&exe)
                .arg(attack::WORKER_ARG)
                .args(w.to_args())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| fail(format!("cannot start attack process: {e}")))?;
            let stdout = child.stdout.take().expect("piped stdout");
            workers.stdins.push(child.stdin.take());
            workers.children.push(child);
            let statuses = Arc::clone(&statuses);
            workers.readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(status) = serde_json::from_str::<WorkerStatus>(&line) {
                        statuses.lock().unwrap_or_else(|p| p.into_inner())[i].latest = Some(status);
                    }
                }
                statuses.lock().unwrap_or_else(|p| p.into_inner())[i].ended = true;
            }));
        }
        Ok(workers)
    }

    fn views(&self) -> Vec<WorkerView> {
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn total(&self) -> Attack {
        let mut total = Attack::default();
        for view in self.views() {
            if let Some(status) = view.latest {
                total.add(&status.attack);
            }
        }
        total
    }

    /// Waits until every worker tried each of its connections once; `Ok(false)` on timeout.
    fn wait_ready(&self, limit: Duration) -> Result<bool, FloodError> {
        let deadline = Instant::now() + limit;
        loop {
            let views = self.views();
            if let Some(i) = views.iter().position(|v| v.ended) {
                return Err(fail(format!(
                    "attack process {i} ended before the flood was held (its error is above)"
                )));
            }
            if views
                .iter()
                .all(|v| v.latest.as_ref().is_some_and(|s| s.ready))
            {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Closes the workers' standard input (they report a last time and exit, which resets their
    /// connections) and waits for them; the counters of their last reports.
    fn release(mut self) -> Attack {
        self.stdins.clear();
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.total()
    }

    fn kill(&mut self) {
        for child in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.kill();
    }
}

fn say(msg: impl AsRef<str>) {
    println!("[flood] {}", msg.as_ref());
    let _ = std::io::stdout().flush();
}

/// The idle figures: the median of a few samples one second after the warm-up.
fn idle_figures(sampler: &Sampler) -> Result<Resources, FloodError> {
    std::thread::sleep(Duration::from_secs(1));
    let mut rss = Vec::new();
    let mut fds = Vec::new();
    for _ in 0..5 {
        let r = sampler
            .now()
            .map_err(|e| fail(format!("cannot read the server's /proc: {e}")))?;
        rss.push(r.rss_kb);
        fds.push(r.fds);
        std::thread::sleep(SAMPLE_EVERY);
    }
    rss.sort_unstable();
    fds.sort_unstable();
    Ok(Resources {
        rss_kb: rss[rss.len() / 2],
        fds: fds[fds.len() / 2],
    })
}

/// Runs everything `args` asks for; the report (targets judged).
pub fn run(args: &FloodArgs) -> Result<FloodReport, FloodError> {
    let started = Instant::now();
    for s in &args.scenarios {
        if s != "flood" && s != "bursts" {
            return Err(fail(format!("unknown scenario {s:?} (flood, bursts)")));
        }
    }
    let sources = probe::parse_sources(&args.sources).map_err(fail)?;
    let runs = |s: &str| args.scenarios.iter().any(|x| x == s);
    let own_limit = probe::raise_nofile_limit()
        .map_err(|e| fail(format!("cannot raise RLIMIT_NOFILE: {e}")))?;
    if runs("bursts") && args.burst_size as u64 + SPARE_FDS > own_limit {
        return Err(fail(format!(
            "a burst of {} connections does not fit under this process's descriptor limit {own_limit} \
             ({SPARE_FDS} kept spare)",
            args.burst_size
        )));
    }
    let workers = args.workers();
    if runs("flood") {
        let largest = workers.iter().map(WorkerArgs::total).max().unwrap_or(0) as u64;
        if largest + 64 > own_limit {
            let needed = (args.idle_https + args.idle_dips + args.slow_body) as u64
                / own_limit.saturating_sub(64).max(1)
                + 1;
            return Err(fail(format!(
                "{} attack connections in {} processes need {largest} descriptors each (+64 spare), \
                 the hard limit is {own_limit}: use --attack-processes {needed} or more",
                args.idle_https + args.idle_dips + args.slow_body,
                args.attack_processes
            )));
        }
    }
    if !std::path::Path::new(&format!("/proc/{}", args.pid)).exists() {
        return Err(fail(format!("no process {} (--pid)", args.pid)));
    }
    let fd_limit = probe::fd_limit(args.pid).ok().flatten();
    let identified: Vec<Frontend> = FRONTENDS
        .iter()
        .map(|&name| {
            let method = if name == "json" {
                args.json_method.as_str()
            } else {
                "ping"
            };
            args.frontend(name, method)
        })
        .collect::<Result<_, _>>()?;
    let burst_frontends: Vec<Frontend> = args
        .burst_frontends
        .iter()
        .map(|name| {
            let name = FRONTENDS
                .iter()
                .find(|f| *f == name)
                .ok_or_else(|| fail(format!("unknown burst front-end {name:?}")))?;
            args.frontend(name, "ping")
        })
        .collect::<Result<_, _>>()?;
    let sampler = Sampler::start(args.pid, started, SAMPLE_EVERY);
    say(format!(
        "server pid {} (https {}, dips {}), descriptor limit {}; warm-up: {} identified calls per front-end",
        args.pid,
        args.https_port,
        args.dips_port,
        fd_limit.map_or("unlimited".into(), |l| l.to_string()),
        args.warmup_calls
    ));
    sampler.set_phase("warm-up");
    for fe in &identified {
        let records = callers::sequence(fe, args.warmup_calls, args.call_timeout)?;
        if let Some((_, message)) = records.iter().find_map(|r| r.error.as_ref()) {
            return Err(fail(format!(
                "warm-up: {} {} failed before any flood: {message}",
                fe.name, fe.method
            )));
        }
    }
    sampler.set_phase("idle");
    let idle = idle_figures(&sampler)?;
    say(format!(
        "idle: RSS {}, {} descriptors",
        mib(idle.rss_kb),
        idle.fds
    ));
    let mut report = FloodReport {
        schema: outcome::SCHEMA.into(),
        server: ServerInfo {
            pid: args.pid,
            https_port: args.https_port,
            dips_port: args.dips_port,
            fd_limit,
        },
        limits: args.limits(),
        idle,
        flood: None,
        bursts: None,
        server_exited: None,
        targets: Vec::new(),
        samples: Vec::new(),
    };
    if runs("flood") && sampler.gone().is_none() {
        report.flood = Some(flood(
            args,
            &workers,
            &identified,
            &sampler,
            idle,
            sources.len(),
        )?);
    }
    if runs("bursts") && sampler.gone().is_none() {
        report.bursts = Some(bursts(args, &burst_frontends, &sampler)?);
    }
    let (samples, gone) = sampler.finish();
    report.samples = samples;
    report.server_exited = gone;
    report.targets = outcome::evaluate(&report);
    Ok(report)
}

fn flood(
    args: &FloodArgs,
    workers: &[WorkerArgs],
    identified: &[Frontend],
    sampler: &Sampler,
    idle: Resources,
    source_count: usize,
) -> Result<FloodPhase, FloodError> {
    let total = args.idle_https + args.idle_dips + args.slow_body;
    say(format!(
        "flood: {} idle HTTPS + {} idle DISET + {} slow-body = {total} connections from {} ({source_count} addresses), {} processes",
        args.idle_https,
        args.idle_dips,
        args.slow_body,
        args.sources,
        workers.len()
    ));
    sampler.set_phase("ramp");
    let ramp_started = Instant::now();
    let attack = Workers::spawn(workers)?;
    let ramp_complete = attack.wait_ready(args.ramp_timeout)?;
    let ramp_s = ramp_started.elapsed().as_secs_f64();
    let a = attack.total();
    say(format!(
        "ramp {}: {ramp_s:.1} s; open now: {} idle HTTPS, {} idle DISET, {} slow-body; holding {:.0} s while {} callers per front-end call",
        if ramp_complete {
            "complete"
        } else {
            "INCOMPLETE (--ramp-timeout)"
        },
        a.idle_https.open,
        a.idle_dips.open,
        a.slow_body.open,
        args.hold.as_secs_f64(),
        args.callers
    ));
    sampler.set_phase("flood");
    let hold_started = Instant::now();
    let records = callers::paced(
        identified,
        args.callers,
        args.call_interval,
        args.call_timeout,
        hold_started + args.hold,
    )?;
    let hold_s = hold_started.elapsed().as_secs_f64();
    let during = sampler.max_in(&["ramp", "flood"]);
    sampler.set_phase("recovery");
    let released = Instant::now();
    let attack = attack.release();
    say(format!(
        "released after {hold_s:.1} s (RSS max {}, descriptors max {}); waiting up to {:.0} s for descriptors <= {} and RSS <= {}",
        mib(during.rss_kb),
        during.fds,
        args.recovery.as_secs_f64(),
        idle.fds + args.fd_slack,
        mib((idle.rss_kb as f64 * args.rss_factor) as u64)
    ));
    let mut recovery = Recovery::default();
    while let Ok(now) = sampler.now() {
        let t = round3(released.elapsed().as_secs_f64());
        (recovery.rss_kb, recovery.fds, recovery.waited_s) = (now.rss_kb, now.fds, t);
        if recovery.fds_back_after_s.is_none() && now.fds <= idle.fds + args.fd_slack {
            recovery.fds_back_after_s = Some(t);
        }
        if recovery.rss_back_after_s.is_none()
            && now.rss_kb as f64 <= idle.rss_kb as f64 * args.rss_factor
        {
            recovery.rss_back_after_s = Some(t);
        }
        let back = recovery.fds_back_after_s.is_some() && recovery.rss_back_after_s.is_some();
        if back || released.elapsed() >= args.recovery {
            break;
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
    Ok(FloodPhase {
        attack_processes: workers.len(),
        sources: args.sources.clone(),
        source_count,
        ramp_s: round3(ramp_s),
        ramp_complete,
        hold_s: round3(hold_s),
        attack,
        callers_per_frontend: args.callers,
        call_interval_ms: args.call_interval.as_secs_f64() * 1000.0,
        call_timeout_s: args.call_timeout.as_secs_f64(),
        frontends: identified
            .iter()
            .zip(&records)
            .map(|(fe, r)| summarize(fe.name, &fe.method, r))
            .collect(),
        during,
        recovery,
    })
}

fn bursts(
    args: &FloodArgs,
    frontends: &[Frontend],
    sampler: &Sampler,
) -> Result<BurstsPhase, FloodError> {
    sampler.set_phase("bursts");
    let mut phase = BurstsPhase {
        size: args.burst_size,
        idle_s: args.burst_idle.as_secs_f64(),
        ..BurstsPhase::default()
    };
    for i in 0..args.bursts {
        if i > 0 {
            std::thread::sleep(args.burst_gap);
        }
        let (parts, seconds) = callers::burst(frontends, args.burst_size, args.burst_timeout)?;
        let after = sampler.now().unwrap_or_default();
        let errors: u64 = parts.iter().map(|p| p.errors).sum();
        say(format!(
            "burst {}: {} new connections in {seconds:.1} s, {errors} errors; RSS {}, {} descriptors",
            i + 1,
            args.burst_size,
            mib(after.rss_kb),
            after.fds
        ));
        phase.rounds.push(BurstRound {
            seconds: round3(seconds),
            parts,
            after,
        });
    }
    phase.during = sampler.max_in(&["bursts"]);
    sampler.set_phase("burst-idle");
    say(format!(
        "idle for {:.0} s ...",
        args.burst_idle.as_secs_f64()
    ));
    std::thread::sleep(args.burst_idle);
    phase.after_idle = sampler.now().unwrap_or_default();
    Ok(phase)
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

/// The human summary.
pub fn print_summary(r: &FloodReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "\n=== tokenmanager-flood results ===")?;
    writeln!(
        out,
        "server pid {} (https {}, dips {}), descriptor limit {}; idle: RSS {}, {} descriptors",
        r.server.pid,
        r.server.https_port,
        r.server.dips_port,
        r.server
            .fd_limit
            .map_or("unlimited".into(), |l| l.to_string()),
        mib(r.idle.rss_kb),
        r.idle.fds
    )?;
    if let Some(f) = &r.flood {
        writeln!(
            out,
            "\nflood from {} ({} addresses), {} processes; ramp {:.1} s{}; held {:.1} s",
            f.sources,
            f.source_count,
            f.attack_processes,
            f.ramp_s,
            if f.ramp_complete { "" } else { " (INCOMPLETE)" },
            f.hold_s
        )?;
        writeln!(
            out,
            "  {:<11} {:>9} {:>8} {:>8} {:>9} {:>8} {:>10} {:>8} {:>8} {:>8}",
            "attack",
            "requested",
            "opens",
            "reopens",
            "srv-close",
            "replied",
            "open@end",
            "peak",
            "conn-err",
            "tls-err"
        )?;
        for (name, c) in f.attack.kinds() {
            writeln!(
                out,
                "  {:<11} {:>9} {:>8} {:>8} {:>9} {:>8} {:>10} {:>8} {:>8} {:>8}",
                name,
                c.requested,
                c.opens,
                c.reopens,
                c.closed_by_server,
                c.server_replies,
                c.open,
                c.peak_open,
                c.connect_errors,
                c.handshake_errors
            )?;
        }
        writeln!(
            out,
            "  slow-body bytes dripped: {}",
            f.attack.slow_body.body_bytes
        )?;
        writeln!(
            out,
            "identified callers: {} per front-end, a call every {:.0} ms each, new TLS connection per call, timeout {:.0} s",
            f.callers_per_frontend, f.call_interval_ms, f.call_timeout_s
        )?;
        writeln!(
            out,
            "  {:<18} {:>6} {:>6} {:>6} {:>9} {:>9} {:>9}",
            "front-end", "calls", "ok", "errors", "p50 ms", "p99 ms", "max ms"
        )?;
        for fe in &f.frontends {
            writeln!(
                out,
                "  {:<18} {:>6} {:>6} {:>6} {:>9} {:>9} {:>9}",
                format!("{} {}", fe.frontend, fe.method),
                fe.calls,
                fe.ok,
                fe.errors,
                opt_ms(fe.p50_ms),
                opt_ms(fe.p99_ms),
                opt_ms(fe.max_ms)
            )?;
            for sample in &fe.error_samples {
                writeln!(out, "      error: {sample}")?;
            }
        }
        let at_limit = r.server.fd_limit.is_some_and(|l| f.during.fds >= l);
        writeln!(
            out,
            "server during the flood: RSS max {}, descriptors max {}{}",
            mib(f.during.rss_kb),
            f.during.fds,
            if at_limit { " (AT ITS LIMIT)" } else { "" }
        )?;
        let when = |t: Option<f64>| t.map_or("not back".into(), |t| format!("back after {t:.1} s"));
        writeln!(
            out,
            "after release (waited {:.1} s): descriptors {} ({}), RSS {} ({})",
            f.recovery.waited_s,
            f.recovery.fds,
            when(f.recovery.fds_back_after_s),
            mib(f.recovery.rss_kb),
            when(f.recovery.rss_back_after_s)
        )?;
    }
    if let Some(b) = &r.bursts {
        writeln!(
            out,
            "\nbursts: {} × {} new connections",
            b.rounds.len(),
            b.size
        )?;
        writeln!(
            out,
            "  {:<6} {:>8} {:<40} {:>11} {:>6}",
            "burst", "seconds", "ok/calls (p99 ms) per front-end", "RSS after", "fds"
        )?;
        for (i, round) in b.rounds.iter().enumerate() {
            let parts: Vec<String> = round
                .parts
                .iter()
                .map(|p| format!("{} {}/{} ({})", p.frontend, p.ok, p.calls, opt_ms(p.p99_ms)))
                .collect();
            writeln!(
                out,
                "  {:<6} {:>8.1} {:<40} {:>11} {:>6}",
                i + 1,
                round.seconds,
                parts.join(", "),
                mib(round.after.rss_kb),
                round.after.fds
            )?;
            for p in &round.parts {
                for sample in &p.error_samples {
                    writeln!(out, "      {} error: {sample}", p.frontend)?;
                }
            }
        }
        writeln!(
            out,
            "  during the bursts: RSS max {}, descriptors max {}; after {:.0} s idle: RSS {}, {} descriptors",
            mib(b.during.rss_kb),
            b.during.fds,
            b.idle_s,
            mib(b.after_idle.rss_kb),
            b.after_idle.fds
        )?;
    }
    if let Some(why) = &r.server_exited {
        writeln!(out, "\nSERVER GONE: {why}")?;
    }
    writeln!(out, "\ntargets")?;
    for t in &r.targets {
        writeln!(
            out,
            "  {}  {:<48} {:<40} target {}",
            if t.pass { "PASS" } else { "FAIL" },
            t.name,
            t.measured,
            t.limit
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> FloodArgs {
        let mut argv = vec![
            "tokenmanager-flood",
            "--https-port",
            "8443",
            "--dips-port",
            "9181",
            "--pid",
            "1",
            "--cert",
            "proxy.pem",
        ];
        argv.extend_from_slice(extra);
        FloodArgs::try_parse_from(argv).unwrap()
    }

    #[test]
    fn the_attack_is_split_over_processes_without_overlap() {
        let a = args(&[
            "--idle-https",
            "10",
            "--idle-dips",
            "7",
            "--slow-body",
            "3",
            "--attack-processes",
            "3",
        ]);
        let workers = a.workers();
        assert_eq!(workers.len(), 3);
        let sum = |f: fn(&WorkerArgs) -> usize| workers.iter().map(f).sum::<usize>();
        assert_eq!(sum(|w| w.idle_https), 10);
        assert_eq!(sum(|w| w.idle_dips), 7);
        assert_eq!(sum(|w| w.slow_body), 3);
        assert_eq!(
            workers.iter().map(|w| w.first_slot).collect::<Vec<_>>(),
            [
                0,
                workers[0].total(),
                workers[0].total() + workers[1].total()
            ]
        );
        // Each worker's command line parses back to the same settings.
        for w in &workers {
            let mut argv = vec!["x".to_owned()];
            argv.extend(w.to_args());
            let back = WorkerArgs::try_parse_from(argv).unwrap();
            assert_eq!(back.to_args(), w.to_args());
            assert_eq!(back.connect_timeout, Duration::from_secs(5));
            assert_eq!(back.drip_interval, Duration::from_secs(1));
            assert_eq!(back.content_length, 100_000);
        }
    }

    #[test]
    fn defaults_and_limits() {
        let a = args(&["--scenarios", "bursts", "--burst-frontends", "dips"]);
        assert_eq!(a.scenarios, ["bursts"]);
        assert_eq!(a.burst_frontends, ["dips"]);
        assert_eq!(a.sources, "127.0.0.2-127.0.0.254");
        assert_eq!(a.recovery, Duration::from_secs(60));
        let l = a.limits();
        assert_eq!(
            (l.p99_ms, l.rss_kb_during, l.fd_slack, l.rss_factor),
            (1000.0, 262_144, 8, 2.0)
        );
    }
}
