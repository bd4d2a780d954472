//! getToken against a real OpenID provider (oidc-provider, rotating refresh tokens on every use,
//! revoking the grant on reuse), through the real binary over real TLS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokenmanager::x509::pki::{CertifiedKey, ProxyKind};

use crate::app::TestApp;
use crate::client::{Client, Reply, Request};
use crate::idp::TestIdp;
use crate::pki::TestPki;
use crate::process::{ServeProcess, configure};
use crate::support::TestDb;
use crate::test_config::{IDP, TestConfig, dn};

pub(crate) const SCOPE: &str = "openid offline_access compute.read";
pub(crate) const CE: &str = "https://ce.example.org";

/// A service on SQLite whose [`IDP`] is the test IdP, with `extra_users` more users (IDs
/// `id-<name>`) in group g_user.
pub(crate) struct Setup {
    pub(crate) idp: TestIdp,
    /// The HTTPS port of each replica on the database: one application in this process, or
    /// several `serve` processes.
    pub(crate) https_ports: Vec<u16>,
    config: std::path::PathBuf,
    _app: Option<TestApp>,
    pub(crate) processes: Vec<ServeProcess>,
    db: TestDb,
    pub(crate) full: CertifiedKey,
    pub(crate) manager: CertifiedKey,
}

fn setup(extra_users: &[String], adjust: impl FnOnce(&mut TestConfig)) -> Setup {
    setup_on(
        TestDb::new(tokenmanager::config::Backend::Sqlite),
        1,
        extra_users,
        adjust,
    )
}

fn setup_on(
    db: TestDb,
    replicas: usize,
    extra_users: &[String],
    adjust: impl FnOnce(&mut TestConfig),
) -> Setup {
    let processes = if replicas == 1 { 0 } else { replicas };
    setup_with(db, processes, extra_users, adjust)
}

/// The service on `db` with `processes` `serve` processes, or the application in this process
/// for 0; its configuration the tests' usual one, [`IDP`] the test IdP allowing the audiences
/// [`CE`] and `https://fts.example.org`, changed by `adjust`.
pub(crate) fn setup_with(
    db: TestDb,
    processes: usize,
    extra_users: &[String],
    adjust: impl FnOnce(&mut TestConfig),
) -> Setup {
    let idp = TestIdp::spawn();
    let config = configure(&db, |c| {
        c.test_idp(&idp.issuer(), &format!("{CE}, https://fts.example.org"));
        for user in extra_users {
            c.user(user, "g_user");
        }
        adjust(c);
    });
    let (app, processes) = if processes == 0 {
        (Some(TestApp::spawn(&config)), Vec::new())
    } else {
        let processes = (0..processes).map(|_| ServeProcess::spawn(&config));
        (None, processes.collect::<Vec<_>>())
    };
    let https_ports = match &app {
        Some(app) => vec![app.https],
        None => processes.iter().map(|p| p.https).collect(),
    };
    let pki = TestPki::shared();
    Setup {
        idp,
        https_ports,
        config,
        _app: app,
        processes,
        db,
        full: pki.proxy(&dn("full"), ProxyKind::Rfc3820, Some("g_full")),
        manager: pki.proxy(&dn("manager"), ProxyKind::Rfc3820, Some("g_manager")),
    }
}

impl Setup {
    /// Kills `serve` process `replica` with SIGKILL and starts it again on the same
    /// configuration.
    pub(crate) fn kill_and_restart(&mut self, replica: usize) {
        let killed = &mut self.processes[replica];
        killed.signal("KILL");
        killed.wait();
        self.restart(replica);
    }

    /// The replicas' database.
    pub(crate) fn db(&self) -> &TestDb {
        &self.db
    }

    /// The DISET port of replica 0.
    pub(crate) fn dips_port(&self) -> u16 {
        match &self._app {
            Some(app) => app.dips,
            None => self.processes[0].dips,
        }
    }

    /// The metrics port of replica 0.
    pub(crate) fn metrics_port(&self) -> u16 {
        match &self._app {
            Some(app) => app.metrics,
            None => self.processes[0].metrics,
        }
    }

