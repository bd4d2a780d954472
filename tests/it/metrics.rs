//! /metrics as Prometheus reads it: Debian's promtool accepts it, and it counts what happened.

use std::io::Write;
use std::process::{Command, Stdio};

use tokenmanager::x509::pki::ProxyKind;

use crate::app::TestApp;
use crate::client::{Client, http_get};
use crate::pki::TestPki;
use crate::support::{TestStore, new_token, store_token};
use crate::test_config::TestConfig;

fn promtool_check(exposition: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (tests/setup.sh installs Debian's prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The value of `series` (its name and labels as exposed) in a Prometheus text exposition.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[actix::test]
async fn metrics_pass_promtool_and_count_requests_and_credentials() {
    let store = TestStore::new(tokenmanager::config::Backend::Sqlite).await;
    for (user, provider) in [("a", "test-idp"), ("b", "test-idp"), ("c", "other-idp")] {
        store_token(&store.database, new_token(user, provider, "rt", "at")).await;
    }
    let config = TestConfig::on(&store.db).write("tm.cfg");
    let app = TestApp::spawn(&config);
    let pki = TestPki::shared();
    let plain = pki.proxy("/C=ch/O=DIRAC/OU=Test/CN=plain", ProxyKind::Rfc3820, None);
    let client = Client::with_certificate(&plain);
    for _ in 0..3 {
        assert_eq!(
            client
                .post(app.https, "/api/v1/echo", r#"{"data": 1}"#)
                .status(),
            Some(200)
        );
    }
    assert_eq!(
        client
            .post(app.https, "/api/v1/refreshConfiguration", "{}")
            .status(),
        Some(403)
    );
    assert_eq!(
        Client::anonymous()
            .post(app.https, "/api/v1/ping", "{}")
            .status(),
        Some(401)
    );

    let (status, exposition) = http_get(app.metrics, "/metrics");
    assert_eq!(status, 200);
    let (valid, report) = promtool_check(&exposition);
    assert!(
        valid,
        "promtool check metrics failed:\n{report}\n{exposition}"
    );
    assert!(
        !report.contains("WARNING") && report.trim().is_empty(),
        "promtool lint: {report}"
    );

    let requests = |labels: &str| {
        sample(
            &exposition,
            &format!("tokenmanager_requests_total{{{labels}}}"),
        )
    };
    assert_eq!(
        requests(r#"method="echo",outcome="ok",protocol="json""#),
        Some(3.0)
    );
    assert_eq!(
        requests(r#"method="refreshConfiguration",outcome="forbidden",protocol="json""#),
        Some(1.0)
    );
    assert_eq!(
        requests(r#"method="ping",outcome="unauthenticated",protocol="json""#),
        Some(1.0)
    );
    let echo_count = sample(
        &exposition,
        r#"tokenmanager_request_duration_seconds_count{method="echo",protocol="json",result="ok"}"#,
    );
    assert_eq!(echo_count, Some(3.0));
    let stored = |labels: &str| {
        sample(
            &exposition,
            &format!("tokenmanager_stored_credentials{{{labels}}}"),
        )
    };
    assert_eq!(stored(r#"provider="test-idp",state="active""#), Some(2.0));
    assert_eq!(stored(r#"provider="other-idp",state="active""#), Some(1.0));
    assert_eq!(
        sample(
            &exposition,
            r#"tokenmanager_idp_backoff_seconds{idp="test-idp"}"#
        ),
        Some(0.0)
    );
    let host_expiry = tokenmanager::x509::expiry::not_after(&pki.host.cert).unwrap();
    assert_eq!(
        sample(
            &exposition,
            r#"tokenmanager_certificate_expiry_timestamp_seconds{certificate="host"}"#
        ),
        Some(host_expiry as f64)
    );
    let ca_expiry = tokenmanager::x509::expiry::not_after(pki.ca.cert()).unwrap();
    assert_eq!(
        sample(
            &exposition,
            r#"tokenmanager_certificate_expiry_timestamp_seconds{certificate="ca"}"#
        ),
        Some(ca_expiry as f64)
    );
    assert_eq!(
        stored(r#"provider="test-idp",state="needs_redelegation""#),
        Some(0.0),
        "a configured IdP has every state's series from the first scrape"
    );
    assert!(sample(&exposition, "tokenmanager_db_pool_connections").unwrap() >= 1.0);
    assert!(sample(&exposition, "tokenmanager_db_pool_wait_seconds_count").unwrap() >= 1.0);
    assert_eq!(
        sample(
            &exposition,
            r#"tokenmanager_config_reloads_total{outcome="rejected"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &exposition,
            &format!(
                "tokenmanager_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );
}
