//! Faults against the real binary, run serially by tests/run-all.sh (a stage of their own in CI):
//! a database that stops answering (frozen by a stalling proxy), replicas killed in the middle of
//! a refresh, SIGTERM with refreshes in flight, a failing IdP, arguments a rotating IdP would burn
//! the grant for, broken reloads. The test IdP rotates refresh tokens and revokes the grant when a
//! used one is presented again, so a burned grant shows.

use std::time::{Duration, Instant};

use serde_json::json;
use tokenmanager::config::Backend;
use tokenmanager::x509::pki::{ProxyKind, Validity};

use crate::client::{Reply, http_get};
use crate::get_token::{
    CE, FrontEnd, SCOPE, Setup, assert_one_refresh_and_grant_alive, assert_refusal,
    get_token_in_background, setup_with,
};
use crate::metrics::sample;
use crate::pki::{PkiFiles, TestPki};
use crate::process::ServeProcess;
use crate::stall::StallingProxy;
use crate::support::TestDb;
use crate::test_config::{IDP, TestConfig, dn};

/// `db`'s server, reached through a [`StallingProxy`]: `db` then names the proxy.
fn behind_proxy(db: &mut TestDb) -> StallingProxy {
    let (head, rest) = db.url.split_once("@127.0.0.1:").expect("a loopback server");
    let (port, tail) = rest.split_once('/').expect("a database name");
    let proxy = StallingProxy::start(port.parse().unwrap());
    db.url = format!("{head}@127.0.0.1:{}/{tail}", proxy.port);
    proxy
}

/// Runs `call`, checks that it took at most `limit`, and returns its result.
fn within<T>(limit: Duration, what: &str, call: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = call();
    let took = started.elapsed();
    eprintln!("measured: {what} took {took:?} (limit {limit:?})");
    assert!(took <= limit, "{what} took {took:?}, more than {limit:?}");
    result
}

