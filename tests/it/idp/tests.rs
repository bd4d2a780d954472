//! The test IdP's own tests: that it is as strict as the tests rely on (rotation, reuse
//! revokes the grant, client authentication, resources) and that its control endpoints do what
//! the harness says.

use super::*;

const USER_SCOPE: &str = "openid offline_access profile wlcg.groups:/dteam/user compute.read";

fn token<'a>(reply: &'a Result<Value, (u16, Value)>, field: &str) -> &'a str {
    match reply {
        Ok(v) => v[field]
            .as_str()
            .unwrap_or_else(|| panic!("no {field} in {v}")),
        Err(e) => panic!("expected success, got {e:?}"),
    }
}

fn assert_invalid_grant(reply: &Result<Value, (u16, Value)>) {
    match reply {
        Err((400, body)) => assert_eq!(body["error"], "invalid_grant", "{body}"),
        other => panic!("expected 400 invalid_grant, got {other:?}"),
    }
}

#[test]
fn idp_rotates_refresh_tokens_and_revokes_the_grant_on_reuse() {
    let idp = TestIdp::spawn();
    let minted = idp.grant("alice", USER_SCOPE);
    assert!(idp.grant_alive("alice"));
    assert_eq!(minted.expires_in, 3600);

    let first = idp.refresh("tm-basic", &minted.refresh_token, None, None);
    let rt1 = token(&first, "refresh_token").to_owned();
    assert_ne!(rt1, minted.refresh_token, "the refresh token must rotate");
    assert_eq!(first.as_ref().unwrap()["scope"], USER_SCOPE);
    assert!(first.as_ref().unwrap()["id_token"].is_string());

    // Narrower scope and an audience: a JWT for that resource, and a new refresh token.
    let second = idp.refresh(
        "tm-basic",
        &rt1,
        Some("compute.read"),
        Some("https://ce.example.org:9619"),
    );
    let rt2 = token(&second, "refresh_token").to_owned();
    assert_ne!(rt2, rt1);
    let claims = jwt_claims(token(&second, "access_token")).expect("a JWT access token");
    assert_eq!(claims["aud"], "https://ce.example.org:9619");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["scope"], "compute.read");
    assert!(idp.grant_alive("alice"));

    // Presenting the consumed token: invalid_grant, and the whole grant is gone.
    assert_invalid_grant(&idp.refresh("tm-basic", &rt1, None, None));
    assert!(!idp.grant_alive("alice"));
    assert_invalid_grant(&idp.refresh("tm-basic", &rt2, None, None));

    // A refresh token works only with the client it was issued to.
    let post = idp.grant_for("tm-post", "bob", "openid offline_access");
    assert_invalid_grant(&idp.refresh("tm-basic", &post.refresh_token, None, None));
    let ok = idp.refresh("tm-post", &post.refresh_token, None, None);
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn idp_client_credentials_with_a_resource_is_a_jwt_for_that_audience() {
    let idp = TestIdp::spawn();
    let resource = "https://ce.example.org:9619";
    let scope = "compute.read compute.create wlcg.groups:/dteam/pilot";
    for client in ["tm-basic", "tm-post"] {
        let reply = idp.client_credentials(client, Some(scope), Some(resource));
        let at = token(&reply, "access_token");
        let claims = jwt_claims(at).expect("a JWT access token");
        assert_eq!(claims["aud"], resource);
        assert_eq!(claims["client_id"], client);
        assert_eq!(claims["scope"], scope);
        assert_eq!(claims["iss"], idp.issuer());
        let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert_eq!(lifetime, 3600);
        assert_eq!(reply.as_ref().unwrap()["expires_in"], 3600);
    }

    // Without a resource: an opaque token, arbitrary scopes kept.
    let reply = idp.client_credentials("tm-basic", Some("fts wlcg.groups:/dteam/user"), None);
    assert!(jwt_claims(token(&reply, "access_token")).is_none());
    assert_eq!(
        reply.as_ref().unwrap()["scope"],
        "fts wlcg.groups:/dteam/user"
    );

    // Lifetimes are settable; non-https resources are refused.
    idp.set_access_token_ttl(120);
    let reply = idp.client_credentials("tm-post", Some("fts"), Some("https://fts.example.org"));
    assert_eq!(reply.as_ref().unwrap()["expires_in"], 120);
    let claims = jwt_claims(token(&reply, "access_token")).unwrap();
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        120
    );
    match idp.client_credentials("tm-basic", Some("fts"), Some("http://fts.example.org")) {
        Err((400, body)) => assert_eq!(body["error"], "invalid_target"),
        other => panic!("expected invalid_target, got {other:?}"),
    }

    // Only the registered client authentication method is accepted.
    let wrong = Request::post("/token")
        .form(&[("grant_type", "client_credentials")])
        .basic_auth("tm-post", "tm-post-secret");
    let reply = Client::http().send(idp.port(), &wrong).unwrap();
    assert_eq!(reply.status, 401);
}

