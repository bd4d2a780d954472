//! The test PKI, shared by every test of this binary: one CA (trusted by the servers), one
//! untrusted CA, the host certificate, and users issued on demand, all from the product's own
//! `x509::pki`. It lives in memory: each test writes the files a server reads into its own
//! temporary directory ([`TestPki::write_files`]), removed with it, so that no key outlives the
//! test (a static is never dropped).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use tokenmanager::x509::pki::{Ca, CertifiedKey, ProxyKind, Validity};

const DAY: Duration = Duration::from_secs(86_400);
pub const HOST_DN: &str = "/C=ch/O=DIRAC/OU=Test/CN=localhost";

pub struct TestPki {
    pub ca: Ca,
    pub untrusted: Ca,
    pub host: CertifiedKey,
}

/// The files of `/DIRAC/Security` in a test's directory: the host certificate, its key and the
/// hashed CA directory the servers trust.
pub struct PkiFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_dir: PathBuf,
}

impl PkiFiles {
    /// Their paths in `dir` (nothing is written).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join("hostcert.pem"),
            key: dir.join("hostkey.pem"),
            ca_dir: dir.join("certificates"),
        }
    }
}

impl TestPki {
    pub fn shared() -> &'static TestPki {
        static PKI: OnceLock<TestPki> = OnceLock::new();
        PKI.get_or_init(|| {
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
            TestPki {
                ca,
                untrusted,
                host,
            }
        })
    }

    /// Writes the host certificate, its key and the CA directory into `dir` unless the
    /// certificate is there already (a test that replaced it keeps its own): their paths.
    pub fn write_files(&self, dir: &Path) -> PkiFiles {
        let files = PkiFiles::in_dir(dir);
        if !files.cert.exists() {
            self.ca.write_hashed_dir(&files.ca_dir).unwrap();
            self.host.to_pem_files(&files.cert, &files.key).unwrap();
        }
        files
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
