//! `tokenmanager loadtest` against the real service, over the three protocols, with a grid
//! proxy as client certificate (which rustls-based load tools refuse).

use serde_json::Value;
use tokenmanager::config::Backend;
use tokenmanager::x509::pki::ProxyKind;

use crate::pki::TestPki;
use crate::process::{run, spawn_app, stderr};
use crate::support::TestDb;

#[test]
fn loadtest_drives_every_protocol_with_a_proxy_and_reports_json() {
    let db = TestDb::new(Backend::Sqlite);
    let app = spawn_app(&db, "");
    let pki = TestPki::shared();
    let proxy = db.dir.path().join("proxy.pem");
    pki.proxy(
        "/C=ch/O=DIRAC/OU=Test/CN=full",
        ProxyKind::Rfc3820,
        Some("g_full"),
    )
    .write_proxy_file(&proxy)
    .unwrap();
    let ca_dir = pki.ca_dir();

    let cases = [
        (
            format!("https://localhost:{}/Framework/TokenManager", app.https),
            "dirac-https",
            "--keep-alive",
        ),
        (
            format!("https://localhost:{}", app.https),
            "json",
            "--new-connection",
        ),
        (
            format!("dips://localhost:{}/Framework/TokenManager", app.dips),
            "dips",
            "--new-connection",
        ),
    ];
    for (url, protocol, connection) in cases {
        let report_path = db.dir.path().join(format!("{protocol}.json"));
        let output = run(
            &[
                "loadtest",
                &url,
                "--protocol",
                protocol,
                connection,
                "--cert",
                proxy.to_str().unwrap(),
                "--ca-dir",
                ca_dir.to_str().unwrap(),
                "--concurrency",
                "4",
                "--requests",
                "200",
                "--json-out",
                report_path.to_str().unwrap(),
            ],
            &[],
        );
        assert!(output.status.success(), "{protocol}: {}", stderr(&output));
        let report: Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
        assert_eq!(report["ok"], 200, "{protocol}: {report}");
        assert_eq!(report["errors"]["total"], 0, "{protocol}: {report}");
        assert!(report["latency_us"]["p99"].as_u64().unwrap() > 0);
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(printed.contains("p99"), "{printed}");
    }

    // Calls the rules refuse are counted as errors of their kind, not as successes.
    let report_path = db.dir.path().join("refused.json");
    let output = run(
        &[
            "loadtest",
            &format!("dips://localhost:{}", app.dips),
            "--method",
            "getUsersTokensInfo",
            "--args",
            r#"[["full"]]"#,
            "--cert",
            proxy.to_str().unwrap(),
            "--ca-dir",
            ca_dir.to_str().unwrap(),
            "--requests",
            "10",
            "--json-out",
            report_path.to_str().unwrap(),
        ],
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(report["ok"], 0, "{report}");
    assert_eq!(report["errors"]["s_error"], 10, "{report}");
}
