//! The test PKI, shared by every test of this binary: one CA (trusted by the servers), one
//! untrusted CA, the host certificate, and users issued on demand, all from the product's own
//! `x509::pki`. Files live in one temp directory for the whole run.

use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;
use tokenmanager::x509::pki::{Ca, CertifiedKey, ProxyKind, Validity};

const DAY: Duration = Duration::from_secs(86_400);
pub const HOST_DN: &str = "/C=ch/O=DIRAC/OU=Test/CN=localhost";

pub struct TestPki {
    dir: TempDir,
    pub ca: Ca,
    pub untrusted: Ca,
    pub host: CertifiedKey,
}

impl TestPki {
    pub fn shared() -> &'static TestPki {
        static PKI: OnceLock<TestPki> = OnceLock::new();
        PKI.get_or_init(|| {
            // A static is never dropped, so this directory outlives the run: it goes under
            // cargo's target directory (removed by `cargo clean`), never in /tmp with its keys.
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
            let ca = Ca::new("/C=ch/O=DIRAC/CN=Test CA", Validity::from_now(30 * DAY)).unwrap();
            let untrusted = Ca::new(
                "/C=ch/O=Elsewhere/CN=Other CA",
                Validity::from_now(30 * DAY),
            )
            .unwrap();
            let host = ca
                .issue_host(
                    HOST_DN,
                    &["localhost", "127.0.0.1"],
                    Validity::from_now(30 * DAY),
                )
                .unwrap();
            ca.write_hashed_dir(&dir.path().join("certificates"))
                .unwrap();
            host.to_pem_files(
                &dir.path().join("hostcert.pem"),
                &dir.path().join("hostkey.pem"),
            )
            .unwrap();
            TestPki {
                dir,
                ca,
                untrusted,
                host,
            }
        })
    }

    /// The `/DIRAC/Security` options of a server using this PKI.
    pub fn security_options(&self) -> String {
        let path = |name: &str| self.dir.path().join(name).display().to_string();
        format!(
            "CertFile = {}\nKeyFile = {}\nCALocation = {}",
            path("hostcert.pem"),
            path("hostkey.pem"),
            path("certificates")
        )
    }

    /// The hashed CA directory the servers trust.
    pub fn ca_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("certificates")
    }

    pub fn user(&self, dn: &str) -> CertifiedKey {
        self.ca.issue_user(dn, Validity::from_now(DAY)).unwrap()
    }

    pub fn proxy(&self, dn: &str, kind: ProxyKind, group: Option<&str>) -> CertifiedKey {
        let user = self.user(dn);
        let builder = user.proxy(kind);
        match group {
            Some(group) => builder.group(group).issue().unwrap(),
            None => builder.issue().unwrap(),
        }
    }
}

/// The shared host certificate and key files, as `security_options` names them.
pub fn shared_host_files() -> (String, String) {
    let dir = TestPki::shared().dir.path();
    (
        dir.join("hostcert.pem").display().to_string(),
        dir.join("hostkey.pem").display().to_string(),
    )
}