    /// The replicas' configuration file.
    pub(crate) fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// Starts `serve` process `replica`, which has exited, again on the same configuration.
    pub(crate) fn restart(&mut self, replica: usize) {
        let restarted = ServeProcess::spawn(&self.config);
        self.https_ports[replica] = restarted.https;
        self.processes[replica] = restarted;
    }

    /// Logs `user` in at the IdP and stores its refresh token through updateToken, with a token
    /// dict that names no scope (an unknown grant: the IdP alone decides what it covers).
    pub(crate) fn delegate(&self, user: &str) {
        self.delegate_naming(user, SCOPE, None);
    }

    /// Logs `user` in at the IdP granting `scope`, and stores it with `named` as the token
    /// dict's scope.
    pub(crate) fn delegate_naming(&self, user: &str, scope: &str, named: Option<&str>) {
        let grant = self.idp.grant(&format!("id-{user}"), scope);
        let mut token = json!({"refresh_token": grant.refresh_token, "access_token": grant.access_token,
                               "expires_in": grant.expires_in});
        if let Some(named) = named {
            token["scope"] = json!(named);
        }
        let body = json!({"token": token, "userID": format!("id-{user}"), "provider": "test-idp"});
        let reply = self.call(&self.manager, "updateToken", body);
        assert_eq!(reply.status(), Some(200), "{reply:?}");
    }

    pub(crate) fn call(&self, credential: &CertifiedKey, method: &str, body: Value) -> Reply {
        self.call_via(0, credential, method, body)
    }

    pub(crate) fn call_via(
        &self,
        replica: usize,
        credential: &CertifiedKey,
        method: &str,
        body: Value,
    ) -> Reply {
        Client::with_certificate(credential).post(
            self.https_ports[replica],
            &format!("/api/v1/{method}"),
            &body.to_string(),
        )
    }

    pub(crate) fn get_token(
        &self,
        user: Option<&str>,
        audience: Option<&str>,
        required_time_left: i64,
    ) -> Reply {
        self.get_token_via(0, user, audience, required_time_left)
    }

    pub(crate) fn get_token_via(
        &self,
        replica: usize,
        user: Option<&str>,
        audience: Option<&str>,
        required_time_left: i64,
    ) -> Reply {
        let body = json!({"username": user, "userGroup": "g_user", "scope": ["compute.read"], "audience": audience,
                          "requiredTimeLeft": required_time_left});
        self.call_via(replica, &self.full, "getToken", body)
    }
}

