//! The JSON API: `POST /api/v1/<method>` with a JSON object of named arguments, answered with
//! `{"ok": true, "value": …}` or `{"ok": false, "code": "<stable code>", "message": …}`.

mod openapi;

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header::ContentType;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value, json};

use crate::domain::audit::Protocol;
use crate::domain::policy::ExtraCredentials;
use crate::metrics::Metrics;
use crate::service::{CallContext, ErrorCode, Method, MethodError, Service};
use crate::transport::{self, BodyError, BodyLimits};
use crate::x509::identity::ChainIdentity;

const PROTOCOL: &str = "json";

/// The routes of the JSON API, for the HTTPS listener's `App`. One static path per method: a
/// `{method}` pattern is matched by a regex, which cost 7 % of the server's CPU on getToken hits.
pub fn routes(config: &mut web::ServiceConfig) {
    config.route("/api/v1/openapi.json", web::get().to(openapi::document));
    for method in Method::ALL {
        config.service(
            web::resource(format!("/api/v1/{}", method.name()))
                .route(web::post().to(
                    move |request: HttpRequest,
                          payload: web::Payload,
                          service: web::Data<Arc<Service>>| {
                        call(method, request, payload, service)
                    },
                ))
                .default_service(web::to(method_not_allowed)),
        );
    }
    config
        .route("/api/v1/{method}", web::post().to(unknown_method))
        .route("/api/v1/{method}", web::to(method_not_allowed));
}

/// An error reply of the JSON API, with its code's HTTP status.
pub fn error_reply(code: ErrorCode, message: &str) -> HttpResponse {
    HttpResponse::build(code.http_status())
        .json(json!({"ok": false, "code": code.as_str(), "message": message}))
}

async fn method_not_allowed() -> HttpResponse {
    error_reply(ErrorCode::MethodNotAllowed, "use POST")
}

/// How a call failed: its code and message.
type Failure = (ErrorCode, String);

async fn unknown_method(
    method: web::Path<String>,
    service: web::Data<Arc<Service>>,
) -> HttpResponse {
    let message = format!("Unknown method {method}");
    let outcome = Err((ErrorCode::UnknownMethod, message));
    record(service.metrics(), "unknown", Instant::now(), outcome)
}

async fn call(
    method: Method,
    request: HttpRequest,
    payload: web::Payload,
    service: web::Data<Arc<Service>>,
) -> HttpResponse {
    let started = Instant::now();
    let outcome = answer(&request, method, payload, &service)
        .await
        .map_err(|(code, message)| (code.on_json_api(), message));
    record(service.metrics(), method.name(), started, outcome)
}

/// Counts and times the reply, then builds it.
fn record(
    metrics: &Metrics,
    method: &str,
    started: Instant,
    outcome: Result<Value, Failure>,
) -> HttpResponse {
    let code = outcome
        .as_ref()
        .err()
        .map_or("ok", |(code, _)| code.as_str());
    metrics.observe_request(method, PROTOCOL, code, started);
    match outcome {
        Ok(value) => {
            #[derive(serde::Serialize)]
            struct Answer<'a> {
                ok: bool,
                value: &'a Value,
            }
            // Written once into a buffer that fits a getToken reply (a JWT of ~700 characters).
            let mut body = Vec::with_capacity(1024);
            match serde_json::to_writer(
                &mut body,
                &Answer {
                    ok: true,
                    value: &value,
                },
            ) {
                Ok(()) => HttpResponse::Ok()
                    .content_type(ContentType::json())
                    .body(body),
                Err(error) => error_reply(
                    ErrorCode::Internal,
                    &format!("cannot encode the reply: {error}"),
                ),
            }
        }
        Err((code, message)) => error_reply(code, &message),
    }
}

async fn answer(
    request: &HttpRequest,
    method: Method,
    payload: web::Payload,
    service: &Service,
) -> Result<Value, Failure> {
    let certificate = request
        .conn_data::<Option<Arc<ChainIdentity>>>()
        .cloned()
        .flatten();
    let bearer = match bearer_token(request) {
        Some(token) => Some(
            service
                .bearer_caller(token)
                .await
                .map_err(|e| (e.code(), e.to_string()))?,
        ),
        None => None,
    };
    if certificate.is_none() && bearer.is_none() {
        return Err((
            ErrorCode::Unauthenticated,
            "a client certificate or a bearer token is required".into(),
        ));
    }
    let settings = service.settings();
    let body = transport::read_body(request, payload, BodyLimits::for_caller(&settings, true))
        .await
        .map_err(|error| match error {
            BodyError::TooLarge(_) => (ErrorCode::BodyTooLarge, error.to_string()),
            BodyError::Timeout(_) => (ErrorCode::RequestTimeout, error.to_string()),
            BodyError::Read(_) => (ErrorCode::BadRequest, error.to_string()),
        })?;
    let named = parse_arguments(&body)?;
    let args = method
        .named(named)
        .map_err(|message| (ErrorCode::BadArgument, message))?;

    // On the JSON API a host certificate identifies a host without DIRAC's extraCredentials.
    let is_host = certificate
        .as_ref()
        .is_some_and(|c| settings.registry.hostname_for_dn(&c.dn).is_some());
    let context = CallContext {
        certificate,
        bearer,
        extra_credentials: if is_host {
            ExtraCredentials::Hosts
        } else {
            ExtraCredentials::None
        },
        ip: request.peer_addr().map(|a| a.ip()),
        protocol: Protocol::Json,
    };
    service
        .call(&context, args)
        .await
        .map_err(|error: MethodError| (error.code(), error.to_string()))
}

/// The token of an `Authorization: Bearer …` header.
fn bearer_token(request: &HttpRequest) -> Option<&str> {
    let header = request
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// An empty body means no arguments; anything else must be a JSON object.
fn parse_arguments(body: &[u8]) -> Result<Map<String, Value>, Failure> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(named)) => Ok(named),
        Ok(_) => Err((
            ErrorCode::BadRequest,
            "the body must be a JSON object of named arguments".into(),
        )),
        Err(e) => Err((
            ErrorCode::MalformedJson,
            format!("the body is not valid JSON: {e}"),
        )),
    }
}
