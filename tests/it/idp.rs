//! A real OpenID provider for the tests: `tests/idp/server.mjs` (oidc-provider, see
//! tests/idp/README.md) run by node on 127.0.0.1, strict like a production IdP (refresh tokens
//! rotate on every use; presenting a consumed one revokes the whole grant), with test-only
//! control endpoints under `/test/`. Needs `npm ci --prefix tests/idp` once.

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
    /// RFC 8693 token exchanges by `"<client_id> <audience> <scope>"` (absent parts empty).
    pub token_exchanges: BTreeMap<String, u64>,
    /// Token exchanges the IdP refused, by error code.
    pub exchange_errors: BTreeMap<String, u64>,
    /// Token exchanges whose subject token was resolved, by its format (`opaque`, `jwt`).
    pub exchange_subjects: BTreeMap<String, u64>,
    /// Refreshes whose request named an audience or resource, by sub.
    pub refreshes_with_audience: BTreeMap<String, u64>,
    /// Requests for the discovery document.
    pub discovery: u64,
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
            token_exchanges: counts(&raw["token_requests"]["token_exchange"]),
            exchange_errors: counts(&raw["exchange_errors"]),
            exchange_subjects: counts(&raw["exchange_subjects"]),
            refreshes_with_audience: counts(&raw["refreshes_with_audience"]),
            discovery: number("discovery"),
        }
    }

    pub fn exchanges_total(&self) -> u64 {
        self.token_exchanges.values().sum()
    }

    /// Token exchanges asking for `audience`, whatever the client and scope.
    pub fn exchanges_for(&self, audience: &str) -> u64 {
        self.token_exchanges
            .iter()
            .filter(|(key, _)| key.split(' ').nth(1) == Some(audience))
            .map(|(_, n)| n)
            .sum()
    }

    /// Token exchanges refused with `error`.
    pub fn exchange_errors(&self, error: &str) -> u64 {
        self.exchange_errors.get(error).copied().unwrap_or(0)
    }

    /// Refreshes of `sub` that named an audience or resource.
    pub fn refreshes_with_audience(&self, sub: &str) -> u64 {
        self.refreshes_with_audience.get(sub).copied().unwrap_or(0)
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

    /// Refreshes and client_credentials requests that name no resource are processed as if they
    /// named `resource` (their access tokens are then JWTs with that `aud`); `None`: opaque
    /// access tokens again (the default).
    pub fn set_default_resource(&self, resource: Option<&str>) {
        self.control(
            "POST",
            "/test/default-resource",
            Some(json!({ "resource": resource })),
        );
    }

    /// Lifetime of access tokens (user and client_credentials) issued from now on; default 3600.
    pub fn set_access_token_ttl(&self, secs: u64) {
        self.control("POST", "/test/ttl", Some(json!({"access_token": secs})));
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

    /// An RFC 8693 token exchange of `subject_token` (of type `subject_token_type`) at the real
    /// token endpoint, the audience as `audience`.
    pub fn token_exchange(
        &self,
        client: &str,
        subject_token: &str,
        subject_token_type: Option<&str>,
        audience: Option<&str>,
        scope: Option<&str>,
    ) -> Result<Value, (u16, Value)> {
        let mut params = vec![
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", subject_token),
        ];
        for (name, value) in [
            ("subject_token_type", subject_token_type),
            ("audience", audience),
            ("scope", scope),
        ] {
            if let Some(value) = value {
                params.push((name, value));
            }
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

/// The harness's own tests.
mod tests;
