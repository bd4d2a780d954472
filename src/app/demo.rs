//! The shipped example configuration's throwaway credentials (`GenerateDemoCredentials`): a
//! CA, a host certificate and a user proxy, and the command that tries them.

use std::path::Path;

use super::AppError;
use crate::config::Settings;
use crate::x509::pki::{DemoPki, ProxyKind};

/// For the shipped example configuration: a throwaway CA, host certificate, user certificate and
/// proxy, written where `/DIRAC/Security` points, if the host certificate is not there yet.
pub(super) fn generate_pki(settings: &Settings) -> Result<(), AppError> {
    let security = &settings.security;
    let Some(cert_file) = security.cert_file.as_ref().filter(|f| !f.exists()) else {
        return Ok(());
    };
    let dir = cert_file.parent().unwrap_or(Path::new("."));
    // DemoPki::write_to's layout, which /DIRAC/Security must name.
    let expected = [
        (dir.join("hostcert.pem"), &security.cert_file, "CertFile"),
        (dir.join("hostkey.pem"), &security.key_file, "KeyFile"),
        (
            dir.join("certificates"),
            &security.ca_location,
            "CALocation",
        ),
    ];
    for (path, configured, option) in expected {
        if configured.as_ref() != Some(&path) {
            return Err(AppError::Tls(format!(
                "GenerateDemoCredentials writes {}: set /DIRAC/Security/{option} to it",
                path.display()
            )));
        }
    }
    let pki_error = |e: crate::x509::pki::PkiError| AppError::Tls(e.to_string());
    let pki = DemoPki::generate(&["localhost", "127.0.0.1"]).map_err(pki_error)?;
    pki.write_to(dir).map_err(pki_error)?;
    let proxy = pki
        .user
        .proxy(ProxyKind::Rfc3820)
        .issue()
        .map_err(pki_error)?;
    proxy
        .write_proxy_file(&dir.join("userproxy.pem"))
        .map_err(pki_error)?;
    tracing::warn!(dir = %dir.display(), user = DemoPki::USER_DN, "generated a throwaway demo PKI");
    Ok(())
}

/// Logs a command that calls `whoami` with the demo proxy.
pub(super) fn log_command(settings: &Settings, https_port: u16) {
    let Some(dir) = settings
        .security
        .cert_file
        .as_ref()
        .and_then(|f| f.parent())
    else {
        return;
    };
    let proxy = dir.join("userproxy.pem");
    let ca = dir.join("certificates");
    let host = match settings.service.listen_address {
        address if address.is_unspecified() => "127.0.0.1".to_owned(),
        address => address.to_string(),
    };
    tracing::info!(
        "try: curl --capath {} --cert {} -X POST https://{host}:{https_port}/api/v1/whoami",
        ca.display(),
        proxy.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configurations_user_is_the_demo_pkis_user() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tokenmanager.example.cfg");
        let settings = crate::config::load(&[example]).unwrap().settings;
        assert_eq!(
            settings.registry.username_for_dn(DemoPki::USER_DN),
            Some("alice")
        );
    }
}
