//! What the benchmark runs against: a test PKI (the crate's own `x509::pki`), a generated DIRAC
//! configuration, the fixture IdP (`node tests/idp/server.mjs`) and one `tokenmanager serve`.
//! Both processes are children killed by Drop guards (also when the benchmark panics) and by
//! PR_SET_PDEATHSIG when the benchmark itself dies.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokenmanager::config::DatabaseUrl;
use tokenmanager::x509::pki::{Ca, CertifiedKey, ProxyKind, Validity};

const DAY: Duration = Duration::from_secs(86_400);
/// The one provider of the generated configuration (the fixture).
pub const PROVIDER: &str = "test-idp";
/// The audience of every benchmark token: with it the fixture issues JWT access tokens.
pub const AUDIENCE: &str = "https://ce.example.org";
/// Scopes of the minted grants (the refresh asks for `compute.read` plus the group's scopes).
pub const GRANT_SCOPE: &str = "openid offline_access compute.read";

pub fn dn(name: &str) -> String {
    format!("/C=ch/O=DIRAC/OU=Bench/CN={name}")
}

/// The IdP subject (and TokenDB user ID) of a DIRAC user of the benchmark.
pub fn user_id(name: &str) -> String {
    format!("id-{name}")
}

/// The CA, host certificate and CA directory, as files under `dir`.
pub struct Pki {
    pub ca: Ca,
    dir: PathBuf,
}

impl Pki {
    pub fn create(dir: &Path) -> Pki {
        let ca = Ca::new("/C=ch/O=DIRAC/CN=Bench CA", Validity::from_now(7 * DAY)).unwrap();
        let host = ca
            .issue_host(
                &dn("localhost"),
                &["localhost", "127.0.0.1"],
                Validity::from_now(7 * DAY),
            )
            .unwrap();
        ca.write_hashed_dir(&dir.join("certificates")).unwrap();
        host.to_pem_files(&dir.join("hostcert.pem"), &dir.join("hostkey.pem"))
            .unwrap();
        Pki {
            ca,
            dir: dir.to_owned(),
        }
    }

    /// An RFC 3820 proxy of `name` carrying DIRAC group `group`, as `dirac-proxy-init -g`.
    pub fn proxy(&self, name: &str, group: &str) -> CertifiedKey {
        let user = self
            .ca
            .issue_user(&dn(name), Validity::from_now(DAY))
            .unwrap();
        user.proxy(ProxyKind::Rfc3820).group(group).issue().unwrap()
    }

    fn security_options(&self) -> String {
        let path = |name: &str| self.dir.join(name).display().to_string();
        format!(
            "    CertFile = {}\n    KeyFile = {}\n    CALocation = {}\n",
            path("hostcert.pem"),
            path("hostkey.pem"),
            path("certificates")
        )
    }
}

/// The token owners of the generated Registry. Besides them it has two callers without token:
/// `full` (group g_full, FullDelegation: calls ping and getToken) and `manager` (g_manager,
/// ProxyManagement: stores tokens with updateToken).
pub struct Users<'a> {
    /// Token owners of group `g_user` (hit and burst users).
    pub small: &'a [&'a str],
    /// Token owners of group `g_mass` (the memory measurement).
    pub mass: &'a [String],
}

