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
use crate::pki::{HOST_DN, PkiFiles, TestPki};
use crate::process::spawn_process;
use crate::support::TestDb;
use crate::test_config::{IDP, TestConfig, dn};

const AUDIENCE: &str = "https://ce.example.org";

/// A venv tests/dirac-client/setup.sh made (tests/setup.sh runs it): `variable` overrides its
/// path, else it is `name` in the test cache, `$TOKENMANAGER_TEST_CACHE`, default
/// `${XDG_CACHE_HOME:-$HOME/.cache}/tokenmanager` (setup.sh's default too).
pub(crate) fn venv(variable: &str, name: &str) -> PathBuf {
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

/// The tests' usual service configuration with DIRAC's view of a VO `dirac` instead of the
/// authorization matrix's registry: an admin, a plain user and a token user (whose ID is the
/// test IdP's `sub`), a pilot group, and the host with FullDelegation.
fn configure(c: &mut TestConfig, idp: &TestIdp) {
    c.service()
        .set("ExposeTokenValues", "yes")
        .section("Authorization")
        .set("Default", "authenticated")
        .set("getUsersTokensInfo", "ProxyManagement");
    c.remove("Registry");
    let registry = c.section("Registry");
    registry.set("DefaultGroup", "dirac_user");
    for (user, id) in [
        ("tmadmin", Some("tmadmin-sub")),
        ("tmplain", None),
        ("tokuser", Some("tokuser-sub")),
    ] {
        let section = registry.section("Users").section(user);
        section.set("DN", dn(user));
        if let Some(id) = id {
            section.add("DN", format!("/O=DIRAC/CN={id}"));
        }
    }
    let groups = [
        (
            "dirac_admin",
            "tmadmin",
            "FullDelegation, ProxyManagement, NormalUser",
            None,
        ),
        (
            "dirac_user",
            "tmplain, tokuser, tmadmin",
            "NormalUser",
            Some("compute.read"),
        ),
        (
            "dirac_pilot",
            "tmadmin",
            "GenericPilot",
            Some("compute.read"),
        ),
    ];
    for (group, users, properties, role) in groups {
        let section = registry.section("Groups").section(group);
        section
            .set("Users", users)
            .set("Properties", properties)
            .set("VO", "dirac");
        if let Some(role) = role {
            section.set("IdPRole", role);
        }
    }
    registry
        .section("Hosts/localhost")
        .set("DN", HOST_DN)
        .set("Properties", "FullDelegation, TrustedHost");
    registry.section("VO/dirac").set("IdProvider", IDP);
    c.test_idp(&idp.issuer(), AUDIENCE);
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
    let idp = TestIdp::spawn();
    let app = spawn_process(&db, |c| configure(c, &idp));

    let pki = TestPki::shared();
    let dir = db.dir.path();
    let proxy_file = |user: &str, group: &str| {
        let path = dir.join(format!("{user}-proxy.pem"));
        pki.proxy(&dn(user), ProxyKind::Rfc3820, Some(group))
            .write_proxy_file(&path)
            .unwrap();
        path.display().to_string()
    };
    // The host's certificate and key as the service's configuration names them.
    let files = PkiFiles::in_dir(dir);
    let grant = idp.grant_with_resources(
        "tokuser-sub",
        "openid offline_access compute.read",
        &[AUDIENCE],
    );
    let fixture = json!({
        "https_url": format!("https://localhost:{}/Framework/TokenManager", app.https),
        "dips_url": format!("dips://localhost:{}/Framework/TokenManager", app.dips),
        "ca_dir": files.ca_dir,
        "vo": "dirac",
        "callers": {
            "admin": {"proxy": proxy_file("tmadmin", "dirac_admin"), "dn": dn("tmadmin"), "username": "tmadmin",
                      "group": "dirac_admin", "properties": ["FullDelegation", "ProxyManagement", "NormalUser"],
                      "user_id": "tmadmin-sub"},
            "plain": {"proxy": proxy_file("tmplain", "dirac_user"), "dn": dn("tmplain"), "username": "tmplain",
                      "group": "dirac_user", "properties": ["NormalUser"]},
        },
        "host": {"cert": files.cert, "key": files.key, "dn": HOST_DN, "hostname": "localhost",
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
