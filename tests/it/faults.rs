//! Faults against the real binary: a database that stops answering (frozen by a stalling
//! proxy). The test IdP rotates refresh tokens and
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