#[test]
fn idp_injected_failures_do_not_consume_the_refresh_token() {
    let idp = TestIdp::spawn();
    let minted = idp.grant("carol", USER_SCOPE);
    idp.fail_next(2, 500);
    for _ in 0..2 {
        match idp.refresh("tm-basic", &minted.refresh_token, None, None) {
            Err((500, body)) => assert_eq!(body["error"], "server_error"),
            other => panic!("expected the injected 500, got {other:?}"),
        }
    }
    let reply = idp.refresh("tm-basic", &minted.refresh_token, None, None);
    assert!(reply.is_ok(), "{reply:?}");
    assert!(idp.grant_alive("carol"));
    let stats = idp.stats();
    assert_eq!(stats.refreshes("carol"), 3);
    assert_eq!(stats.injected_failures, 2);
    assert_eq!(stats.refresh_errors("carol"), 0);

    idp.fail_next(1, 503);
    let cc = idp.client_credentials("tm-post", Some("fts"), None);
    assert!(matches!(cc, Err((503, _))), "{cc:?}");
}

#[test]
fn idp_hold_keeps_a_refresh_waiting_until_release() {
    let idp = TestIdp::spawn();
    let minted = idp.grant("dave", USER_SCOPE);
    idp.hold("dave");
    thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        let idp = &idp;
        let rt = minted.refresh_token.clone();
        s.spawn(move || {
            tx.send(idp.refresh("tm-basic", &rt, None, None)).unwrap();
        });
        idp.wait_until_held(1, Duration::from_secs(10));
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "the held refresh was answered"
        );
        // Other users are not held.
        let other = idp.grant("erin", USER_SCOPE);
        assert!(
            idp.refresh("tm-basic", &other.refresh_token, None, None)
                .is_ok()
        );
        assert_eq!(idp.held(), 1);

        idp.release("dave");
        let reply = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the released refresh was answered");
        assert!(reply.is_ok(), "{reply:?}");
    });
    assert_eq!(idp.held(), 0);
    assert!(idp.grant_alive("dave"));

    // A client that gives up while held takes its request back: nothing is consumed.
    let fresh = idp.grant("ivan", USER_SCOPE);
    idp.hold("ivan");
    let gave_up =
        idp.refresh_with_timeout("tm-basic", &fresh.refresh_token, Duration::from_millis(500));
    assert!(matches!(gave_up, Err((0, _))), "{gave_up:?}");
    idp.wait_until_held(0, Duration::from_secs(10));
    assert_eq!(idp.stats().abandoned_holds, 1);
    idp.release("ivan");
    let reply = idp.refresh("tm-basic", &fresh.refresh_token, None, None);
    assert!(reply.is_ok(), "{reply:?}");

    // With process_abandoned the late request is processed on release: the token is gone.
    let slow = idp.grant("judy", USER_SCOPE);
    idp.hold_processing_abandoned("judy");
    let gave_up =
        idp.refresh_with_timeout("tm-basic", &slow.refresh_token, Duration::from_millis(500));
    assert!(matches!(gave_up, Err((0, _))), "{gave_up:?}");
    assert_eq!(idp.held(), 1);
    // Released, it takes the grant's lock before the next request arrives, so it goes first.
    idp.release("judy");
    assert_eq!(idp.held(), 0);
    assert_invalid_grant(&idp.refresh("tm-basic", &slow.refresh_token, None, None));
    assert!(!idp.grant_alive("judy"));
}

#[test]
fn idp_drop_reply_consumes_the_token_and_breaks_the_connection() {
    let idp = TestIdp::spawn();
    let minted = idp.grant("frank", USER_SCOPE);
    idp.drop_reply("frank");
    match idp.refresh("tm-basic", &minted.refresh_token, None, None) {
        Err((0, body)) => assert_eq!(body["error"], "connection"),
        other => panic!("expected a broken connection, got {other:?}"),
    }
    assert_eq!(idp.stats().dropped_replies, 1);
    // The token was consumed: retrying it is reuse, and kills the grant.
    assert!(idp.grant_alive("frank"));
    assert_invalid_grant(&idp.refresh("tm-basic", &minted.refresh_token, None, None));
    assert!(!idp.grant_alive("frank"));
}

