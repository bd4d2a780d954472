//! When the service's own certificates expire: its host certificate, and the CAs it trusts to
//! verify its callers (one of them expiring locks out every user it issued for).

use std::path::Path;

use openssl::asn1::Asn1Time;
use openssl::x509::{X509, X509Ref};

/// `notAfter` in seconds since the epoch.
pub fn not_after(cert: &X509Ref) -> Result<i64, String> {
    let epoch = Asn1Time::from_unix(0).map_err(|e| e.to_string())?;
    let diff = epoch.diff(cert.not_after()).map_err(|e| e.to_string())?;
    Ok(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

/// The expiry of the first certificate of the PEM file `path` (the host certificate).
pub fn certificate_file_expiry(path: &Path) -> Result<i64, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let cert = X509::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
    not_after(&cert)
}

/// The earliest expiry among the certificates of the CA directory `dir` (files that are not
/// PEM certificates, such as CRLs and signing policies, are skipped); None without any.
pub fn earliest_ca_expiry(dir: &Path) -> Result<Option<i64>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut earliest: Option<i64> = None;
    for entry in entries.flatten() {
        let Ok(pem) = std::fs::read(entry.path()) else {
            continue;
        };
        for cert in X509::stack_from_pem(&pem).unwrap_or_default() {
            let expiry = not_after(&cert)?;
            earliest = Some(earliest.map_or(expiry, |e| e.min(expiry)));
        }
    }
    Ok(earliest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::pki::{Ca, Validity};

    #[test]
    fn expiries_are_read_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let soon = Ca::new("/O=Test/CN=Soon", Validity::unix(1_000, 2_000_000_000)).unwrap();
        let later = Ca::new("/O=Test/CN=Later", Validity::unix(1_000, 2_100_000_000)).unwrap();
        for (name, ca) in [("soon.0", &soon), ("later.pem", &later)] {
            std::fs::write(dir.path().join(name), ca.cert().to_pem().unwrap()).unwrap();
        }
        std::fs::write(dir.path().join("soon.signing_policy"), "access_id_CA X509").unwrap();
        assert_eq!(earliest_ca_expiry(dir.path()), Ok(Some(2_000_000_000)));
        assert_eq!(
            certificate_file_expiry(&dir.path().join("later.pem")),
            Ok(2_100_000_000)
        );
        assert!(certificate_file_expiry(&dir.path().join("missing.pem")).is_err());
    }
}
