//! A real OpenID provider for the tests: `tests/idp/server.mjs` (oidc-provider, see
//! tests/idp/README.md) run by node on 127.0.0.1, strict like a production IdP (refresh tokens
//! rotate on every use; presenting a consumed one revokes the whole grant), with test-only
//! control endpoints under `/test/`. Needs `npm ci --prefix tests/idp` once.

// Not every helper is used by this module's own tests.
#![expect(
    dead_code,
    reason = "not every helper is used by this module's own tests"
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client::{Client, DEFAULT_TIMEOUT, Request, form_encode_component};

/// The confidential clients the IdP knows: (client_id, secret, token_endpoint_auth_method).
/// The IdP accepts only the registered authentication method for each.
pub const CLIENTS: [(&str, &str, &str); 2] = [
    ("tm-basic", "tm-basic-secret", "client_secret_basic"),
    ("tm-post", "tm-post-secret", "client_secret_post"),
];

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The secret of one of [`CLIENTS`].
pub fn client_secret(client: &str) -> &'static str {
    CLIENTS
        .iter()
        .find(|(id, _, _)| *id == client)
        .map(|(_, secret, _)| *secret)
        .unwrap_or_else(|| panic!("the test IdP has no client {client:?}"))
}

/// A running test IdP; dropping it kills the node process.
pub struct TestIdp {
    child: Child,
    // Kept open: the server exits when its stdin closes (`--exit-with-stdin`), so it dies with
    // the test process even when Drop does not run.
    _stdin: Option<ChildStdin>,
    port: u16,
    stderr: Arc<Mutex<String>>,
}

/// A grant minted by `POST /test/grant`, as if the user had logged in.
#[derive(Debug, Clone)]
pub struct MintedGrant {
    pub refresh_token: String,
    pub access_token: String,
    pub expires_in: u64,
    pub grant_id: String,
}

/// `GET /test/stats`: token-endpoint requests as they arrived (before any processing).
#[derive(Debug, Clone, Default)]
pub struct IdpStats {
    /// Refresh requests by the sub owning the presented refresh token (`<unknown>` if none).
    pub refresh_requests: BTreeMap<String, u64>,
    /// client_credentials requests by `"<client_id> <scope> <resource>"` (absent parts empty).
    pub client_credentials: BTreeMap<String, u64>,
    /// Requests to the revocation endpoint.
    pub revocations: u64,
    /// Refreshes that the IdP answered with an error (>= 400), by sub; injected failures are not
    /// counted here (see `injected_failures`).
    pub refresh_errors: BTreeMap<String, u64>,
    /// Token-endpoint requests answered by `/test/fail` instead of being processed.
    pub injected_failures: u64,
    /// Refreshes processed whose reply was dropped (`/test/drop-reply`).
    pub dropped_replies: u64,
    /// Held refreshes whose client closed the connection before the release (not processed).
    pub abandoned_holds: u64,
    pub introspections: u64,
    /// `GET /.well-known/openid-configuration` requests.
    pub discovery: u64,
    /// The whole answer, including other grant types under `token_requests`.
    pub raw: Value,
}

impl IdpStats {
    fn from_json(raw: Value) -> Self {
        let counts = |v: &Value| -> BTreeMap<String, u64> {
            v.as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default()
        };
        let number = |k: &str| raw[k].as_u64().unwrap_or(0);
        IdpStats {
            refresh_requests: counts(&raw["token_requests"]["refresh_token"]),
            client_credentials: counts(&raw["token_requests"]["client_credentials"]),
            revocations: number("revocations"),
            refresh_errors: counts(&raw["refresh_errors"]),
            injected_failures: number("injected_failures"),
            dropped_replies: number("dropped_replies"),
            abandoned_holds: number("abandoned_holds"),
            introspections: number("introspections"),
            discovery: number("discovery"),
            raw,
        }
    }

    /// Refresh requests presenting a refresh token of `sub`.
    pub fn refreshes(&self, sub: &str) -> u64 {
        self.refresh_requests.get(sub).copied().unwrap_or(0)
    }