#[test]
fn idp_keeps_thousands_of_grants() {
    const GRANTS: usize = 2000;
    const THREADS: usize = 4;
    let started = Instant::now();
    let idp = TestIdp::spawn();
    let idp = &idp;
    // Mint them all first: oidc-provider's bundled LRU store would have forgotten the first
    // ones by the time they are refreshed.
    let minted: Vec<MintedGrant> = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    (t..GRANTS)
                        .step_by(THREADS)
                        .map(|i| {
                            (
                                i,
                                idp.grant(&format!("user{i:04}"), "openid offline_access"),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(usize, MintedGrant)> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, g)| g).collect()
    });
    thread::scope(|s| {
        for t in 0..THREADS {
            let minted = &minted;
            s.spawn(move || {
                for i in (t..GRANTS).step_by(THREADS) {
                    let reply = idp.refresh("tm-basic", &minted[i].refresh_token, None, None);
                    assert!(reply.is_ok(), "grant {i}: {reply:?}");
                }
            });
        }
    });
    let stats = idp.stats();
    assert_eq!(stats.refreshes_total(), GRANTS as u64);
    assert_eq!(stats.refreshes("user0000"), 1);
    assert!(
        stats.refresh_errors.is_empty(),
        "{:?}",
        stats.refresh_errors
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{GRANTS} grants took {:?}",
        started.elapsed()
    );
}

#[test]
fn idp_stats_count_what_arrived() {
    let idp = TestIdp::spawn();
    let minted = idp.grant("gina", USER_SCOPE);
    let ok = idp.refresh("tm-basic", &minted.refresh_token, None, None);
    assert!(ok.is_ok());
    assert_invalid_grant(&idp.refresh("tm-basic", &minted.refresh_token, None, None));
    for _ in 0..3 {
        idp.client_credentials("tm-basic", Some("compute.read"), Some("https://a.example"))
            .unwrap();
    }
    idp.client_credentials("tm-post", None, None).unwrap();
    let other = idp.grant("hank", USER_SCOPE);
    idp.revoke("tm-basic", &other.refresh_token, Some("refresh_token"))
        .unwrap();
    assert!(
        !idp.grant_alive("hank"),
        "revoking a refresh token revokes its grant"
    );
    assert!(
        idp.refresh("tm-basic", "no-such-token", None, None)
            .is_err()
    );

    let stats = idp.stats();
    assert_eq!(stats.refreshes("gina"), 2);
    assert_eq!(stats.refresh_errors("gina"), 1);
    assert_eq!(stats.refreshes("<unknown>"), 1);
    assert_eq!(stats.refreshes_total(), 3);
    assert_eq!(
        stats.client_credentials_count("tm-basic", Some("compute.read"), Some("https://a.example")),
        3
    );
    assert_eq!(stats.client_credentials_count("tm-post", None, None), 1);
    assert_eq!(stats.client_credentials_total(), 4);
    assert_eq!(stats.revocations(), 1);

    // Latency delays every token-endpoint request.
    idp.latency(300);
    let started = Instant::now();
    idp.client_credentials("tm-post", Some("fts"), None)
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    idp.latency(0);

    idp.reset_stats();
    let stats = idp.stats();
    assert_eq!(stats.refreshes_total(), 0);
    assert_eq!(stats.client_credentials_total(), 0);
    assert_eq!(stats.revocations(), 0);
}

fn assert_refused(reply: &Result<Value, (u16, Value)>, error: &str) {
    match reply {
        Err((400, body)) => assert_eq!(body["error"], error, "{body}"),
        other => panic!("expected 400 {error}, got {other:?}"),
    }
}

