//! Audience narrowing by RFC 8693 token exchange (`audience_narrowing = exchange`) against the
//! real test IdP: a user token for an audience is one refresh without audience (cached under its
//! own key) and one exchange per audience; the refresh token never travels with an audience, and
//! a refused exchange fails that call only.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::client::{Reply, http_get};
use crate::get_token::{CE, SCOPE, Setup, concurrently, setup_with};
use crate::idp::jwt_claims;
use crate::metrics::sample;
use crate::support::TestDb;
use crate::test_config::IDP;

const FTS: &str = "https://fts.example.org";

/// The service on SQLite with its IdP narrowing audiences by exchange; `allowed_audiences` as
/// `adjust` leaves it ([`CE`] and [`FTS`] unless changed).
fn exchanging(adjust: impl FnOnce(&mut crate::test_config::Section)) -> Setup {
    setup_with(
        TestDb::new(tokenmanager::config::Backend::Sqlite),
        0,
        &[],
        |c| adjust(c.idp(IDP).set("audience_narrowing", "exchange")),
    )
}

fn get_token(setup: &Setup, scopes: &[&str], audience: &str) -> Reply {
    let body = json!({"username": "plain", "userGroup": "g_user", "scope": scopes,
                      "audience": audience, "requiredTimeLeft": 0});
    setup.call(&setup.full, "getToken", body)
}

/// The token of a successful reply, and its claims (a JWT: the test IdP's exchanged tokens are).
fn token_of(reply: &Reply) -> (String, Value) {
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    let token = reply.body()["value"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let claims = jwt_claims(&token).expect("an exchanged token is a JWT");
    (token, claims)
}

fn exchanges_counted(setup: &Setup, outcome: &str) -> f64 {
    let series = format!(
        "tokenmanager_idp_requests_total{{grant=\"token_exchange\",idp=\"{IDP}\",outcome=\"{outcome}\"}}"
    );
    let (status, exposition) = http_get(setup.metrics_port(), "/metrics");
    assert_eq!(status, 200);
    sample(&exposition, &series).unwrap_or_else(|| panic!("no series {series}"))
}

/// One refresh without audience and one exchange; the narrowed token is the audience's, with the
/// requested scope; then cache hits, and another audience costs one exchange and no refresh.
fn one_refresh_then_one_exchange_per_audience(setup: &Setup, subject_format: &str) {
    setup.delegate("plain");
    setup.idp.reset_stats();

    let first = get_token(setup, &["compute.read"], CE);
    let (token, claims) = token_of(&first);
    assert_eq!(
        (&claims["aud"], &claims["sub"]),
        (&json!(CE), &json!("id-plain"))
    );
    assert_eq!(claims["scope"], "compute.read");
    assert_eq!(first.body()["value"]["scope"], "compute.read");
    let stats = setup.idp.stats();
    assert_eq!(stats.refreshes("id-plain"), 1, "{stats:?}");
    assert_eq!(stats.refreshes_with_audience("id-plain"), 0, "{stats:?}");
    assert_eq!(stats.exchanges_for(CE), 1, "{stats:?}");
    assert_eq!(stats.exchanges_total(), 1, "{stats:?}");
    assert_eq!(
        stats.exchange_subjects.get(subject_format),
        Some(&1),
        "{stats:?}"
    );

    let again = get_token(setup, &["compute.read"], CE);
    assert_eq!(token_of(&again).0, token, "served from the cache");
    let (_, fts) = token_of(&get_token(setup, &["compute.read"], FTS));
    assert_eq!(fts["aud"], FTS);
    let stats = setup.idp.stats();
    assert_eq!(
        (stats.refreshes("id-plain"), stats.exchanges_total()),
        (1, 2),
        "the broad token served the second audience: {stats:?}"
    );
    assert_eq!(exchanges_counted(setup, "ok"), 2.0);
    assert!(setup.idp.grant_alive("id-plain"));
}

#[test]
fn an_audience_costs_one_refresh_without_it_and_one_exchange_of_an_opaque_token() {
    let setup = exchanging(|_| {});
    one_refresh_then_one_exchange_per_audience(&setup, "opaque");
}

#[test]
fn a_jwt_broad_token_is_exchanged_the_same_way() {
    let setup = exchanging(|_| {});
    setup
        .idp
        .set_default_resource(Some("https://broad.example.org"));
    one_refresh_then_one_exchange_per_audience(&setup, "jwt");
}

#[test]
fn concurrent_callers_of_one_narrowed_key_cost_one_exchange() {
    let setup = Arc::new(exchanging(|_| {}));
    setup.delegate("plain");
    setup.idp.reset_stats();
    setup.idp.latency(300);
    let shared = setup.clone();
    let replies = concurrently(20, move |_| get_token(&shared, &["compute.read"], CE));
    let tokens: Vec<String> = replies.iter().map(|r| token_of(r).0).collect();
    assert!(tokens.iter().all(|t| *t == tokens[0]), "one token for all");
    let stats = setup.idp.stats();
    assert_eq!(
        (stats.refreshes("id-plain"), stats.exchanges_total()),
        (1, 1),
        "{stats:?}"
    );
}

#[test]
fn up_scoping_is_refused_before_any_idp_call() {
    let setup = exchanging(|_| {});
    // The stored login names its scopes: the grant is known.
    setup.delegate_naming("plain", SCOPE, Some(SCOPE));
    setup.idp.reset_stats();
    let refused = get_token(&setup, &["compute.read", "storage.modify"], CE);
    assert_eq!(
        (refused.status(), refused.body()["code"].clone()),
        (Some(400), json!("scope_not_granted")),
        "{refused:?}"
    );
    let stats = setup.idp.stats();
    assert_eq!(
        (stats.refreshes_total(), stats.exchanges_total()),
        (0, 0),
        "{stats:?}"
    );
    let (_, claims) = token_of(&get_token(&setup, &["compute.read"], CE));
    assert_eq!(claims["scope"], "compute.read");
}

#[test]
fn an_audience_the_idp_refuses_fails_that_call_only() {
    // No allow-list: with exchange, the IdP decides which audiences it narrows to.
    let setup = exchanging(|idp| {
        idp.remove("allowed_audiences");
    });
    setup.delegate("plain");
    setup.idp.reset_stats();
    // The test IdP exchanges for https:// audiences only.
    let refused = get_token(&setup, &["compute.read"], "http://ce.example.org");
    assert_eq!(
        (refused.status(), refused.body()["code"].clone()),
        (Some(400), json!("audience_not_allowed")),
        "{refused:?}"
    );
    let message = refused.body()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("invalid_target"), "{message}");
    let stats = setup.idp.stats();
    assert_eq!(stats.exchange_errors("invalid_target"), 1, "{stats:?}");
    assert_eq!(exchanges_counted(&setup, "refused"), 1.0);

    // The credential still works (not needs_redelegation), from the broad token already cached.
    let (_, claims) = token_of(&get_token(&setup, &["compute.read"], CE));
    assert_eq!(claims["aud"], CE);
    let stats = setup.idp.stats();
    assert_eq!(
        (stats.refreshes("id-plain"), stats.exchanges_total()),
        (1, 2),
        "{stats:?}"
    );
    assert!(setup.idp.grant_alive("id-plain"));
    // An audience outside a configured allow-list is still refused before the IdP.
    drop(setup);
    let listed = exchanging(|_| {});
    listed.delegate("plain");
    listed.idp.reset_stats();
    let refused = get_token(&listed, &["compute.read"], "https://elsewhere.example.org");
    assert_eq!(
        refused.body()["code"],
        json!("audience_not_allowed"),
        "{refused:?}"
    );
    let stats = listed.idp.stats();
    assert_eq!(
        (stats.refreshes_total(), stats.exchanges_total()),
        (0, 0),
        "{stats:?}"
    );
}