/// How long the database stays frozen: 8 s in CI; `bench/db-freeze.sh` sets 40.
fn freeze_time() -> Duration {
    let seconds = std::env::var("TOKENMANAGER_TEST_FREEZE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    Duration::from_secs(seconds)
}

const DEADLINE: Duration = Duration::from_secs(2);
/// Longer than the freeze's first checks take, shorter than the freeze.
const MAX_STALENESS: Duration = Duration::from_secs(6);

fn get_token(setup: &Setup, user: &str, required_time_left: i64) -> Reply {
    setup.get_token(Some(user), Some(CE), required_time_left)
}

fn frozen_database(backend: Backend) {
    let mut db = TestDb::new(backend);
    let proxy = behind_proxy(&mut db);
    let setup = setup_with(db, 1, &["other".to_owned()], |c| {
        c.idp(IDP).set("timeout", 4);
        c.service()
            .set("DatabaseDeadline", DEADLINE.as_secs())
            .set("MaxStaleness", MAX_STALENESS.as_secs());
    });
    setup.delegate("plain");
    setup.delegate("other");
    assert_eq!(get_token(&setup, "plain", 0).status(), Some(200));
    let metrics = setup.processes[0].metrics;
    let limit = DEADLINE + Duration::from_secs(1);

    // A refresh at the IdP when the database freezes: the rotated refresh token's write waits for
    // the database, past its caller's deadline.
    setup.idp.latency(1500);
    let refreshing = get_token_in_background(&setup, FrontEnd::Json);
    std::thread::sleep(Duration::from_millis(500));
    proxy.freeze();
    let frozen = Instant::now();

    // The change feed confirmed the cache less than MaxStaleness ago: hits are served from it.
    let hit = within(Duration::from_millis(500), "a cache hit", || {
        get_token(&setup, "plain", 0)
    });
    assert_eq!(hit.status(), Some(200), "{hit:?}");
    let (status, _) = within(Duration::from_secs(2), "/readyz", || {
        http_get(metrics, "/readyz")
    });
    assert_eq!(status, 503);
    let (status, _) = within(Duration::from_secs(1), "/metrics", || {
        http_get(metrics, "/metrics")
    });
    assert_eq!(status, 200);
    let miss = within(limit, "a refresh", || get_token(&setup, "other", 100_000));
    assert_eq!(miss.status(), Some(500), "{miss:?}");
    let listed = within(limit, "getTokensByUserID", || {
        setup.call(
            &setup.manager,
            "getTokensByUserID",
            json!({"userID": "id-other"}),
        )
    });
    assert_eq!(listed.status(), Some(500), "{listed:?}");
    // Past MaxStaleness since the feed's last confirmed sync (and the database's last answer),
    // the replica is in fallback and a cache hit is refused at once: it could have missed a
    // deletion committed through another replica.
    std::thread::sleep(MAX_STALENESS.saturating_sub(frozen.elapsed()));
    let (_, exposition) = http_get(metrics, "/metrics");
    assert_eq!(
        sample(&exposition, "tokenmanager_change_feed_fallback"),
        Some(1.0)
    );
    assert!(sample(&exposition, "tokenmanager_change_sync_age_seconds").unwrap() >= 5.0);
    let stale = within(Duration::from_secs(1), "a stale cache hit", || {
        get_token(&setup, "plain", 0)
    });
    assert_eq!(stale.status(), Some(500), "{stale:?}");
    // However long the freeze lasts, every call keeps its bound.
    while frozen.elapsed() + limit < freeze_time() {
        let late = within(limit, "a refresh late in the freeze", || {
            get_token(&setup, "other", 100_000)
        });
        assert_eq!(late.status(), Some(500), "{late:?}");
        std::thread::sleep(Duration::from_secs(2));
    }

    std::thread::sleep(freeze_time().saturating_sub(frozen.elapsed()));
    proxy.thaw();
    let thawed = Instant::now();
    loop {
        let (status, _) = http_get(metrics, "/readyz");
        if status == 200 {
            eprintln!(
                "measured: /readyz 200 {:?} after the thaw",
                thawed.elapsed()
            );
            break;
        }
        assert!(
            thawed.elapsed() < Duration::from_secs(2),
            "/readyz still {status} 2 s after the database returned"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The feed catches up: out of fallback.
    loop {
        let (_, exposition) = http_get(metrics, "/metrics");
        if sample(&exposition, "tokenmanager_change_feed_fallback") == Some(0.0) {
            eprintln!(
                "measured: out of fallback {:?} after the thaw",
                thawed.elapsed()
            );
            break;
        }
        assert!(
            thawed.elapsed() < Duration::from_secs(3),
            "still in fallback"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its caller gave up; the rotated refresh token was stored when the database returned: the
    // next refresh presents it (the consumed one would make the IdP revoke the grant).
    let _ = refreshing.join();
    setup.idp.latency(0);
    let after = get_token(&setup, "plain", 200_000);
    assert_eq!(after.status(), Some(200), "{after:?}");
    assert_eq!(setup.idp.stats().refreshes("id-plain"), 3);
    assert_eq!(setup.idp.stats().refresh_errors("id-plain"), 0);
    assert!(setup.idp.grant_alive("id-plain"));
    assert_eq!(get_token(&setup, "other", 100_000).status(), Some(200));
}

#[test]
fn a_frozen_postgresql_delays_no_call_past_its_deadline_and_loses_no_rotated_token() {
    frozen_database(Backend::Postgres);
}

#[test]
fn a_frozen_mariadb_delays_no_call_past_its_deadline_and_loses_no_rotated_token() {
    frozen_database(Backend::Mysql);
}

/// `kill -9` of the replica whose refresh the IdP holds, while the other replica's callers wait
/// for its lease. `processed`: the IdP processes the dead replica's request anyway (the refresh
/// token is consumed, the rotated one lost with the process); else it drops it unprocessed.
fn kill_9_of_the_lease_holder(backend: Backend, processed: bool) {
    let mut setup = setup_with(TestDb::new(backend), 2, &[], |c| {
        c.idp(IDP).set("timeout", 4);
    });
    setup.delegate("plain");
    if processed {
        setup.idp.hold_processing_abandoned("id-plain");
    } else {
        setup.idp.hold("id-plain");
    }
    let holder = get_token_in_background(&setup, FrontEnd::Json);
    setup.idp.wait_until_held(1, Duration::from_secs(10));
    let survivor = setup.https_ports[1];
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let (full, port) = (setup.full.clone(), survivor);
            std::thread::spawn(move || {
                let body = json!({"username": "plain", "userGroup": "g_user", "scope": ["compute.read"],
                                  "audience": CE, "requiredTimeLeft": 100_000});
                let reply = crate::client::Client::with_certificate(&full).post(
                    port,
                    "/api/v1/getToken",
                    &body.to_string(),
                );
                (reply, Instant::now())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    setup.processes[0].signal("KILL");
    setup.processes[0].wait();
    let killed = Instant::now();
    if processed {
        // Processed now, its reply lost with the connection.
        setup.idp.release("id-plain");
    } else {
        setup.idp.wait_until_abandoned(Duration::from_secs(10));
        setup.idp.release("id-plain");
    }
    let _ = holder.join();

    for caller in waiting {
        let (reply, answered) = caller.join().unwrap();
        let after_kill = answered.saturating_duration_since(killed);
        eprintln!("measured: answered {after_kill:?} after the kill");
        assert!(
            after_kill < Duration::from_secs(10),
            "answered {after_kill:?} after the kill"
        );
        if processed {
            assert_eq!(
                (reply.status(), reply.body()["code"].clone()),
                (Some(409), json!("needs_redelegation")),
                "{reply:?}"
            );
        } else {
            assert_eq!(reply.status(), Some(200), "{reply:?}");
        }
    }
    let again = setup.get_token_via(1, Some("plain"), Some(CE), 0);
    let stats = setup.idp.stats();
    if processed {
        assert_eq!(
            again.body()["code"],
            json!("needs_redelegation"),
            "{again:?}"
        );
        // The dead replica's request and the survivor's one presentation of the consumed token.
        assert_eq!(stats.refreshes("id-plain"), 2);
    } else {
        assert_eq!(again.status(), Some(200), "{again:?}");
        assert_eq!(stats.refreshes("id-plain"), 2);
        assert_eq!(stats.refresh_errors("id-plain"), 0);
        assert!(setup.idp.grant_alive("id-plain"));
    }
    let (_, exposition) = http_get(setup.processes[1].metrics, "/metrics");
    assert_eq!(
        sample(
            &exposition,
            r#"tokenmanager_lease_takeovers_total{kind="user"}"#
        ),
        Some(1.0)
    );
}

#[test]
fn a_replica_whose_database_session_is_cut_takes_its_liveness_lock_again_within_a_second() {
    let db = TestDb::new(Backend::Postgres);
    let mut setup = setup_with(db, 2, &[], |_| {});
    // A database restart or a network cut ends the sessions; here the server ends those holding
    // advisory locks: each replica's liveness lock.
    let cut = Instant::now();
    setup.db().execute_raw(
        "SELECT pg_terminate_backend(pid) FROM pg_locks \
         WHERE locktype = 'advisory' AND database = \
         (SELECT oid FROM pg_database WHERE datname = current_database())",
    );
    for process in &mut setup.processes {
        process.wait_for_log("the liveness lock is held again");
        let (_, exposition) = http_get(process.metrics, "/metrics");
        assert_eq!(
            sample(&exposition, "tokenmanager_liveness_lock_held"),
            Some(1.0)
        );
    }
    let took = cut.elapsed();
    eprintln!("measured: both liveness locks held again {took:?} after the cut");
    assert!(
        took < HOLDER_GONE_FOR_IN_TESTS,
        "{took:?}: other replicas would have taken over this one's leases"
    );
    setup.delegate("plain");
    assert_eq!(get_token(&setup, "plain", 0).status(), Some(200));
}

/// How long other replicas wait before they take over the leases of a replica whose liveness
/// lock is gone (`HOLDER_GONE_FOR` in src/actors/tokens/lease.rs).
const HOLDER_GONE_FOR_IN_TESTS: Duration = Duration::from_secs(2);

#[test]
fn postgresql_kill_9_of_the_lease_holder_whose_refresh_the_idp_dropped_serves_the_user() {
    kill_9_of_the_lease_holder(Backend::Postgres, false);
}

#[test]
fn postgresql_kill_9_of_the_lease_holder_whose_refresh_the_idp_processed_says_needs_redelegation() {
    kill_9_of_the_lease_holder(Backend::Postgres, true);
}

#[test]
fn mariadb_kill_9_of_the_lease_holder_whose_refresh_the_idp_dropped_serves_the_user() {
    kill_9_of_the_lease_holder(Backend::Mysql, false);
}

#[test]
fn mariadb_kill_9_of_the_lease_holder_whose_refresh_the_idp_processed_says_needs_redelegation() {
    kill_9_of_the_lease_holder(Backend::Mysql, true);
}

#[test]
fn a_graceful_stop_ends_after_its_grace_period_and_the_refresh_it_cut_keeps_the_grant() {
    let mut setup = setup_with(TestDb::new(Backend::Sqlite), 1, &[], |c| {
        c.service().set("ShutdownGracePeriod", 2);
    });
    setup.delegate("plain");
    setup.idp.hold("id-plain");
    let held = get_token_in_background(&setup, FrontEnd::Json);
    setup.idp.wait_until_held(1, Duration::from_secs(10));
    let signalled = Instant::now();
    setup.processes[0].signal("TERM");
    assert!(
        !setup.processes[0].exits_within(Duration::from_secs(1)),
        "the call in flight gets its grace period"
    );
    assert!(
        setup.processes[0].exits_within(Duration::from_secs(3)),
        "still running {:?} after SIGTERM with a 2 s grace period",
        signalled.elapsed()
    );
    eprintln!("measured: exited {:?} after SIGTERM", signalled.elapsed());
    // The cut connection took the held request back unprocessed: the stored token still works.
    setup.idp.wait_until_abandoned(Duration::from_secs(10));
    setup.idp.release("id-plain");
    assert!(held.join().unwrap().is_err());

    setup.restart(0);
    let reply = within(Duration::from_secs(3), "getToken after the restart", || {
        get_token(&setup, "plain", 100_000)
    });
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    assert!(setup.idp.grant_alive("id-plain"));
}

/// One `serve` process on SQLite, its configuration changed by `adjust`.
fn in_one_process(adjust: impl FnOnce(&mut TestConfig)) -> Setup {
    setup_with(TestDb::new(Backend::Sqlite), 1, &[], adjust)
}

#[test]
fn an_audience_outside_the_allow_list_is_refused_before_the_idp() {
    let setup = in_one_process(|_| {});
    setup.delegate("plain");
    setup.idp.reset_stats();
    for user in [Some("plain"), None] {
        let reply = setup.get_token(user, Some("https://elsewhere.example.org"), 0);
        assert_eq!(
            (reply.status(), reply.body()["code"].clone()),
            (Some(400), json!("audience_not_allowed"))
        );
    }
    let stats = setup.idp.stats();
    assert_eq!(
        (
            stats.refreshes("id-plain"),
            stats.client_credentials_total()
        ),
        (0, 0)
    );
}

#[test]
fn scopes_beyond_the_grant_are_refused_before_the_idp_and_a_narrowed_refresh_keeps_the_grant() {
    let setup = in_one_process(|_| {});
    setup.delegate_naming("plain", SCOPE, Some(SCOPE));
    setup.idp.reset_stats();
    // Longer than the delegated access token lives: each call asks the IdP unless refused.
    let get_token = |scope: &[&str]| {
        let body = json!({"username": "plain", "userGroup": "g_user", "scope": scope,
                          "requiredTimeLeft": 7200});
        setup.call(&setup.full, "getToken", body)
    };
    let refused = get_token(&["compute.read", "compute.modify"]);
    assert_refusal(&refused, 400, "scope_not_granted", "compute.modify");
    assert_eq!(
        setup.idp.stats().refreshes("id-plain"),
        0,
        "the IdP never saw it"
    );

    // The IdP grants the refresh only what it asks for: the stored token is narrower than the
    // grant, which still covers compute.read.
    let narrowed = get_token(&["openid"]);
    assert_eq!(narrowed.status(), Some(200), "{narrowed:?}");
    assert_eq!(narrowed.body()["value"]["scope"], json!("openid"));
    let wider = get_token(&["compute.read"]);
    assert_eq!(wider.status(), Some(200), "{wider:?}");
    assert_eq!(wider.body()["value"]["scope"], json!("compute.read"));
    let stats = setup.idp.stats();
    assert_eq!(
        (
            stats.refreshes("id-plain"),
            stats.refresh_errors("id-plain")
        ),
        (2, 0)
    );
    assert!(setup.idp.grant_alive("id-plain"));
}

#[test]
fn without_an_allow_list_user_tokens_get_no_audience_and_client_tokens_any() {
    let setup = in_one_process(|c| {
        c.idp(IDP).remove("allowed_audiences");
    });
    setup.delegate("plain");
    setup.idp.reset_stats();
    let refused = setup.get_token(Some("plain"), Some(CE), 0);
    assert_refusal(&refused, 400, "audience_not_allowed", "allowed_audiences");
    assert_eq!(
        setup.idp.stats().refreshes("id-plain"),
        0,
        "the IdP never saw the request"
    );
    assert_eq!(setup.get_token(Some("plain"), None, 0).status(), Some(200));
    assert_eq!(setup.get_token(None, Some(CE), 0).status(), Some(200));
    assert_one_refresh_and_grant_alive(&setup);
}

#[test]
fn a_failing_idp_gets_a_trickle_of_requests_not_one_per_caller() {
    let setup = in_one_process(|_| {});
    setup.delegate("plain");
    setup.idp.reset_stats();
    setup.idp.fail_next(1000, 500);
    let mut failed_fast = 0;
    for _ in 0..30 {
        let reply = setup.get_token(Some("plain"), Some(CE), 100_000);
        assert_eq!(reply.body()["code"], json!("idp_unavailable"), "{reply:?}");
        if reply.body()["message"]
            .as_str()
            .is_some_and(|m| m.contains("backing off"))
        {
            failed_fast += 1;
        }
    }
    let requests = setup.idp.stats().injected_failures;
    assert!(
        requests <= 5,
        "{requests} requests reached the failing IdP for 30 callers"
    );
    assert!(failed_fast >= 25, "{failed_fast} of 30 failed fast");

    // The IdP recovers: once the interval has passed, one probe goes through and ends it.
    setup.idp.fail_next(0, 500);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = setup.get_token(Some("plain"), Some(CE), 100_000);
        if reply.status() == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "still failing: {reply:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats = setup.idp.stats();
    assert_eq!(
        stats.refreshes("id-plain"),
        stats.injected_failures + 1,
        "the failed requests and the probe that succeeded"
    );
    assert!(setup.idp.grant_alive("id-plain"));
}

#[test]
fn a_restart_after_kill_9_during_a_refresh_serves_the_user_at_once() {
    let mut setup = in_one_process(|_| {});
    setup.delegate("plain");
    setup.idp.hold("id-plain");
    // A caller whose refresh the IdP holds: the process holds the credential's lease (75 s).
    let caller = get_token_in_background(&setup, FrontEnd::Json);
    setup.idp.wait_until_held(1, Duration::from_secs(10));
    setup.kill_and_restart(0);
    // The killed process's connection closed: the IdP took the held request back unprocessed.
    setup.idp.wait_until_abandoned(Duration::from_secs(10));
    setup.idp.release("id-plain");
    let _ = caller.join();

    let started = Instant::now();
    let reply = setup.get_token(Some("plain"), Some(CE), 100_000);
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "served after {:?}: the dead process's lease was waited out",
        started.elapsed()
    );
    assert!(setup.idp.grant_alive("id-plain"));
    setup.processes[0].wait_for_log("voided the refresh leases of processes that are gone");
}

#[test]
fn sigterm_lets_calls_in_flight_finish_and_a_second_signal_stops_at_once() {
    let mut setup = in_one_process(|_| {});
    setup.delegate("plain");
    // Nine callers, three per front-end, whose refresh the IdP answers after 4 s.
    setup.idp.latency(4000);
    let callers: Vec<_> = [FrontEnd::Json, FrontEnd::DiracHttps, FrontEnd::Dips]
        .into_iter()
        .flat_map(|front| std::iter::repeat_n(front, 3))
        .map(|front| (front, get_token_in_background(&setup, front)))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    setup.processes[0].signal("TERM");
    // Health checks still connect, and are told at once that the process is not ready.
    let metrics = setup.processes[0].metrics;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (status, body) = http_get(metrics, "/readyz");
        if status == 503 {
            assert_eq!(body, "stopping\n");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz still {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
    for (front, caller) in callers {
        assert_eq!(caller.join().unwrap(), Ok(()), "{front:?}");
    }
    assert!(
        setup.processes[0].exits_within(Duration::from_secs(10)),
        "the stop did not end once the calls were answered"
    );
    assert!(setup.idp.grant_alive("id-plain"));
    setup.idp.latency(0);

    // A call the IdP holds keeps a graceful stop waiting; a second SIGTERM ends it.
    setup.restart(0);
    setup.idp.hold("id-plain");
    let held = get_token_in_background(&setup, FrontEnd::Json);
    setup.idp.wait_until_held(1, Duration::from_secs(10));
    setup.processes[0].signal("TERM");
    assert!(
        !setup.processes[0].exits_within(Duration::from_secs(1)),
        "the graceful stop waits for the call in flight"
    );
    setup.processes[0].signal("TERM");
    assert!(
        setup.processes[0].exits_within(Duration::from_secs(3)),
        "a second SIGTERM stops at once"
    );
    // Its connection closed: the IdP takes the held request back unprocessed (releasing it
    // before would process it, and the stored refresh token would be consumed).
    setup.idp.wait_until_abandoned(Duration::from_secs(10));
    setup.idp.release("id-plain");
    let _ = held.join();

    // The restarted process serves at once: the lease the stopped one held is void.
    setup.restart(0);
    let started = Instant::now();
    let after_restart = get_token_in_background(&setup, FrontEnd::Dips);
    assert_eq!(after_restart.join().unwrap(), Ok(()));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(setup.idp.grant_alive("id-plain"));
}

/// refreshConfiguration on `connection` is refused (`config_rejected`) with a message naming
/// `culprit`.
fn refresh_is_refused_naming(connection: &mut crate::client::Connection, culprit: &str) {
    let (status, body) = connection.post("/api/v1/refreshConfiguration", "{}");
    assert_eq!(
        (status, body["code"].clone()),
        (500, json!("config_rejected")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains(culprit),
        "{body}"
    );
}

#[test]
fn reload_keeps_serving_refuses_a_broken_config_and_swaps_the_host_certificate() {
    let pki = TestPki::shared();
    let db = TestDb::new(Backend::Sqlite);
    tokenmanager::crypto::KeyringFile::new(db.dir.path().join("keyring"))
        .create()
        .unwrap();
    // The test's own copy of the host certificate (in its directory), which it replaces.
    let mut config = TestConfig::on(&db);
    let path = config.write("tm.cfg");
    let PkiFiles { cert, key, .. } = PkiFiles::in_dir(db.dir.path());
    let mut app = ServeProcess::spawn(&path);

    let admin = pki.proxy(&dn("admin"), ProxyKind::Rfc3820, Some("g_admin"));
    let mut kept = crate::client::Connection::open(app.https, &admin);
    let first_serial = kept.server_serial();
    assert_eq!(kept.post("/api/v1/ping", "{}").0, 200);

    // A broken configuration, by SIGHUP and by refreshConfiguration: refused, service unchanged.
    let text = config.text();
    std::fs::write(&path, text.replace("Registry\n{", "Registry\n{\n{")).unwrap();
    app.signal("HUP");
    let refused = app.wait_for_log("reload refused");
    assert!(refused.contains("tm.cfg"), "{refused}");
    refresh_is_refused_naming(&mut kept, "tm.cfg");
    assert_eq!(
        kept.post("/api/v1/whoami", "{}").1["value"]["username"],
        json!("admin")
    );

    // One whose EncryptionKeyFile names a missing file: refused too, not the old file kept.
    let mut moved = config.clone();
    let missing = db.dir.path().join("moved-keyring");
    moved.service().set("EncryptionKeyFile", missing.display());
    moved.write("tm.cfg");
    refresh_is_refused_naming(&mut kept, "moved-keyring");

    // A good one with a new user and a new host certificate.
    let newcomer_dn = dn("newcomer");
    config.user("newcomer", "g_user");
    config.write("tm.cfg");
    let renewed = pki
        .ca
        .issue_host(
            crate::pki::HOST_DN,
            &["localhost", "127.0.0.1"],
            Validity::from_now(Duration::from_secs(86_400)),
        )
        .unwrap();
    renewed.to_pem_files(&cert, &key).unwrap();
    let (status, body) = kept.post("/api/v1/refreshConfiguration", "{}");
    assert_eq!(status, 200, "{body}");

    let (status, body) = kept.post("/api/v1/whoami", "{}");
    assert_eq!(
        (status, body["value"]["username"].clone()),
        (200, json!("admin")),
        "the kept connection lives on"
    );
    let fresh = crate::client::Connection::open(app.https, &pki.user(&newcomer_dn));
    assert_ne!(
        fresh.server_serial(),
        first_serial,
        "new connections get the new host certificate"
    );
    let mut fresh = fresh;
    assert_eq!(
        fresh.post("/api/v1/whoami", "{}").1["value"]["username"],
        json!("newcomer")
    );
}

/// The change-log readers stalled (MariaDB; the rest of each replica's sessions answer): past
/// `MaxStaleness` every replica is in fallback and each user-token hit asks the database — a
/// deletion through another replica is refused at once, another user is served — and once the
/// readers are back, hits ask the database nothing again.
#[test]
fn mariadb_stalled_change_log_readers_fall_back_to_asking_the_database_and_recover() {
    use crate::replicas::{STALENESS_BOUND, VERSION_CHECKS, metric};
    let mut db = TestDb::new(Backend::Mysql);
    let proxy = behind_proxy(&mut db);
    let setup = setup_with(db, 2, &["other".to_owned()], |_| {});
    setup.delegate("plain");
    setup.delegate("other");
    for user in ["plain", "other"] {
        let reply = setup.get_token_via(1, Some(user), Some(CE), 0);
        assert_eq!(reply.status(), Some(200), "{reply:?}");
    }
    let in_fallback = |setup: &Setup, expected: f64, since: Instant, what: &str| loop {
        if metric(setup, 1, "tokenmanager_change_feed_fallback") == expected {
            eprintln!("measured: {what} {:?}", since.elapsed());
            return;
        }
        assert!(
            since.elapsed() < STALENESS_BOUND + Duration::from_secs(2),
            "{what}: not yet after {:?}",
            since.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    proxy.freeze_sessions_that_sent("token_changes");
    let stalled = Instant::now();
    in_fallback(
        &setup,
        1.0,
        stalled,
        "in fallback after the readers stalled",
    );

    let deleted = setup.call_via(
        0,
        &setup.manager,
        "deleteToken",
        json!({"userDN": "id-plain"}),
    );
    assert_eq!(deleted.status(), Some(200), "{deleted:?}");
    let reply = setup.get_token_via(1, Some("plain"), Some(CE), 0);
    assert_eq!(reply.body()["code"], json!("no_token"), "{reply:?}");
    let checks = metric(&setup, 1, VERSION_CHECKS);
    for _ in 0..5 {
        let reply = setup.get_token_via(1, Some("other"), Some(CE), 0);
        assert_eq!(reply.status(), Some(200), "{reply:?}");
    }
    assert_eq!(
        metric(&setup, 1, VERSION_CHECKS) - checks,
        5.0,
        "in fallback every hit asks"
    );

    proxy.thaw();
    let thawed = Instant::now();
    in_fallback(&setup, 0.0, thawed, "out of fallback after the thaw");
    let checks = metric(&setup, 1, VERSION_CHECKS);
    for _ in 0..5 {
        let reply = setup.get_token_via(1, Some("other"), Some(CE), 0);
        assert_eq!(reply.status(), Some(200), "{reply:?}");
    }
    assert_eq!(
        metric(&setup, 1, VERSION_CHECKS),
        checks,
        "back in step, hits ask nothing"
    );
}

/// SIGTERM while the database does not answer: the audit records still pending cannot be
/// written; the stop still ends within its grace period, and says how many were lost.
#[test]
fn sigterm_with_a_frozen_database_counts_and_logs_the_audit_records_it_loses() {
    let mut db = TestDb::new(Backend::Postgres);
    let proxy = behind_proxy(&mut db);
    let grace = Duration::from_secs(4);
    let mut setup = setup_with(db, 1, &[], |c| {
        c.service()
            .set("AuditWindow", 60)
            .set("DatabaseDeadline", DEADLINE.as_secs())
            .set("ShutdownGracePeriod", grace.as_secs());
    });
    setup.delegate("plain");
    for _ in 0..3 {
        assert_eq!(get_token(&setup, "plain", 0).status(), Some(200));
    }
    proxy.freeze();
    let server = &mut setup.processes[0];
    server.signal("TERM");
    within(grace + Duration::from_secs(3), "the stop", || {
        assert!(server.exits_within(grace + Duration::from_secs(10)));
    });
    let log = server.log();
    let lost = log
        .lines()
        .find(|line| line.contains("audit records lost at stop"))
        .unwrap_or_else(|| panic!("no loss logged:\n{log}"));
    // The update, the refresh's rotation, and the handouts (minted, cached: two aggregates).
    assert!(lost.contains("lost=4"), "{lost}");
    proxy.thaw();
}
