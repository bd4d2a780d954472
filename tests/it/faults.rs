//! Faults against the real binary: a database that stops answering (frozen by a stalling proxy),
//! and replicas killed in the middle of a refresh. The test IdP rotates refresh tokens and
//! revokes the grant when a used one is presented again, so a burned grant shows.

use std::time::{Duration, Instant};

use serde_json::json;
use tokenmanager::config::Backend;

use crate::client::{Reply, http_get};
use crate::get_token::{CE, FrontEnd, Setup, get_token_in_background, setup_with_options};
use crate::metrics::sample;
use crate::stall::StallingProxy;
use crate::support::TestDb;

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
    let service_options = format!(
        "DatabaseDeadline = {}\nMaxStaleness = {}\n",
        DEADLINE.as_secs(),
        MAX_STALENESS.as_secs()
    );
    let setup = setup_with_options(
        db,
        1,
        &["other".to_owned()],
        "      timeout = 4\n",
        &service_options,
    );
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

    let hit = within(limit, "a cache hit", || get_token(&setup, "plain", 0));
    assert_eq!(hit.status(), Some(200), "served unconfirmed: {hit:?}");
    let (status, _) = within(Duration::from_secs(2), "/readyz", || {
        http_get(metrics, "/readyz")
    });
    assert_eq!(status, 503);
    let (status, exposition) = within(Duration::from_secs(1), "/metrics", || {
        http_get(metrics, "/metrics")
    });
    assert_eq!(status, 200);
    assert!(
        sample(
            &exposition,
            "tokenmanager_token_cache_unconfirmed_hits_total"
        )
        .unwrap()
            >= 1.0
    );
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
    // Past MaxStaleness since the last answer, a cache hit is refused at once.
    std::thread::sleep(MAX_STALENESS.saturating_sub(frozen.elapsed()));
    let stale = within(Duration::from_secs(1), "a stale cache hit", || {
        get_token(&setup, "plain", 0)
    });
    assert_eq!(stale.status(), Some(500), "{stale:?}");

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
    let mut setup = setup_with_options(TestDb::new(backend), 2, &[], "      timeout = 4\n", "");
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
    let mut setup = setup_with_options(
        TestDb::new(Backend::Sqlite),
        1,
        &[],
        "",
        "ShutdownGracePeriod = 2\n",
    );
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
