//! The real `tokenmanager` binary: runs its commands, starts `serve` on a test configuration,
//! reads its log.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::app::TestApp;
use crate::support::TestDb;
use crate::test_config::TestConfig;

pub const BINARY: &str = env!("CARGO_BIN_EXE_tokenmanager");

pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BINARY);
    command.args(args).env_remove("TOKENMANAGER_LOG");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A fresh keyring in `db`'s directory, and there the tests' usual configuration on `db`
/// changed by `adjust`, as `tm.cfg`: its path.
pub fn configure(db: &TestDb, adjust: impl FnOnce(&mut TestConfig)) -> PathBuf {
    tokenmanager::crypto::KeyringFile::new(db.dir.path().join("keyring"))
        .create()
        .unwrap();
    let mut config = TestConfig::on(db);
    adjust(&mut config);
    config.write("tm.cfg")
}

/// [`configure`], and the application on it, in this process.
pub fn spawn_app(db: &TestDb, adjust: impl FnOnce(&mut TestConfig)) -> TestApp {
    TestApp::spawn(&configure(db, adjust))
}

/// [`configure`], and `serve` on it: the real binary, for tests that read its log or signal it.
pub fn spawn_process(db: &TestDb, adjust: impl FnOnce(&mut TestConfig)) -> ServeProcess {
    ServeProcess::spawn(&configure(db, adjust))
}

/// A running `serve`, the real binary; killed when dropped.
pub struct ServeProcess {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    pub https: u16,
    pub dips: u16,
    pub metrics: u16,
}

impl ServeProcess {
    pub fn spawn(config: &Path) -> Self {
        Self::spawn_with(config, |_| {})
    }

    /// [`spawn`](Self::spawn), with `adjust` applied to the command first (environment,
    /// `pre_exec` hooks, ...).
    pub fn spawn_with(config: &Path, adjust: impl FnOnce(&mut Command)) -> Self {
        let mut command = Command::new(BINARY);
        command
            .args(["serve", "--config"])
            .arg(config)
            .env("TOKENMANAGER_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        adjust(&mut command);
        let mut child = command.spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut server = Self {
            child,
            log,
            https: 0,
            dips: 0,
            metrics: 0,
        };
        let line = server.wait_for_log("tokenmanager listening");
        let port = |name: &str| -> u16 {
            let start = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
            line[start..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        (server.https, server.dips, server.metrics) =
            (port("https"), port("dips"), port("metrics"));
        server
    }

    /// The first log line containing `needle`, waiting for it up to 30 s.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "serve exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) {
        let _ = self.child.wait();
    }

    /// Whether the process exits within `wait`.
    pub fn exits_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets the open-file limits (`soft`, `hard`) of the process `command` will start.
pub fn with_open_file_limit(command: &mut Command, soft: u64, hard: u64) {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit is async-signal-safe, and `limit` is a valid rlimit.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}