#[test]
fn idp_token_exchange_narrows_a_subject_token_and_refuses_as_rfc_8693_says() {
    const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
    let idp = TestIdp::spawn();
    let minted = idp.grant("erin", USER_SCOPE);
    let refreshed = idp.refresh("tm-basic", &minted.refresh_token, None, None);
    let opaque = token(&refreshed, "access_token").to_owned();
    assert!(jwt_claims(&opaque).is_none());
    let rt = token(&refreshed, "refresh_token").to_owned();

    // An opaque subject token, narrowed to an audience and a subset of its scopes.
    let ce = "https://ce.example.org:9619";
    let reply = idp.token_exchange(
        "tm-basic",
        &opaque,
        Some(ACCESS_TOKEN),
        Some(ce),
        Some("compute.read"),
    );
    let claims = jwt_claims(token(&reply, "access_token")).expect("a JWT access token");
    assert_eq!(
        (&claims["aud"], &claims["sub"], &claims["scope"]),
        (&json!(ce), &json!("erin"), &json!("compute.read"))
    );
    assert_eq!(claims["iss"], idp.issuer());
    let body = reply.as_ref().unwrap();
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(
        (&body["scope"], &body["expires_in"]),
        (&json!("compute.read"), &json!(3600))
    );
    assert!(body.get("refresh_token").is_none());

    // A JWT subject token (from a refresh for a resource) works too; its scope bounds the next.
    let for_fts = idp.refresh(
        "tm-basic",
        &rt,
        Some("compute.read profile"),
        Some("https://fts.example.org"),
    );
    let jwt = token(&for_fts, "access_token").to_owned();
    let reply = idp.token_exchange("tm-basic", &jwt, Some(ACCESS_TOKEN), Some(ce), None);
    let claims = jwt_claims(token(&reply, "access_token")).unwrap();
    assert_eq!(claims["aud"], ce);
    let mut scope: Vec<&str> = claims["scope"].as_str().unwrap().split(' ').collect();
    scope.sort_unstable();
    assert_eq!(
        scope,
        ["compute.read", "profile"],
        "the subject token's scope"
    );
    assert_refused(
        &idp.token_exchange(
            "tm-basic",
            &jwt,
            Some(ACCESS_TOKEN),
            Some(ce),
            Some("compute.read storage.read"),
        ),
        "invalid_scope",
    );

    // The refusals.
    assert_refused(
        &idp.token_exchange("tm-basic", &opaque, None, Some(ce), None),
        "invalid_request",
    );
    assert_refused(
        &idp.token_exchange(
            "tm-basic",
            &opaque,
            Some("urn:x:refresh_token"),
            Some(ce),
            None,
        ),
        "invalid_request",
    );
    assert_refused(
        &idp.token_exchange(
            "tm-basic",
            &opaque,
            Some(ACCESS_TOKEN),
            Some("http://ce.example.org"),
            None,
        ),
        "invalid_target",
    );
    assert_refused(
        &idp.token_exchange(
            "tm-basic",
            "no-such-token",
            Some(ACCESS_TOKEN),
            Some(ce),
            None,
        ),
        "invalid_grant",
    );
    let mut forged = jwt.clone().into_bytes();
    let inside_signature = jwt.rfind('.').unwrap() + 10;
    forged[inside_signature] = if forged[inside_signature] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let forged = String::from_utf8(forged).unwrap();
    assert_refused(
        &idp.token_exchange("tm-basic", &forged, Some(ACCESS_TOKEN), Some(ce), None),
        "invalid_grant",
    );
    assert!(
        idp.revoke("tm-basic", &opaque, Some("access_token"))
            .is_ok()
    );
    assert_refused(
        &idp.token_exchange("tm-basic", &opaque, Some(ACCESS_TOKEN), Some(ce), None),
        "invalid_grant",
    );

    let stats = idp.stats();
    assert_eq!(stats.exchanges_total(), 9);
    assert_eq!(stats.exchanges_for(ce), 8);
    assert_eq!(
        (
            stats.exchange_errors("invalid_grant"),
            stats.exchange_errors("invalid_request")
        ),
        (3, 2)
    );
    assert_eq!(
        (
            stats.exchange_errors("invalid_target"),
            stats.exchange_errors("invalid_scope")
        ),
        (1, 1)
    );
    assert_eq!(stats.refreshes_with_audience("erin"), 1);
    let subjects = |format: &str| stats.exchange_subjects.get(format).copied();
    assert_eq!(
        (subjects("opaque"), subjects("jwt")),
        (Some(1), Some(2)),
        "{stats:?}"
    );
    assert!(
        idp.grant_alive("erin"),
        "a refused exchange consumes nothing"
    );
}

#[test]
fn idp_default_resource_makes_refreshed_access_tokens_jwts() {
    let idp = TestIdp::spawn();
    let minted = idp.grant("frank", USER_SCOPE);
    idp.set_default_resource(Some("https://broad.example.org"));
    let reply = idp.refresh("tm-basic", &minted.refresh_token, None, None);
    let claims = jwt_claims(token(&reply, "access_token")).expect("a JWT access token");
    assert_eq!(claims["aud"], "https://broad.example.org");
    assert_eq!(idp.stats().refreshes_with_audience("frank"), 0);
    idp.set_default_resource(None);
    let rt = token(&reply, "refresh_token");
    let reply = idp.refresh("tm-basic", rt, None, None);
    assert!(jwt_claims(token(&reply, "access_token")).is_none());
}