/// A DIRAC configuration: one TokenManager on 127.0.0.1 (free ports), on `database` (default:
/// SQLite under `dir`), the fixture as IdP `test-idp` (client `tm-basic`, RFC 8707 `resource`
/// audiences), refresh actors that stop after `idle_seconds`, and the service options of
/// `BENCH_SERVICE_OPTIONS` (`;`-separated, e.g. `MaxStaleness = 0`).
pub fn write_config(
    dir: &Path,
    pki: &Pki,
    idp_issuer: &str,
    users: &Users<'_>,
    idle_seconds: u64,
    database: Option<&DatabaseUrl>,
) -> PathBuf {
    let database = database.map_or_else(
        || format!("sqlite://{}", dir.join("tm.sqlite").display()),
        |url| url.expose().to_owned(),
    );
    let extra_options = std::env::var("BENCH_SERVICE_OPTIONS")
        .unwrap_or_default()
        .replace(';', "\n");
    let mut text = String::with_capacity(200 + users.mass.len() * 120);
    text.push_str("DIRAC\n{\n  Setup = Bench\n  Setups\n  {\n    Bench\n    {\n      Framework = Production\n    }\n  }\n");
    text.push_str("  Security\n  {\n");
    text.push_str(&pki.security_options());
    text.push_str("  }\n}\n");
    text.push_str(&format!(
        "Systems\n{{\n  Framework\n  {{\n    Production\n    {{\n      Services\n      {{\n        TokenManager\n        {{\n\
         ListenAddress = 127.0.0.1\nPort = 0\nHTTPSPort = 0\nMetricsPort = 0\nEncryptionKeyFile = {}\n\
         RefreshActorIdleTime = {idle_seconds}\n{extra_options}\n\
         }}\n      }}\n      Databases\n      {{\n        TokenDB\n        {{\nURL = {database}\n        }}\n      }}\n    }}\n  }}\n}}\n",
        dir.join("keyring").display(),
    ));
    text.push_str("Registry\n{\n  DefaultGroup = g_user\n  Users\n  {\n");
    for caller in ["full", "manager"] {
        text.push_str(&format!(
            "    {caller}\n    {{\n      DN = {}\n    }}\n",
            dn(caller)
        ));
    }
    for name in users
        .small
        .iter()
        .copied()
        .chain(users.mass.iter().map(String::as_str))
    {
        text.push_str(&format!(
            "    {name}\n    {{\n      DN = {}\n      DN += /O=DIRAC/CN={}\n    }}\n",
            dn(name),
            user_id(name)
        ));
    }
    text.push_str("  }\n  Groups\n  {\n");
    let group = |text: &mut String, name: &str, members: &str, properties: &str| {
        text.push_str(&format!(
            "    {name}\n    {{\n      Users = {members}\n      Properties = {properties}\n      VO = dteam\n    }}\n"
        ));
    };
    group(&mut text, "g_full", "full", "NormalUser, FullDelegation");
    group(&mut text, "g_manager", "manager", "ProxyManagement");
    group(&mut text, "g_user", &users.small.join(", "), "NormalUser");
    if !users.mass.is_empty() {
        group(&mut text, "g_mass", &users.mass.join(", "), "NormalUser");
    }
    text.push_str("  }\n  VO\n  {\n    dteam\n    {\n      IdProvider = test-idp\n    }\n  }\n}\n");
    text.push_str(&format!(
        "Resources\n{{\n  IdProviders\n  {{\n    {PROVIDER}\n    {{\n      issuer = {idp_issuer}\n      \
         client_id = tm-basic\n      client_secret = tm-basic-secret\n      audience_parameter = resource\n      \
         allowed_audiences = {AUDIENCE}\n    }}\n  }}\n}}\n"
    ));
    let path = dir.join("bench.cfg");
    std::fs::write(&path, text).unwrap();
    path
}

/// Keeps the calling thread (and the threads it starts afterwards) on CPU `cpu`.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    pin_current_thread_to(&[cpu])
}

/// Keeps the calling thread (and the threads it starts afterwards) on `cpus`.
pub fn pin_current_thread_to(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes the child get SIGKILL when the benchmark dies (Ctrl-C, SIGKILL), where Drop cannot run.
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Lines of a child's pipe, kept (the last `keep`) for error messages; the first line matching
/// `ready` is sent on the channel; warnings and errors (the first 100) also go to `problems`.
fn drain(
    pipe: impl std::io::Read + Send + 'static,
    keep: usize,
    ready: Option<(&'static str, mpsc::Sender<String>)>,
    problems: Option<Arc<Mutex<Vec<String>>>>,
) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        let mut ready = ready;
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Some(problems) = &problems
                && (line.contains("ERROR") || line.contains("WARN"))
            {
                let mut problems = problems.lock().unwrap();
                if problems.len() < 100 {
                    problems.push(line.clone());
                }
            }
            if let Some((needle, tx)) = &ready
                && line.contains(needle)
            {
                let _ = tx.send(line.clone());
                ready = None;
            }
            let mut lines = sink.lock().unwrap();
            if lines.len() >= keep {
                lines.remove(0);
            }
            lines.push(line);
        }
    });
    lines
}

