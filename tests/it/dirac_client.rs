//! DIRAC's own Python client (PyPI DIRAC 9.1.22, installed by tests/dirac-client/setup.sh)
//! against the real binary over https:// and dips:// (JSON and DEncode): this test starts the
//! service and the test OpenID provider, writes the fixture tests/dirac-client/README.md
//! describes, and runs the pytest suite there.

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;
use tokenmanager::config::Backend;
use tokenmanager::x509::pki::ProxyKind;

use crate::idp::TestIdp;
use crate::pki::{HOST_DN, TestPki};
use crate::process::ServeProcess;
use crate::support::TestDb;

const AUDIENCE: &str = "https://ce.example.org";

fn dn(name: &str) -> String {
    format!("/C=ch/O=DIRAC/OU=Test/CN={name}")
}

/// A venv tests/dirac-client/setup.sh made (tests/setup.sh runs it): `variable` overrides its
/// path, else it is `name` in the test cache, `$TOKENMANAGER_TEST_CACHE`, default
/// `${XDG_CACHE_HOME:-$HOME/.cache}/tokenmanager` (setup.sh's default too).
fn venv(variable: &str, name: &str) -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(path) = var(variable) {
        return PathBuf::from(path);
    }
    let cache = var("TOKENMANAGER_TEST_CACHE")
        .map(PathBuf::from)
        .or_else(|| var("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("tokenmanager")))
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/tokenmanager")))
        .expect("HOME, XDG_CACHE_HOME or TOKENMANAGER_TEST_CACHE names the test cache");
    cache.join(name)
}

fn config(db: &TestDb, idp: &TestIdp) -> String {
    let keyring = db.dir.path().join("keyring");
    format!(
        "DIRAC\n{{\n  Setup = Test\n  Setups\n  {{\n    Test\n    {{\n      Framework = Production\n    }}\n  }}\n\
         Security\n  {{\n{security}\n  }}\n}}\n\
         Systems\n{{\n  Framework\n  {{\n    Production\n    {{\n      Services\n      {{\n        TokenManager\n        {{\n\
         ListenAddress = 127.0.0.1\nPort = 0\nHTTPSPort = 0\nMetricsPort = 0\nEncryptionKeyFile = {keyring}\n\
         ExposeTokenValues = yes\nAuthorization\n{{\n  Default = authenticated\n  getUsersTokensInfo = ProxyManagement\n}}\n\
         }}\n      }}\n      Databases\n      {{\n        TokenDB\n        {{\nURL = {url}\n        }}\n      }}\n    }}\n  }}\n}}\n\
         Registry\n{{\n  DefaultGroup = dirac_user\n  Users\n  {{\n\
         tmadmin\n    {{\n      DN = {admin}\n      DN += /O=DIRAC/CN=tmadmin-sub\n    }}\n\
         tmplain\n    {{\n      DN = {plain}\n    }}\n\
         tokuser\n    {{\n      DN = {tokuser}\n      DN += /O=DIRAC/CN=tokuser-sub\n    }}\n  }}\n\
         Groups\n  {{\n\
         dirac_admin\n    {{\n      Users = tmadmin\n      Properties = FullDelegation, ProxyManagement, NormalUser\n      VO = dirac\n    }}\n\
         dirac_user\n    {{\n      Users = tmplain, tokuser, tmadmin\n      Properties = NormalUser\n      VO = dirac\n      IdPRole = compute.read\n    }}\n\
         dirac_pilot\n    {{\n      Users = tmadmin\n      Properties = GenericPilot\n      VO = dirac\n      IdPRole = compute.read\n    }}\n  }}\n\
         Hosts\n  {{\n    localhost\n    {{\n      DN = {HOST_DN}\n      Properties = FullDelegation, TrustedHost\n    }}\n  }}\n\
         VO\n  {{\n    dirac\n    {{\n      IdProvider = test-idp\n    }}\n  }}\n}}\n\
         Resources\n{{\n  IdProviders\n  {{\n    test-idp\n    {{\n      issuer = {issuer}\n      client_id = tm-basic\n      \
         client_secret = tm-basic-secret\n      audience_parameter = resource\n      allowed_audiences = {AUDIENCE}\n    }}\n  }}\n}}\n",
        security = TestPki::shared().security_options(),
        keyring = keyring.display(),
        url = db.url,
        admin = dn("tmadmin"),
        plain = dn("tmplain"),
        tokuser = dn("tokuser"),
        issuer = idp.issuer(),
    )
}

#[test]
fn diracs_own_client_works_over_https_and_dips() {
    let venv = venv("DIRAC_CLIENT_VENV", "dirac-client-9.1.22");
    run_suite(&venv, None);
}

/// DIRAC 8 clients send DEncode on DISET by default; its HTTPS client is DIRAC 9's too.
#[test]
fn dirac_8_client_works_over_dips() {
    let venv = venv("DIRAC8_CLIENT_VENV", "dirac-client-8.0");
    run_suite(&venv, Some("dips"));
}

/// Runs the pytest suite of `venv`'s DIRAC against a fresh service; `filter` selects cases (-k).
fn run_suite(venv: &std::path::Path, filter: Option<&str>) {
    assert!(
        venv.join("bin/python").exists(),
        "DIRAC's client is not installed at {}: run tests/dirac-client/setup.sh (tests/setup.sh does)",
        venv.display()
    );
    let db = TestDb::new(Backend::Sqlite);
    tokenmanager::crypto::KeyringFile::new(db.dir.path().join("keyring"))
        .create()
        .unwrap();
    let idp = TestIdp::spawn();
    let config_path = db.dir.path().join("tm.cfg");
    std::fs::write(&config_path, config(&db, &idp)).unwrap();
    let app = ServeProcess::spawn(&config_path);

    let pki = TestPki::shared();
    let dir = db.dir.path();
    let proxy_file = |user: &str, group: &str| {
        let path = dir.join(format!("{user}-proxy.pem"));
        pki.proxy(&dn(user), ProxyKind::Rfc3820, Some(group))
            .write_proxy_file(&path)
            .unwrap();
        path.display().to_string()
    };
    let host_cert = dir.join("hostcert.pem");
    let host_key = dir.join("hostkey.pem");
    pki.host.to_pem_files(&host_cert, &host_key).unwrap();
    let grant = idp.grant_with_resources(
        "tokuser-sub",
        "openid offline_access compute.read",
        &[AUDIENCE],
    );
    let fixture = json!({
        "https_url": format!("https://localhost:{}/Framework/TokenManager", app.https),
        "dips_url": format!("dips://localhost:{}/Framework/TokenManager", app.dips),
        "ca_dir": pki.ca_dir(),
        "vo": "dirac",
        "callers": {
            "admin": {"proxy": proxy_file("tmadmin", "dirac_admin"), "dn": dn("tmadmin"), "username": "tmadmin",
                      "group": "dirac_admin", "properties": ["FullDelegation", "ProxyManagement", "NormalUser"],
                      "user_id": "tmadmin-sub"},
            "plain": {"proxy": proxy_file("tmplain", "dirac_user"), "dn": dn("tmplain"), "username": "tmplain",
                      "group": "dirac_user", "properties": ["NormalUser"]},
        },
        "host": {"cert": host_cert, "key": host_key, "dn": HOST_DN, "hostname": "localhost",
                 "properties": ["FullDelegation", "TrustedHost"]},
        "idp": {"name": "test-idp", "issuer": idp.issuer(), "client_id": "tm-basic", "audience": AUDIENCE},
        "token_user": {"username": "tokuser", "group": "dirac_user", "user_id": "tokuser-sub",
                       "token": {"access_token": grant.access_token, "refresh_token": grant.refresh_token,
                                 "token_type": "Bearer", "expires_in": grant.expires_in,
                                 "scope": "openid offline_access compute.read"}},
        "client_token": {"group": "dirac_pilot", "scope": ["compute.read"]},
        "groups": {"dirac_user": {"idp_role": "compute.read"}, "dirac_pilot": {"idp_role": "compute.read"}},
        "expect": {"version": env!("CARGO_PKG_VERSION"), "token_info_extra_keys": ["state"]},
    });
    let fixture_path = dir.join("fixture.json");
    std::fs::write(&fixture_path, fixture.to_string()).unwrap();

    let suite = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dirac-client");
    let mut pytest = Command::new(venv.join("bin/pytest"));
    pytest
        .arg(&suite)
        .args(["-q", "-p", "no:cacheprovider", "-rA"]);
    if let Some(filter) = filter {
        pytest.args(["-k", filter]);
    }
    let output = pytest
        .env("TM_DIRAC_FIXTURE", &fixture_path)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The whole report, so that CI's log lists every DIRAC client call and its result.
    println!("{report}");
    assert!(
        output.status.success(),
        "DIRAC's client suite failed:\n{report}\n--- server log ---\n{}",
        app.log()
    );
    // Only DIRAC's own DISET limit may skip a case (echo of a dict: types_echo = [str]).
    let skipped = report
        .lines()
        .filter(|l| l.starts_with("SKIPPED"))
        .collect::<Vec<_>>();
    assert!(
        skipped.iter().all(|l| l.contains("types_echo")),
        "unexpected skips: {skipped:?}"
    );
}
