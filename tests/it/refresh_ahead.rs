//! Refresh-ahead (`RefreshAhead`, docs/OPERATIONS.md#refresh-ahead) with short-lived tokens from
//! the test IdP: callers of a hot key never wait on the IdP, a cold key is left to expire, and a
//! failed background refresh leaves the token in service and is tried again.

use std::time::{Duration, Instant};

use tokenmanager::config::Backend;

use crate::client::http_get;
use crate::get_token::{CE, Setup, setup_with};
use crate::metrics::sample;
use crate::support::TestDb;

/// The counter `series` of replica 0.
fn counter(setup: &Setup, series: &str) -> f64 {
    let (status, text) = http_get(setup.metrics_port(), "/metrics");
    assert_eq!(status, 200);
    sample(&text, series).unwrap_or(0.0)
}

const USER_MISSES: &str = r#"tokenmanager_token_cache_lookups_total{kind="user",result="miss"}"#;
const CLIENT_MISSES: &str =
    r#"tokenmanager_token_cache_lookups_total{kind="client",result="miss"}"#;

fn background(setup: &Setup, kind: &str, outcome: &str) -> f64 {
    counter(
        setup,
        &format!(r#"tokenmanager_background_refreshes_total{{kind="{kind}",outcome="{outcome}"}}"#),
    )
}

/// Calls getToken for a user and a client token every 100 ms for `period`; all must succeed.
fn steady_calls(setup: &Setup, period: Duration) -> usize {
    let until = Instant::now() + period;
    let mut calls = 0;
    while Instant::now() < until {
        let user = setup.get_token(Some("plain"), Some(CE), 0);
        assert_eq!(user.status(), Some(200), "{user:?}");
        let client = setup.get_token(None, Some(CE), 0);
        assert_eq!(client.status(), Some(200), "{client:?}");
        calls += 2;
        std::thread::sleep(Duration::from_millis(100));
    }
    calls
}

/// 8 s tokens, steady callers for 3 lifetimes: after the first call of each key, none waits on
/// the IdP (no cache miss), each key is refreshed in the background about once per lifetime;
/// with `RefreshAhead = no` the same calls miss at each expiry.
fn hot_keys(refresh_ahead: bool) -> (f64, f64, u64) {
    let setup = setup_with(TestDb::new(Backend::Sqlite), 0, &[], |c| {
        c.service()
            .set("RefreshAhead", if refresh_ahead { "yes" } else { "no" });
    });
    setup.idp.set_access_token_ttl(8);
    setup.delegate("plain");
    steady_calls(&setup, Duration::from_secs(24));
    let misses = counter(&setup, USER_MISSES) + counter(&setup, CLIENT_MISSES);
    let ok = background(&setup, "user", "ok") + background(&setup, "client", "ok");
    let exchanges =
        setup.idp.stats().refreshes("id-plain") + setup.idp.stats().client_credentials_total();
    (misses, ok, exchanges)
}

#[test]
fn hot_keys_are_refreshed_before_callers_wait() {
    let (misses, background_ok, exchanges) = hot_keys(true);
    // The first call of each key misses; nothing after it.
    assert_eq!(misses, 2.0, "callers waited on the IdP");
    // Due 1 s before expiry (requiredTimeLeft 0): every ~7 s, 3 times in 24 s per key.
    assert!(
        (4.0..=8.0).contains(&background_ok),
        "{background_ok} background refreshes"
    );
    assert_eq!(
        exchanges as f64,
        2.0 + background_ok,
        "one IdP exchange per refresh"
    );

    let (misses_without, background_without, _) = hot_keys(false);
    assert_eq!(background_without, 0.0);
    assert!(
        misses_without >= 6.0,
        "without refresh-ahead each expiry is a miss: {misses_without}"
    );
}

/// A key asked for once is not refreshed in the background: no IdP load for an idle user.
#[test]
fn a_cold_key_is_left_to_expire() {
    let setup = setup_with(TestDb::new(Backend::Sqlite), 0, &[], |_| {});
    setup.idp.set_access_token_ttl(4);
    setup.delegate("plain");
    assert_eq!(
        setup.get_token(Some("plain"), Some(CE), 0).status(),
        Some(200)
    );
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(setup.idp.stats().refreshes("id-plain"), 1);
    assert_eq!(background(&setup, "user", "cold"), 1.0);
    assert_eq!(background(&setup, "user", "ok"), 0.0);
}

/// The IdP fails the first background refresh: the current token stays in service (no caller
/// sees an error or waits), and the refresh is tried again 2 s later and succeeds.
#[test]
fn a_failed_background_refresh_keeps_the_token_and_is_retried() {
    let setup = setup_with(TestDb::new(Backend::Sqlite), 0, &[], |c| {
        // Due at half the lifetime: room for a retry.
        c.service().set("RefreshAheadPercent", 50);
    });
    setup.idp.set_access_token_ttl(12);
    setup.delegate("plain");
    let first = setup.get_token(Some("plain"), Some(CE), 0);
    assert_eq!(first.status(), Some(200), "{first:?}");
    // Due at 6 s left, after 6 s.
    std::thread::sleep(Duration::from_secs(4));
    setup.idp.fail_next(1, 503);
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let reply = setup.get_token(Some("plain"), Some(CE), 0);
        assert_eq!(reply.status(), Some(200), "{reply:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(background(&setup, "user", "failed"), 1.0);
    assert_eq!(background(&setup, "user", "ok"), 1.0);
    assert_eq!(counter(&setup, USER_MISSES), 1.0, "a caller waited");
    // The first refresh, the failed background one, its retry.
    assert_eq!(setup.idp.stats().refreshes("id-plain"), 3);
    assert!(setup.idp.grant_alive("id-plain"));
}