/// The fixture IdP (tests/idp), killed on drop.
pub struct Idp {
    child: Child,
    _stdin: Option<ChildStdin>,
    pub port: u16,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Idp {
    pub fn spawn() -> Idp {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/idp");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "the fixture IdP is not installed: run `npm ci --prefix tests/idp`"
        );
        let node = std::env::var("TOKENMANAGER_TEST_NODE").unwrap_or_else(|_| "node".into());
        let mut command = Command::new(&node);
        command
            .arg(dir.join("server.mjs"))
            .args(["--port", "0", "--exit-with-stdin"])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {node:?}: {e}"));
        let (tx, rx) = mpsc::channel();
        let _stdout = drain(
            child.stdout.take().unwrap(),
            10,
            Some(("test-idp listening", tx)),
            None,
        );
        let stderr = drain(child.stderr.take().unwrap(), 50, None, None);
        let stdin = child.stdin.take();
        let mut idp = Idp {
            child,
            _stdin: stdin,
            port: 0,
            stderr,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the fixture IdP did not start:\n{}", idp.stderr()));
        idp.port = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line from the fixture IdP: {line:?}"));
        idp
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `tokenmanager serve`, killed on drop.
pub struct Server {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    problems: Arc<Mutex<Vec<String>>>,
    pub https: u16,
    /// Its metrics port (plain HTTP: /metrics, /healthz, /readyz).
    pub metrics: u16,
}

impl Server {
    pub fn spawn(binary: &Path, config: &Path) -> Server {
        Self::spawn_on(binary, config, None)
    }

    /// On `cpu` only, when given: the server then sizes its worker pools to that one CPU.
    pub fn spawn_on(binary: &Path, config: &Path, cpu: Option<usize>) -> Server {
        let mut command = Command::new(binary);
        command
            .args(["serve", "--config"])
            .arg(config)
            .env("TOKENMANAGER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        die_with_parent(&mut command);
        if let Some(cpu) = cpu {
            // SAFETY: sched_setaffinity is async-signal-safe; nothing else runs before exec.
            unsafe {
                command.pre_exec(move || pin_current_thread(cpu));
            }
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let (tx, rx) = mpsc::channel();
        let problems = Arc::new(Mutex::new(Vec::new()));
        let log = drain(
            child.stderr.take().unwrap(),
            200,
            Some(("tokenmanager listening", tx)),
            Some(problems.clone()),
        );
        let mut server = Server {
            child,
            log,
            problems,
            https: 0,
            metrics: 0,
        };
        let started = Instant::now();
        let line = loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                break line;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "serve exited ({status}) before listening:\n{}",
                    server.log()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "serve did not listen within 60 s:\n{}",
                server.log()
            );
        };
        let port = |key: &str| -> u16 {
            line.split(key)
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no {key} port in {line:?}"))
        };
        server.https = port("https=");
        server.metrics = port("metrics=");
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The warnings and errors it logged so far (the first 100).
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap().clone()
    }

    /// Makes every panic of the benchmark (any thread) also print the end of the server's log.
    pub fn log_on_panic(&self) {
        let log = self.log.clone();
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            let lines = log.lock().map(|l| l.join("\n")).unwrap_or_default();
            eprintln!("--- the last lines of the server's log ---\n{lines}");
        }));
    }

    /// Kills it and waits for it to exit.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Panics with the log if the server has exited.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("serve exited ({status}):\n{}", self.log());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/proc/<pid>/status` memory lines, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss: u64,
    pub anon: u64,
    pub file: u64,
    pub shmem: u64,
    pub hwm: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .map_or(0, |kib| kib * 1024)
        };
        Memory {
            rss: field("VmRSS:"),
            anon: field("RssAnon:"),
            file: field("RssFile:"),
            shmem: field("RssShmem:"),
            hwm: field("VmHWM:"),
        }
    }
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // Fields after the command name (in parentheses, may hold spaces): state is 0, utime 11.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field(11) + field(12)) / ticks
}

/// CPU time the whole machine has spent busy (not idle, not waiting for I/O), in seconds.
pub fn machine_busy_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // cpu user nice system idle iowait irq softirq steal ...
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0.0);
    (field(0) + field(1) + field(2) + field(5) + field(6) + field(7)) / ticks
}

/// `/proc/loadavg`'s first three numbers.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
