//! Configuration from DIRAC's own Configuration Server (PyPI DIRAC 9.1.22 over dips://, started
//! by tests/dirac-cs/start_cs.sh): fetched at start, merged under the local files, polled, and
//! fetched on refreshConfiguration; start-up fails when no server answers.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokenmanager::config::Backend;
use tokenmanager::x509::pki::ProxyKind;

use crate::app::TestApp;
use crate::client::Client;
use crate::pki::TestPki;
use crate::process::{run, stderr};
use crate::support::TestDb;
use crate::test_config::{TestConfig, dn};

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/dirac-cs")
        .join(name)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The CS's content: the tests' Registry (its host may also commit: CSAdministrator), the
/// test IdP section, and `extra` users in g_user; paths (none are used) in `dir`.
fn content(dir: &Path, extra_users: &[&str]) -> String {
    let mut config = TestConfig::new(dir);
    config
        .section("Registry/Hosts/localhost")
        .set("Properties", "TrustedHost, CSAdministrator");
    for user in extra_users {
        config.user(user, "g_user");
    }
    config.remove("DIRAC").remove("Systems");
    config.text()
}

/// DIRAC's CS in its own process group, killed with it.
struct DiracCs {
    child: Child,
    work: PathBuf,
    port: u16,
}

impl DiracCs {
    fn start(dir: &Path, content_text: &str) -> Self {
        let work = dir.join("cs");
        let content_file = dir.join("cs-content.cfg");
        std::fs::write(&content_file, content_text).unwrap();
        let port = free_port();
        let mut child = Command::new(script("start_cs.sh"))
            .arg(&work)
            .arg(&content_file)
            .arg(port.to_string())
            .args(Self::pki_args(dir))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let ready = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|line| line.starts_with("dirac-cs ready"));
        let mut cs = Self { child, work, port };
        if ready.is_none() {
            let mut err = String::new();
            if let Some(mut e) = cs.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("DIRAC's Configuration Server did not start: {err}");
        }
        cs
    }

    /// The host certificate, its key and the CA directory, written into `dir`.
    fn pki_args(dir: &Path) -> [PathBuf; 3] {
        let files = TestPki::shared().write_files(dir);
        [files.cert, files.key, files.ca_dir]
    }

    fn url(&self) -> String {
        format!("dips://localhost:{}/Configuration/Server", self.port)
    }

    fn commit(&self, dir: &Path, content_text: &str) {
        let file = dir.join("cs-new.cfg");
        std::fs::write(&file, content_text).unwrap();
        let output = Command::new(script("commit.sh"))
            .arg(&self.work)
            .arg(&file)
            .arg(self.port.to_string())
            .args(Self::pki_args(dir))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "commit: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for DiracCs {
    fn drop(&mut self) {
        // The whole group: the server and anything it started.
        let _ = Command::new("kill")
            .args(["--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// A local configuration without a Registry: it comes from the CS. The local file overrides
/// one group's properties, to show that local options win.
fn local_config(db: &TestDb, servers: &str, refresh_seconds: u64) -> PathBuf {
    tokenmanager::crypto::KeyringFile::new(db.dir.path().join("keyring"))
        .create()
        .unwrap();
    let mut config = TestConfig::on(db);
    config
        .section("DIRAC/Configuration")
        .set("Servers", servers)
        .set("RefreshTime", refresh_seconds);
    config.remove("Registry").remove("Resources");
    config
        .section("Registry/Groups/g_full")
        .set("Properties", "NormalUser, FullDelegation, ProxyManagement");
    config.write("local.cfg")
}

fn whoami(app: &TestApp, user: &str, group: &str) -> (Option<u16>, serde_json::Value) {
    let proxy = TestPki::shared().proxy(&dn(user), ProxyKind::Rfc3820, Some(group));
    let reply = Client::with_certificate(&proxy).post(app.https, "/api/v1/whoami", "{}");
    (reply.status(), reply.body()["value"].clone())
}

/// Waits up to 20 s for `check`.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_configuration_server_is_fetched_merged_under_local_files_and_followed() {
    let cs_dir = tempfile::tempdir().unwrap();
    let cs = DiracCs::start(cs_dir.path(), &content(cs_dir.path(), &[]));

    // Polling every second.
    let db = TestDb::new(Backend::Sqlite);
    let app = TestApp::spawn(&local_config(&db, &cs.url(), 1));
    // A user only the CS knows is served, with the local file's properties for its group.
    let (status, me) = whoami(&app, "full", "g_full");
    assert_eq!(status, Some(200), "{me}");
    assert_eq!(me["username"], "full");
    assert_eq!(
        me["properties"],
        json!(["NormalUser", "FullDelegation", "ProxyManagement"])
    );
    // whoami is open to anyone with a valid certificate: an unknown user is anonymous.
    let known = |app: &TestApp| whoami(app, "newcomer", "g_user").1["username"] == "newcomer";
    assert!(!known(&app), "unknown before the commit");

    // Not polling (an hour): only refreshConfiguration fetches.
    let db_manual = TestDb::new(Backend::Sqlite);
    let manual = TestApp::spawn(&local_config(&db_manual, &cs.url(), 3600));

    cs.commit(cs_dir.path(), &content(cs_dir.path(), &["newcomer"]));
    eventually("the polling service learns the new user", || known(&app));
    assert!(
        !known(&manual),
        "a service that does not poll has not fetched"
    );

    let admin = TestPki::shared().proxy(&dn("admin"), ProxyKind::Rfc3820, Some("g_admin"));
    let refreshed = Client::with_certificate(&admin).post(
        manual.https,
        "/api/v1/refreshConfiguration",
        r#"{"fromMaster": true}"#,
    );
    assert_eq!(refreshed.status(), Some(200), "{refreshed:?}");
    assert!(known(&manual), "known right after refreshConfiguration");
}

#[test]
fn serve_refuses_to_start_when_no_configuration_server_answers() {
    let db = TestDb::new(Backend::Sqlite);
    let closed = format!("dips://localhost:{}/Configuration/Server", free_port());
    let config = local_config(&db, &closed, 300);
    let output = run(&["serve", "--config", config.to_str().unwrap()], &[]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("Configuration Server") && message.contains(&closed),
        "{message}"
    );
}