/// Runs `count` calls at once, each on its own thread and connection. One burst at a time in the
/// whole test binary: on two cores, several bursts of RSA handshakes at once measure the
/// machine, not the service.
pub(crate) fn concurrently(
    count: usize,
    call: impl Fn(usize) -> Reply + Send + Sync + 'static,
) -> Vec<Reply> {
    static ONE_BURST: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _burst = ONE_BURST.lock().unwrap_or_else(|e| e.into_inner());
    let call = Arc::new(call);
    let threads: Vec<_> = (0..count)
        .map(|i| {
            let call = call.clone();
            std::thread::spawn(move || call(i))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT access token");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// The core cases run on each backend: SQLite below, PostgreSQL and MariaDB here.
mod on_server_backends {
    use tokenmanager::config::Backend;

    #[test]
    fn postgres_two_hundred_calls_for_one_user() {
        super::two_hundred_calls_for_one_user(Backend::Postgres);
    }

    #[test]
    fn mariadb_two_hundred_calls_for_one_user() {
        super::two_hundred_calls_for_one_user(Backend::Mysql);
    }

    #[test]
    fn postgres_lost_reply() {
        super::lost_reply(Backend::Postgres);
    }

    #[test]
    fn mariadb_lost_reply() {
        super::lost_reply(Backend::Mysql);
    }
}

#[test]
fn two_hundred_concurrent_calls_for_one_user_cost_one_refresh_and_keep_the_grant() {
    two_hundred_calls_for_one_user(tokenmanager::config::Backend::Sqlite);
}

fn two_hundred_calls_for_one_user(backend: tokenmanager::config::Backend) {
    let setup = Arc::new(setup_on(TestDb::new(backend), 1, &[], |_| {}));
    setup.delegate("plain");
    setup.idp.reset_stats();
    let shared = setup.clone();
    let replies = concurrently(200, move |_| shared.get_token(Some("plain"), Some(CE), 0));
    let ok = replies.iter().filter(|r| r.status() == Some(200)).count();
    assert_eq!(
        ok,
        200,
        "{:?}",
        replies.iter().find(|r| r.status() != Some(200))
    );
    assert_eq!(setup.idp.stats().refreshes("id-plain"), 1);
    let first = replies[0].body()["value"].clone();
    assert!(
        replies
            .iter()
            .all(|r| r.body()["value"]["access_token"] == first["access_token"])
    );
    assert!(
        first.get("refresh_token").is_none() && first.get("id_token").is_none(),
        "{first}"
    );
    assert_eq!(
        jwt_claims(first["access_token"].as_str().unwrap())["aud"],
        json!(CE)
    );
    assert_eq!(
        jwt_claims(first["access_token"].as_str().unwrap())["sub"],
        json!("id-plain")
    );
    assert!(
        first["scope"].as_str().unwrap().contains("compute.read"),
        "{first}"
    );

    // The rotated refresh token was stored: more refreshes work and the grant lives.
    for round in 2..=4 {
        // Each round asks for more than the last token could give: a refresh every time.
        let reply = setup.get_token(Some("plain"), Some(CE), 100_000 * round as i64);
        assert_eq!(reply.status(), Some(200), "round {round}: {reply:?}");
        assert_eq!(setup.idp.stats().refreshes("id-plain"), round);
    }
    assert!(setup.idp.grant_alive("id-plain"));
}

#[test]
fn identical_client_token_requests_cost_one_client_credentials_call_per_audience() {
    let setup = Arc::new(setup(&[], |_| {}));
    let shared = setup.clone();
    let replies = concurrently(200, move |i| {
        let audience = if i % 2 == 0 {
            CE
        } else {
            "https://fts.example.org"
        };
        shared.get_token(None, Some(audience), 0)
    });
    assert!(
        replies.iter().all(|r| r.status() == Some(200)),
        "{:?}",
        replies.iter().find(|r| r.status() != Some(200))
    );
    assert_eq!(setup.idp.stats().client_credentials_total(), 2);
    let value = &replies[0].body()["value"];
    assert_eq!(
        (value["client_id"].clone(), value["provider"].clone()),
        (json!("tm-basic"), json!("test-idp"))
    );
}

#[test]
fn fifty_users_times_twenty_calls_cost_fifty_refreshes_in_parallel() {
    let users: Vec<String> = (0..50).map(|i| format!("u{i}")).collect();
    let setup = Arc::new(setup(&users, |_| {}));
    for user in &users {
        setup.delegate(user);
    }
    setup.idp.reset_stats();
    // Each refresh takes 2 s at the IdP: fifty in a row would take 100 s.
    setup.idp.latency(2000);
    let shared = setup.clone();
    let started = Instant::now();
    let replies = concurrently(1000, move |i| {
        shared.get_token(Some(&format!("u{}", i % 50)), Some(CE), 0)
    });
    let elapsed = started.elapsed();
    assert!(
        replies.iter().all(|r| r.status() == Some(200)),
        "{:?}",
        replies.iter().find(|r| r.status() != Some(200))
    );
    let stats = setup.idp.stats();
    for user in &users {
        assert_eq!(stats.refreshes(&format!("id-{user}")), 1, "{user}");
    }
    assert!(
        elapsed < Duration::from_secs(40),
        "refreshes of different users ran serially: {elapsed:?}"
    );
    for (i, reply) in replies.iter().enumerate() {
        let sub =
            jwt_claims(reply.body()["value"]["access_token"].as_str().unwrap())["sub"].clone();
        assert_eq!(
            sub,
            json!(format!("id-u{}", i % 50)),
            "a user got another user's token"
        );
    }
}

#[test]
fn required_time_left_beyond_the_cached_token_forces_exactly_one_refresh() {
    let setup = Arc::new(setup(&[], |_| {}));
    setup.idp.set_access_token_ttl(600);
    setup.delegate("plain");
    setup.idp.reset_stats();
    assert_eq!(
        setup.get_token(Some("plain"), Some(CE), 0).status(),
        Some(200)
    );
    assert_eq!(
        setup.get_token(Some("plain"), Some(CE), 300).status(),
        Some(200)
    );
    assert_eq!(
        setup.idp.stats().refreshes("id-plain"),
        1,
        "600 s left covers 300 s"
    );
    let shared = setup.clone();
    let replies = concurrently(20, move |_| shared.get_token(Some("plain"), Some(CE), 3000));
    assert!(replies.iter().all(|r| r.status() == Some(200)));
    assert_eq!(
        setup.idp.stats().refreshes("id-plain"),
        2,
        "one refresh for the whole queue"
    );
}

#[test]
fn a_hanging_refresh_does_not_delay_other_users_cache_hits() {
    let setup = Arc::new(setup(&["slow".to_owned()], |_| {}));
    setup.delegate("plain");
    setup.delegate("slow");
    assert_eq!(
        setup.get_token(Some("plain"), Some(CE), 0).status(),
        Some(200)
    );
    setup.idp.hold("id-slow");
    let shared = setup.clone();
    let slow = std::thread::spawn(move || shared.get_token(Some("slow"), Some(CE), 0));
    while setup.idp.held() == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..20 {
        assert_eq!(
            setup.get_token(Some("plain"), Some(CE), 0).status(),
            Some(200)
        );
    }
    assert!(
        !slow.is_finished(),
        "the slow refresh is still held while the other user was served"
    );
    setup.idp.release("id-slow");
    assert_eq!(slow.join().unwrap().status(), Some(200));
}

#[test]
fn an_idp_error_or_timeout_leaves_the_stored_token_usable() {
    let setup = setup(&[], |c| {
        c.idp(IDP).set("timeout", 1).set("late_reply_wait", 3);
    });
    setup.delegate("plain");
    setup.idp.fail_next(1, 500);
    let failed = setup.get_token(Some("plain"), Some(CE), 0);
    assert_eq!(
        (failed.status(), failed.body()["code"].clone()),
        (Some(502), json!("idp_unavailable")),
        "{failed:?}"
    );
    let ok = setup.get_token(Some("plain"), Some(CE), 0);
    assert_eq!(ok.status(), Some(200), "{ok:?}");

    setup.idp.hold("id-plain");
    let timed_out = setup.get_token(Some("plain"), Some(CE), 100_000);
    assert_eq!(
        timed_out.body()["code"],
        json!("idp_unavailable"),
        "{timed_out:?}"
    );
    assert!(
        timed_out.body()["message"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{timed_out:?}"
    );
    // After late_reply_wait the service gives up on the request, so its connection closes and the
    // IdP takes the held request back unprocessed; releasing before the IdP has seen the close
    // would process it.
    setup.idp.wait_until_abandoned(Duration::from_secs(10));
    setup.idp.release("id-plain");
    let ok = setup.get_token(Some("plain"), Some(CE), 100_000);
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    assert!(setup.idp.grant_alive("id-plain"));
}

/// A rotating IdP that answers after the callers' timeout has consumed the refresh token: the
/// service keeps the connection open for `late_reply_wait` and stores what the IdP rotated, rather
/// than dropping it and presenting the consumed token on the next call (which revokes the grant).
#[test]
fn a_refresh_answered_after_the_timeout_is_stored_not_lost() {
    let setup = setup(&[], |c| {
        c.idp(IDP).set("timeout", 1).set("late_reply_wait", 30);
    });
    setup.delegate("plain");
    setup.idp.reset_stats();
    // Processed on release even if the service had closed the connection, as real IdPs do.
    setup.idp.hold_processing_abandoned("id-plain");
    let timed_out = setup.get_token(Some("plain"), Some(CE), 0);
    assert_eq!(
        (timed_out.status(), timed_out.body()["code"].clone()),
        (Some(502), json!("idp_unavailable")),
        "{timed_out:?}"
    );
    assert_eq!(
        setup.idp.held(),
        1,
        "the refresh is still waiting at the IdP"
    );
    setup.idp.release("id-plain");
    let ok = setup.get_token(Some("plain"), Some(CE), 0);
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    let again = setup.get_token(Some("plain"), Some(CE), 0);
    assert_eq!(again.status(), Some(200), "{again:?}");
    // The late reply's token serves; the consumed one was never presented.
    assert_one_refresh_and_grant_alive(&setup);
}

/// Exactly one refresh of `plain` reached the IdP, and its grant was not revoked for reuse.
pub(crate) fn assert_one_refresh_and_grant_alive(setup: &Setup) {
    let stats = setup.idp.stats();
    assert_eq!(stats.refreshes("id-plain"), 1, "refreshes at the IdP");
    assert!(
        setup.idp.grant_alive("id-plain"),
        "the IdP revoked the grant: a consumed refresh token was presented again"
    );
}

#[test]
fn a_lost_reply_never_makes_the_service_present_the_consumed_token() {
    lost_reply(tokenmanager::config::Backend::Sqlite);
}

fn lost_reply(backend: tokenmanager::config::Backend) {
    let setup = setup_on(TestDb::new(backend), 1, &[], |_| {});
    setup.delegate("plain");
    setup.idp.reset_stats();
    setup.idp.drop_reply("id-plain");
    let lost = setup.get_token(Some("plain"), Some(CE), 0);
    assert_eq!(lost.body()["code"], json!("needs_redelegation"), "{lost:?}");
    for _ in 0..3 {
        let again = setup.get_token(Some("plain"), Some(CE), 0);
        assert_eq!(
            again.body()["code"],
            json!("needs_redelegation"),
            "{again:?}"
        );
    }
    assert_one_refresh_and_grant_alive(&setup);
    // A new login repairs it.
    setup.delegate("plain");
    assert_eq!(
        setup.get_token(Some("plain"), Some(CE), 0).status(),
        Some(200)
    );
}

/// The service's three front-ends.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FrontEnd {
    Json,
    DiracHttps,
    Dips,
}

/// getToken for plain over `front` of `serve` process 0, forcing a refresh, on a thread of its
/// own: Ok, or what went wrong.
pub(crate) fn get_token_in_background(
    setup: &Setup,
    front: FrontEnd,
) -> std::thread::JoinHandle<Result<(), String>> {
    let full = setup.full.clone();
    let (https, dips) = (setup.https_ports[0], setup.processes[0].dips);
    let args = format!(r#"["plain", "g_user", ["compute.read"], "{CE}", null, 100000]"#);
    std::thread::spawn(move || match front {
        FrontEnd::Json => {
            let body = json!({"username": "plain", "userGroup": "g_user", "scope": ["compute.read"],
                              "audience": CE, "requiredTimeLeft": 100_000});
            let reply =
                Client::with_certificate(&full).post(https, "/api/v1/getToken", &body.to_string());
            (reply.status() == Some(200))
                .then_some(())
                .ok_or(format!("{reply:?}"))
        }
        FrontEnd::DiracHttps => {
            let form = crate::client::form_encode(&[
                ("method", "getToken"),
                ("args", &args),
                ("clientVO", "dteam"),
                ("clientSetup", "None"),
            ]);
            let request = Request::post("/Framework/TokenManager").body(crate::client::FORM, form);
            let reply = Client::https(Some(&full)).call(https, &request);
            (reply.body()["OK"] == json!(true))
                .then_some(())
                .ok_or(format!("{reply:?}"))
        }
        FrontEnd::Dips => {
            let mut diset = crate::dirac::Diset::connect(dips, Some(&full))?;
            diset.send(crate::dirac::proposal("getToken", r#""""#).as_bytes());
            let accepted = diset.receive_json();
            if accepted["OK"] != json!(true) {
                return Err(format!("proposal: {accepted}"));
            }
            diset.send(format!(r#"{{"OK": true, "Value": {args}}}"#).as_bytes());
            let reply = diset.receive_json();
            (reply["OK"] == json!(true))
                .then_some(())
                .ok_or(format!("{reply}"))
        }
    })
}

#[test]
fn deleted_or_replaced_credentials_are_not_served_from_the_cache() {
    let setup = setup(&[], |_| {});
    setup.delegate("plain");
    assert_eq!(
        setup.get_token(Some("plain"), Some(CE), 0).status(),
        Some(200)
    );
    let deleted = setup.call(&setup.manager, "deleteToken", json!({"userDN": "id-plain"}));
    assert_eq!(deleted.status(), Some(200));
    let reply = setup.get_token(Some("plain"), Some(CE), 0);
    assert_eq!(reply.body()["code"], json!("no_token"), "{reply:?}");

    // updateToken stores a new login and revokes the replaced refresh token at the IdP.
    setup.delegate("plain");
    let first = setup.idp.grant("id-plain", SCOPE);
    setup.idp.reset_stats();
    setup.delegate("plain");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        setup.idp.stats().revocations() >= 1,
        "the replaced refresh token was not revoked"
    );
    let _ = first;
}

#[test]
fn callers_without_delegation_rights_get_no_token() {
    let setup = setup(&[], |_| {});
    setup.delegate("plain");
    let pki = TestPki::shared();
    let plain = pki.proxy(&dn("plain"), ProxyKind::Rfc3820, None);
    let body = json!({"username": "plain", "userGroup": "g_user", "audience": CE});
    let reply = setup.call(&plain, "getToken", body);
    assert_eq!(
        (reply.status(), reply.body()["message"].clone()),
        (Some(403), json!("You can't get tokens!"))
    );
    let reply = setup.call(&plain, "getToken", json!({"userGroup": "g_user"}));
    assert_eq!(reply.status(), Some(403));
}

/// Several `serve` processes on one PostgreSQL or MariaDB database: 200 calls for one user spread
/// over them cost one refresh (the database lease), every replica serves the winner's token, and
/// none serves the user's token later than the staleness bound after it was deleted through
/// another.
fn replicas_share_one_refresh(backend: tokenmanager::config::Backend, replicas: usize) {
    let setup = Arc::new(setup_on(TestDb::new(backend), replicas, &[], |_| {}));
    setup.delegate("plain");
    setup.idp.reset_stats();
    setup.idp.latency(500);
    let shared = setup.clone();
    let replies = concurrently(200, move |i| {
        shared.get_token_via(i % replicas, Some("plain"), Some(CE), 0)
    });
    assert!(
        replies.iter().all(|r| r.status() == Some(200)),
        "{:?}",
        replies.iter().find(|r| r.status() != Some(200))
    );
    assert_eq!(
        setup.idp.stats().refreshes("id-plain"),
        1,
        "one refresh across {replicas} replicas"
    );
    let token = &replies[0].body()["value"]["access_token"];
    assert!(
        replies
            .iter()
            .all(|r| &r.body()["value"]["access_token"] == token),
        "all serve the winner's token"
    );
    assert!(setup.idp.grant_alive("id-plain"));

    let deleted = setup.call_via(
        0,
        &setup.manager,
        "deleteToken",
        json!({"userDN": "id-plain"}),
    );
    assert_eq!(deleted.status(), Some(200));
    let deleted = Instant::now();
    for replica in 0..replicas {
        crate::replicas::within_the_bound(&setup, replica, "the deletion", deleted, |reply| {
            reply.body()["code"] == json!("no_token")
        });
    }
}

#[test]
fn two_replicas_on_postgresql_share_one_refresh() {
    replicas_share_one_refresh(tokenmanager::config::Backend::Postgres, 2);
}

#[test]
fn three_replicas_on_postgresql_share_one_refresh() {
    replicas_share_one_refresh(tokenmanager::config::Backend::Postgres, 3);
}

#[test]
fn two_replicas_on_mariadb_share_one_refresh() {
    replicas_share_one_refresh(tokenmanager::config::Backend::Mysql, 2);
}

#[test]
fn three_replicas_on_mariadb_share_one_refresh() {
    replicas_share_one_refresh(tokenmanager::config::Backend::Mysql, 3);
}

/// An access token (a JWT for `resource`) that the IdP issued to `sub`.
/// The audience bearer tokens for this service carry (`bearer_audience`).
const SERVICE_AUDIENCE: &str = "https://tokenmanager.example.org";

/// An access token of the IdP for `sub`, for this service.
fn jwt_for(idp: &TestIdp, sub: &str) -> String {
    jwt_for_audience(idp, sub, SERVICE_AUDIENCE)
}

fn jwt_for_audience(idp: &TestIdp, sub: &str, audience: &str) -> String {
    let grant = idp.grant(sub, SCOPE);
    let refreshed = idp
        .refresh("tm-basic", &grant.refresh_token, None, Some(audience))
        .unwrap();
    refreshed["access_token"].as_str().unwrap().to_owned()
}

#[test]
fn a_bearer_token_caller_is_identified_and_bad_ones_are_refused() {
    let setup = setup(&[], |c| {
        c.idp(IDP)
            .set("bearer_leeway", 0)
            .set("bearer_audience", SERVICE_AUDIENCE);
    });
    let whoami = |token: &str| {
        let request = Request::post("/api/v1/whoami").json("{}").bearer(token);
        Client::anonymous().call(setup.https_ports[0], &request)
    };

    let reply = whoami(&jwt_for(&setup.idp, "id-plain"));
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    assert_eq!(
        reply.body()["value"],
        json!({"ID": "id-plain", "DN": "/O=DIRAC/CN=id-plain", "DIRACGroups": [], "group": "g_user",
               "properties": ["NormalUser"], "username": "plain"})
    );

    let unregistered = whoami(&jwt_for(&setup.idp, "id-nobody"));
    assert_eq!(
        unregistered.body()["value"]["username"],
        json!("anonymous"),
        "whoami is open to all"
    );
    let echo = Client::anonymous().call(
        setup.https_ports[0],
        &Request::post("/api/v1/echo")
            .json(r#"{"data": 1}"#)
            .bearer(&jwt_for(&setup.idp, "id-nobody")),
    );
    assert_eq!(
        echo.status(),
        Some(403),
        "an unregistered subject is not authenticated"
    );

    // Another subject's claims under plain's signature. (Changing the signature's last character
    // may change only base64 padding bits, which decoders ignore.)
    let genuine = jwt_for(&setup.idp, "id-plain");
    let other = jwt_for(&setup.idp, "id-manager");
    let parts: Vec<&str> = genuine.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).unwrap(),
        parts[2]
    );
    let foreign_idp = TestIdp::spawn();
    setup.idp.set_access_token_ttl(1);
    let expired = jwt_for(&setup.idp, "id-plain");
    std::thread::sleep(Duration::from_millis(2100));
    for (what, token) in [
        ("tampered", tampered),
        ("foreign issuer", jwt_for(&foreign_idp, "id-plain")),
        (
            "a token this service handed to a CE",
            jwt_for_audience(&setup.idp, "id-plain", CE),
        ),
        ("expired", expired),
        ("not a JWT", "opaque-token".to_owned()),
    ] {
        let reply = whoami(&token);
        assert_eq!(
            (reply.status(), reply.body()["code"].clone()),
            (Some(401), json!("unauthenticated")),
            "{what}: {reply:?}"
        );
    }
}

#[test]
fn without_a_bearer_audience_bearer_tokens_identify_no_one() {
    let setup = setup(&[], |_| {});
    let reply = Client::anonymous().call(
        setup.https_ports[0],
        &Request::post("/api/v1/whoami")
            .json("{}")
            .bearer(&jwt_for(&setup.idp, "id-plain")),
    );
    assert_refusal(&reply, 401, "unauthenticated", "bearer_audience");
}

/// `reply` is an error `status` with `code`, whose message names the option `option`.
pub(crate) fn assert_refusal(reply: &Reply, status: u16, code: &str, option: &str) {
    assert_eq!(
        (reply.status(), reply.body()["code"].clone()),
        (Some(status), json!(code)),
        "{reply:?}"
    );
    assert!(
        reply.body()["message"]
            .as_str()
            .is_some_and(|m| m.contains(option)),
        "the refusal names {option}: {reply:?}"
    );
}