    pub fn refreshes_total(&self) -> u64 {
        self.refresh_requests.values().sum()
    }

    /// Refreshes of `sub` that the IdP rejected.
    pub fn refresh_errors(&self, sub: &str) -> u64 {
        self.refresh_errors.get(sub).copied().unwrap_or(0)
    }

    pub fn client_credentials_total(&self) -> u64 {
        self.client_credentials.values().sum()
    }

    /// client_credentials requests with exactly this client, scope and resource.
    pub fn client_credentials_count(
        &self,
        client: &str,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> u64 {
        let key = format!(
            "{client} {} {}",
            scope.unwrap_or(""),
            resource.unwrap_or("")
        );
        self.client_credentials.get(&key).copied().unwrap_or(0)
    }

    pub fn revocations(&self) -> u64 {
        self.revocations
    }
}

impl TestIdp {
    /// Starts `node tests/idp/server.mjs --port 0` and waits (up to 30 s) until it listens.
    /// The node binary is `$TOKENMANAGER_TEST_NODE`, else `node` on the PATH.
    pub fn spawn() -> TestIdp {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/idp");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "the test IdP is not installed: run `npm ci --prefix tests/idp` (in {})",
            env!("CARGO_MANIFEST_DIR")
        );
        let node = std::env::var("TOKENMANAGER_TEST_NODE").unwrap_or_else(|_| "node".into());
        let mut child = Command::new(&node)
            .arg(dir.join("server.mjs"))
            .args(["--port", "0", "--exit-with-stdin"])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {node:?} for the test IdP: {e}"));

        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_thread = {
            let pipe = child.stderr.take().unwrap();
            let sink = Arc::clone(&stderr);
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut text = sink.lock().unwrap();
                    text.push_str(&line);
                    text.push('\n');
                }
            })
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        {
            let pipe = child.stdout.take().unwrap();
            thread::spawn(move || {
                let mut lines = BufReader::new(pipe).lines();
                if let Some(Ok(first)) = lines.next() {
                    let _ = ready_tx.send(first);
                }
                // Keep draining, so that the server never blocks on a full pipe.
                for _ in lines {}
            });
        }

        let line = match ready_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                let _ = stderr_thread.join();
                let why = match e {
                    mpsc::RecvTimeoutError::Timeout => "did not start within 30 s",
                    mpsc::RecvTimeoutError::Disconnected => "exited before listening",
                };
                panic!(
                    "the test IdP {why} ({status:?}); its stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        let port = line
            .strip_prefix("test-idp listening ")
            .and_then(|p| p.trim().parse::<u16>().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("unexpected first line from the test IdP: {line:?}")
            });
        let stdin = child.stdin.take();
        TestIdp {
            child,
            _stdin: stdin,
            port,
            stderr,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`, also the base of every endpoint.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer())
    }

    pub fn revocation_endpoint(&self) -> String {
        format!("{}/token/revocation", self.issuer())
    }

    /// What the server printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    // --- control endpoints ---------------------------------------------------------------

    fn control(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let mut request = Request::new(method, path);
        if let Some(body) = body {
            request = request.json(&body.to_string());
        }
        match Client::http().send(self.port, &request) {
            Ok(reply) if reply.status == 200 => serde_json::from_slice(&reply.body)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", reply.text())),
            Ok(reply) => panic!(
                "{method} {path}: HTTP {}: {}\nIdP stderr:\n{}",
                reply.status,
                reply.text(),
                self.stderr()
            ),
            Err(e) => panic!("{method} {path}: {e}\nIdP stderr:\n{}", self.stderr()),
        }
    }

    /// Mints a grant and its first refresh token for `sub` with client `tm-basic`, as if the
    /// user had logged in. Its refresh tokens accept any `https://` resource on refresh.
    pub fn grant(&self, sub: &str, scope: &str) -> MintedGrant {
        self.mint(json!({"sub": sub, "scope": scope, "client_id": "tm-basic"}))
    }

    /// [`TestIdp::grant`] for another client (the refresh token then works only with it).
    pub fn grant_for(&self, client: &str, sub: &str, scope: &str) -> MintedGrant {
        self.mint(json!({"sub": sub, "scope": scope, "client_id": client}))
    }

    /// A grant bound to these resources (RFC 8707, as oidc-provider ships it): a refresh asking
    /// for any other resource fails with `invalid_target`, after consuming the refresh token.
    pub fn grant_with_resources(&self, sub: &str, scope: &str, resources: &[&str]) -> MintedGrant {
        self.mint(
            json!({"sub": sub, "scope": scope, "client_id": "tm-basic", "resources": resources}),
        )
    }

    fn mint(&self, body: Value) -> MintedGrant {
        let v = self.control("POST", "/test/grant", Some(body));
        let text = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("/test/grant: no {k} in {v}"))
                .to_owned()
        };
        MintedGrant {
            refresh_token: text("refresh_token"),
            access_token: text("access_token"),
            expires_in: v["expires_in"].as_u64().unwrap_or(0),
            grant_id: text("grant_id"),
        }
    }

    pub fn stats(&self) -> IdpStats {
        IdpStats::from_json(self.control("GET", "/test/stats", None))
    }

    pub fn reset_stats(&self) {
        self.control("POST", "/test/reset-stats", Some(json!({})));
    }

    /// The next `count` token-endpoint requests get HTTP `status` (body
    /// `{"error":"server_error",...}`) without being processed.
    pub fn fail_next(&self, count: u32, status: u16) {
        self.control(
            "POST",
            "/test/fail",
            Some(json!({"count": count, "status": status})),
        );
    }

    /// Refreshes of `sub` wait (no response) until [`TestIdp::release`], then are processed. A
    /// client that gives up meanwhile (closes the connection) takes its request back: it is
    /// never processed, its refresh token stays valid (see `IdpStats::abandoned_holds`).
    pub fn hold(&self, sub: &str) {
        self.control("POST", "/test/hold", Some(json!({"sub": sub})));
    }

    /// Like [`TestIdp::hold`], but requests whose client gave up are still processed on release
    /// (the refresh token is consumed and the reply lost), as an IdP that is merely slow would.
    pub fn hold_processing_abandoned(&self, sub: &str) {
        self.control(
            "POST",
            "/test/hold",
            Some(json!({"sub": sub, "process_abandoned": true})),
        );
    }

    pub fn release(&self, sub: &str) {
        self.control("POST", "/test/release", Some(json!({"sub": sub})));
    }

    /// Requests held right now.
    pub fn held(&self) -> u64 {
        self.control("GET", "/test/held", None)["held"]
            .as_u64()
            .unwrap()
    }

    /// Waits until exactly `n` requests are held; panics after `timeout`.
    pub fn wait_until_held(&self, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let held = self.held();
            if held == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{held} requests held at the test IdP, expected {n}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until a held request's client has gone and the IdP took the request back
    /// unprocessed ([`IdpStats::abandoned_holds`]); panics after `timeout`. Releasing before
    /// would process it.
    pub fn wait_until_abandoned(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.stats().abandoned_holds == 0 {
            assert!(
                Instant::now() < deadline,
                "no held request was abandoned: its connection was never closed"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The next refresh of `sub` is processed (the token rotates, the old one is consumed) but
    /// the connection is then closed without a reply.
    pub fn drop_reply(&self, sub: &str) {
        self.control("POST", "/test/drop-reply", Some(json!({"sub": sub})));
    }

    /// Delays every token-endpoint request by `ms` before processing (0: none).
    pub fn latency(&self, ms: u64) {
        self.control("POST", "/test/latency", Some(json!({"ms": ms})));
    }

    /// Whether the newest grant minted for `sub` still exists (not revoked).
    pub fn grant_alive(&self, sub: &str) -> bool {
        let path = format!("/test/grant-status?sub={}", form_encode_component(sub));
        self.control("GET", &path, None)["alive"].as_bool().unwrap()
    }

    /// Lifetime of access tokens (user and client_credentials) issued from now on; default 3600.
    pub fn set_access_token_ttl(&self, secs: u64) {
        self.control("POST", "/test/ttl", Some(json!({"access_token": secs})));
    }

    /// Lifetime of refresh tokens issued from now on (minted or rotated); default 14 days.
    pub fn set_refresh_token_ttl(&self, secs: u64) {
        self.control("POST", "/test/ttl", Some(json!({"refresh_token": secs})));
    }

    // --- the real OAuth2 endpoints -----------------------------------------------------------

    /// POSTs a form to an endpoint with `client`'s authentication (its registered method).
    /// `Err((0, {"error": "connection", ...}))` when no HTTP reply arrived.
    pub fn post_form(
        &self,
        path: &str,
        client: &str,
        params: &[(&str, &str)],
    ) -> Result<Value, (u16, Value)> {
        self.post_form_timeout(path, client, params, DEFAULT_TIMEOUT)
    }

    /// [`TestIdp::post_form`] that gives up (closing the connection) after `timeout`.
    pub fn post_form_timeout(
        &self,
        path: &str,
        client: &str,
        params: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Value, (u16, Value)> {
        let secret = client_secret(client);
        let mut fields: Vec<(&str, &str)> = params.to_vec();
        let request = if client == "tm-post" {
            fields.push(("client_id", client));
            fields.push(("client_secret", secret));
            Request::post(path).form(&fields)
        } else {
            // RFC 6749 form-encodes the client id and secret inside Basic too.
            Request::post(path).form(&fields).basic_auth(
                &form_encode_component(client),
                &form_encode_component(secret),
            )
        };
        match Client::http().timeout(timeout).send(self.port, &request) {
            Ok(reply) => {
                let value = if reply.body.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&reply.body)
                        .unwrap_or_else(|_| Value::String(reply.text()))
                };
                if (200..300).contains(&reply.status) {
                    Ok(value)
                } else {
                    Err((reply.status, value))
                }
            }
            Err(e) => Err((0, json!({"error": "connection", "detail": e.to_string()}))),
        }
    }

    /// A `refresh_token` grant at the real token endpoint.
    pub fn refresh(
        &self,
        client: &str,
        refresh_token: &str,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> Result<Value, (u16, Value)> {
        let mut params = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        if let Some(scope) = scope {
            params.push(("scope", scope));
        }
        if let Some(resource) = resource {
            params.push(("resource", resource));
        }
        self.post_form("/token", client, &params)
    }

    /// A refresh (no scope, no resource) that gives up after `timeout`, closing the connection.
    pub fn refresh_with_timeout(
        &self,
        client: &str,
        refresh_token: &str,
        timeout: Duration,
    ) -> Result<Value, (u16, Value)> {
        let params = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        self.post_form_timeout("/token", client, &params, timeout)
    }

    /// A `client_credentials` grant at the real token endpoint.
    pub fn client_credentials(
        &self,
        client: &str,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> Result<Value, (u16, Value)> {
        let mut params = vec![("grant_type", "client_credentials")];
        if let Some(scope) = scope {
            params.push(("scope", scope));
        }
        if let Some(resource) = resource {
            params.push(("resource", resource));
        }
        self.post_form("/token", client, &params)
    }

    /// RFC 7009 revocation; revoking a refresh token revokes its whole grant.
    pub fn revoke(
        &self,
        client: &str,
        token: &str,
        hint: Option<&str>,
    ) -> Result<Value, (u16, Value)> {
        let mut params = vec![("token", token)];
        if let Some(hint) = hint {
            params.push(("token_type_hint", hint));
        }
        self.post_form("/token/revocation", client, &params)
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The claims of a JWT (its payload, not verified); `None` for an opaque token.
pub fn jwt_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    serde_json::from_slice(&base64url_decode(payload)?).ok()
}

fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().take_while(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

// --- the harness's own tests -----------------------------------------------------------------

#[cfg(test)]
mod tests {
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
            stats.client_credentials_count(
                "tm-basic",
                Some("compute.read"),
                Some("https://a.example")
            ),
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
}
