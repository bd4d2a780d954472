//! Several OAuth clients of one IdP, DIRAC 9's way: one `/Resources/IdProviders` section per
//! client, all naming the same issuer, chosen by getToken's `identityProvider`.

use serde_json::{Value, json};

use crate::client::{Client, Reply, Request, http_get};
use crate::get_token::{CE, SCOPE, Setup, setup_with};
use crate::idp::client_secret;
use crate::metrics::sample;
use crate::support::TestDb;
use crate::test_config::{IDP, TestConfig};

/// The second section: the test IdP's issuer again, as client `tm-post`.
const POST_IDP: &str = "test-idp-post";

/// [`IDP`] (client `tm-basic`, first in the configuration) and [`POST_IDP`] (client `tm-post`)
/// on one test IdP, changed by `adjust`.
fn two_clients_of_one_issuer(adjust: impl FnOnce(&mut TestConfig)) -> Setup {
    let db = TestDb::new(tokenmanager::config::Backend::Sqlite);
    setup_with(db, 0, &[], |c| {
        let issuer = c
            .idp(IDP)
            .value("issuer")
            .expect("the test IdP's issuer")
            .to_owned();
        c.idp(POST_IDP)
            .set("issuer", issuer)
            .set("client_id", "tm-post")
            .set("client_secret", client_secret("tm-post"))
            .set("token_endpoint_auth_method", "client_secret_post")
            .set("audience_parameter", "resource")
            .set("allowed_audiences", CE);
        adjust(c);
    })
}

fn get_token_through(setup: &Setup, user: Option<&str>, idp: &str) -> Reply {
    let body = json!({"username": user, "userGroup": "g_user", "scope": ["compute.read"],
                      "audience": CE, "identityProvider": idp});
    setup.call(&setup.full, "getToken", body)
}

fn value_of(reply: &Reply) -> Value {
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    reply.body()["value"].clone()
}

/// client_credentials requests the IdP received from `client`, any scope and resource.
fn client_credentials_of(setup: &Setup, client: &str) -> u64 {
    let prefix = format!("{client} ");
    let stats = setup.idp.stats();
    stats
        .client_credentials
        .iter()
        .filter(|(key, _)| key.starts_with(&prefix))
        .map(|(_, count)| count)
        .sum()
}

/// `tokenmanager_idp_requests_total` of section `idp` for `grant`, answered ok (0 if never).
fn requests_counted(setup: &Setup, idp: &str, grant: &str) -> f64 {
    let (status, exposition) = http_get(setup.metrics_port(), "/metrics");
    assert_eq!(status, 200);
    let series = format!(
        "tokenmanager_idp_requests_total{{grant=\"{grant}\",idp=\"{idp}\",outcome=\"ok\"}}"
    );
    sample(&exposition, &series).unwrap_or(0.0)
}

#[test]
fn sections_of_one_issuer_use_their_own_client_and_share_discovery() {
    let setup = two_clients_of_one_issuer(|_| {});

    // Client tokens: each section asks with its own client, and caches its own token.
    let basic = value_of(&get_token_through(&setup, None, IDP));
    let post = value_of(&get_token_through(&setup, None, POST_IDP));
    assert_eq!(
        (&basic["client_id"], &basic["provider"]),
        (&json!("tm-basic"), &json!(IDP))
    );
    assert_eq!(
        (&post["client_id"], &post["provider"]),
        (&json!("tm-post"), &json!(POST_IDP))
    );
    assert_ne!(basic["access_token"], post["access_token"]);
    for _ in 0..3 {
        let again = value_of(&get_token_through(&setup, None, IDP));
        assert_eq!(again["access_token"], basic["access_token"]);
        let again = value_of(&get_token_through(&setup, None, POST_IDP));
        assert_eq!(again["access_token"], post["access_token"]);
    }
    assert_eq!(
        (
            client_credentials_of(&setup, "tm-basic"),
            client_credentials_of(&setup, "tm-post")
        ),
        (1, 1)
    );

    // A user delegated through IDP: its credential is that section's alone.
    setup.delegate("plain");
    let through_basic = value_of(&get_token_through(&setup, Some("plain"), IDP));
    assert!(through_basic["access_token"].is_string());
    let through_post = get_token_through(&setup, Some("plain"), POST_IDP);
    assert_eq!(
        (through_post.status(), through_post.body()["code"].clone()),
        (Some(404), json!("no_token")),
        "{through_post:?}"
    );
    assert_eq!(setup.idp.stats().refreshes("id-plain"), 1);

    // One discovery document for both sections.
    assert_eq!(setup.idp.stats().discovery, 1);
    assert_eq!(
        requests_counted(&setup, IDP, "discovery")
            + requests_counted(&setup, POST_IDP, "discovery"),
        1.0
    );

    // Each section's requests under its own label.
    assert_eq!(
        [
            requests_counted(&setup, IDP, "client_credentials"),
            requests_counted(&setup, POST_IDP, "client_credentials"),
            requests_counted(&setup, IDP, "refresh_token"),
            requests_counted(&setup, POST_IDP, "refresh_token"),
        ],
        [1.0, 1.0, 1.0, 0.0]
    );
}

#[test]
fn a_bearer_token_is_accepted_by_any_section_of_its_issuer() {
    const AUDIENCE_BASIC: &str = "https://basic.tokenmanager.example.org";
    const AUDIENCE_POST: &str = "https://post.tokenmanager.example.org";
    let setup = two_clients_of_one_issuer(|c| {
        c.idp(IDP).set("bearer_audience", AUDIENCE_BASIC);
        c.idp(POST_IDP).set("bearer_audience", AUDIENCE_POST);
    });
    let whoami = |audience: &str| {
        let grant = setup.idp.grant("id-plain", SCOPE);
        let refreshed = setup
            .idp
            .refresh("tm-basic", &grant.refresh_token, None, Some(audience))
            .unwrap();
        let token = refreshed["access_token"].as_str().unwrap();
        let request = Request::post("/api/v1/whoami").json("{}").bearer(token);
        Client::anonymous().call(setup.https_ports[0], &request)
    };

    for audience in [AUDIENCE_POST, AUDIENCE_BASIC] {
        let reply = whoami(audience);
        assert_eq!(
            (reply.status(), reply.body()["value"]["username"].clone()),
            (Some(200), json!("plain")),
            "{audience}: {reply:?}"
        );
    }
    let refused = whoami(CE);
    assert_eq!(
        (refused.status(), refused.body()["code"].clone()),
        (Some(401), json!("unauthenticated")),
        "{refused:?}"
    );
    // The keys are the issuer's: one discovery for both sections.
    assert_eq!(setup.idp.stats().discovery, 1);
}