#[test]
fn a_token_without_audience_is_a_plain_refresh() {
    let setup = exchanging(|_| {});
    setup.delegate("plain");
    setup.idp.reset_stats();
    let body = json!({"username": "plain", "userGroup": "g_user", "scope": ["compute.read"],
                      "requiredTimeLeft": 0});
    let reply = setup.call(&setup.full, "getToken", body);
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    let stats = setup.idp.stats();
    assert_eq!(
        (stats.refreshes("id-plain"), stats.exchanges_total()),
        (1, 0),
        "{stats:?}"
    );
    // That broad token is then the one an audience is narrowed from.
    token_of(&get_token(&setup, &["compute.read"], CE));
    let stats = setup.idp.stats();
    assert_eq!(
        (stats.refreshes("id-plain"), stats.exchanges_total()),
        (1, 1),
        "{stats:?}"
    );
}

/// Refresh-ahead of a narrowed key goes the same way: the broad token refreshed without
/// audience, then exchanged; callers of the hot key never wait after their first call.
#[test]
fn a_narrowed_key_refreshed_ahead_never_sends_its_audience_with_the_refresh_token() {
    let setup = setup_with(
        TestDb::new(tokenmanager::config::Backend::Sqlite),
        0,
        &[],
        |c| {
            c.service().set("RefreshAhead", "yes");
            c.idp(IDP).set("audience_narrowing", "exchange");
        },
    );
    setup.idp.set_access_token_ttl(8);
    setup.delegate("plain");
    setup.idp.reset_stats();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(17);
    while std::time::Instant::now() < until {
        let (_, claims) = token_of(&get_token(&setup, &["compute.read"], CE));
        assert_eq!(claims["aud"], CE);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (status, exposition) = http_get(setup.metrics_port(), "/metrics");
    assert_eq!(status, 200);
    let counted = |series: &str| sample(&exposition, series).unwrap_or(0.0);
    let background =
        counted(r#"tokenmanager_background_refreshes_total{kind="user",outcome="ok"}"#);
    assert!(background >= 1.0, "{background} background refreshes");
    assert_eq!(
        counted(r#"tokenmanager_token_cache_lookups_total{kind="user",result="miss"}"#),
        1.0,
        "callers waited on the IdP after their first call"
    );
    let stats = setup.idp.stats();
    assert_eq!(stats.refreshes_with_audience("id-plain"), 0, "{stats:?}");
    assert_eq!(
        stats.exchanges_for(CE) as f64,
        1.0 + background,
        "one exchange per refresh of the narrowed key: {stats:?}"
    );
    assert!(
        stats.refreshes("id-plain") as f64 <= 1.0 + background,
        "{stats:?}"
    );
}
