//! The load generator (`tokenmanager-loadtest`) against the real service, over the three
//! protocols, with a grid proxy as client certificate (which rustls-based load tools refuse).
//! It runs in this process through its library, from the same arguments its command line takes
//! (cargo gives a test the path of its own package's binaries only).

use clap::Parser;
use serde_json::Value;
use tokenmanager::config::Backend;
use tokenmanager::x509::pki::ProxyKind;
use tokenmanager_loadtest::{LoadtestArgs, print_report};

use crate::pki::{PkiFiles, TestPki};
use crate::process::spawn_app;
use crate::support::TestDb;

/// Runs `tokenmanager-loadtest ARGS`; its printed report.
fn loadtest(args: &[&str]) -> String {
    let argv = std::iter::once("tokenmanager-loadtest").chain(args.iter().copied());
    let report = tokenmanager_loadtest::run(LoadtestArgs::parse_from(argv))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let mut printed = Vec::new();
    print_report(&report, &mut printed).unwrap();
    String::from_utf8(printed).unwrap()
}

#[test]
fn loadtest_drives_every_protocol_with_a_proxy_and_reports_json() {
    let db = TestDb::new(Backend::Sqlite);
    let app = spawn_app(&db, |_| {});
    let pki = TestPki::shared();
    let proxy = db.dir.path().join("proxy.pem");
    pki.proxy(
        "/C=ch/O=DIRAC/OU=Test/CN=full",
        ProxyKind::Rfc3820,
        Some("g_full"),
    )
    .write_proxy_file(&proxy)
    .unwrap();
    let ca_dir = PkiFiles::in_dir(db.dir.path()).ca_dir;

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
        let printed = loadtest(&[
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
        ]);
        let report: Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
        assert_eq!(report["ok"], 200, "{protocol}: {report}");
        assert_eq!(report["errors"]["total"], 0, "{protocol}: {report}");
        assert!(report["latency_us"]["p99"].as_u64().unwrap() > 0);
        assert!(printed.contains("p99"), "{printed}");
    }

    // Calls the rules refuse are counted as errors of their kind, not as successes.
    let report_path = db.dir.path().join("refused.json");
    loadtest(&[
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
    ]);
    let report: Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(report["ok"], 0, "{report}");
    assert_eq!(report["errors"]["s_error"], 10, "{report}");
}
