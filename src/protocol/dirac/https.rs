//! DIRAC's HTTPS protocol (docs/DIRAC.md#https-tornado): `POST /<System>/<Service>` with form
//! fields `method`, `args` (a JEncoded list), `extraCredentials`; every method result, errors
//! included, is HTTP 200 with a JEncoded S_OK/S_ERROR. Framework failures use the status codes
//! DIRAC's client keys on (docs/DIRAC.md#https-replies-and-status-codes): 400 no method, 401 no
//! credentials or refused, 405 not POST, 501 unknown method.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, web};
use dirac_wire::{Value, form, jencode};

use super::{answer, extra_credentials};
use crate::domain::audit::Protocol;
use crate::domain::policy::ExtraCredentials;
use crate::metrics::Metrics;
use crate::service::{CallContext, ErrorCode, Method, MethodError, Service};
use crate::transport::{self, BodyError, BodyLimits, LocalAddress};
use crate::x509::identity::ChainIdentity;

const PROTOCOL: &str = "https";

/// The routes of every configured `HTTPSPaths` entry.
pub fn routes(paths: Vec<String>) -> impl Fn(&mut web::ServiceConfig) {
    move |config| {
        for path in &paths {
            config.service(
                web::resource(path.as_str())
                    .route(web::post().to(call))
                    .default_service(web::to(|| async {
                        framework_error(StatusCode::METHOD_NOT_ALLOWED)
                    })),
            );
        }
    }
}

/// Tornado's bare HTML error page; DIRAC's client only looks at the status.
pub fn framework_error(status: StatusCode) -> HttpResponse {
    let line = format!(
        "{}: {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    HttpResponse::build(status)
        .content_type("text/html; charset=UTF-8")
        .body(format!(
            "<html><title>{line}</title><body>{line}</body></html>"
        ))
}

async fn call(
    request: HttpRequest,
    payload: web::Payload,
    service: web::Data<Arc<Service>>,
) -> HttpResponse {
    match handle(&request, payload, &service).await {
        Ok(reply) => {
            let body = jencode::encode(&reply).unwrap_or_else(|error| {
                // Only a `datetime.time` cannot be JEncoded, and no method returns one.
                tracing::error!(%error, "cannot encode a reply");
                br#"{"OK": false, "Errno": 0, "Message": "Server error while encoding the reply"}"#
                    .to_vec()
            });
            let mut response = HttpResponse::Ok();
            response
                .insert_header(ContentType::json())
                .insert_header((header::VARY, "Accept-Encoding"));
            match gzipped(&request, &body) {
                Some(compressed) => response
                    .insert_header((header::CONTENT_ENCODING, "gzip"))
                    .body(compressed),
                None => response.body(body),
            }
        }
        Err(status) => framework_error(status),
    }
}

/// Tornado (`compress_response`) gzips replies of at least this many bytes for clients that
/// accept it; DIRAC's client does, and token lists compress well.
const GZIP_MIN_BYTES: usize = 1024;

/// `body` gzipped, when the client accepts gzip and the body is worth it.
fn gzipped(request: &HttpRequest, body: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let accepts_gzip = request
        .headers()
        .get_all(header::ACCEPT_ENCODING)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            // `gzip;q=0` refuses it.
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        });
    if !accepts_gzip || body.len() < GZIP_MIN_BYTES {
        return None;
    }
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 2),
        flate2::Compression::fast(),
    );
    encoder.write_all(body).ok()?;
    encoder.finish().ok()
}

/// The S_OK/S_ERROR to send with HTTP 200, or the framework status that replaces it.
async fn handle(
    request: &HttpRequest,
    payload: web::Payload,
    service: &Service,
) -> Result<Value, StatusCode> {
    let settings = service.settings();
    // `method` is in the body: the caller's credentials decide how much body it may send.
    let identified = request
        .conn_data::<Option<Arc<ChainIdentity>>>()
        .is_some_and(Option::is_some)
        || bearer_token(request).is_some();
    let limits = BodyLimits::for_caller(&settings, identified);
    let body = transport::read_body(request, payload, limits)
        .await
        .map_err(|error| match error {
            BodyError::TooLarge(_) => {
                record_refusal(service.metrics(), "unknown", ErrorCode::BodyTooLarge);
                StatusCode::PAYLOAD_TOO_LARGE
            }
            BodyError::Timeout(_) => {
                record_refusal(service.metrics(), "unknown", ErrorCode::RequestTimeout);
                StatusCode::REQUEST_TIMEOUT
            }
            BodyError::Read(_) => StatusCode::BAD_REQUEST,
        })?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let query_fields = form::parse_query(request.query_string()).map_err(|error| {
        tracing::info!(%error, "refusing an HTTPS call with a malformed query string");
        StatusCode::BAD_REQUEST
    })?;
    let body_fields = if body.is_empty() {
        Vec::new()
    } else {
        form::parse_form(content_type, &body).map_err(|error| {
            tracing::info!(%error, "refusing an HTTPS call with a malformed body");
            StatusCode::BAD_REQUEST
        })?
    };
    // Tornado: `method` from the query string or the body (the body's last value wins),
    // `args` and `extraCredentials` from the body only.
    let method = last(&body_fields, "method")
        .or_else(|| last(&query_fields, "method"))
        .ok_or(StatusCode::BAD_REQUEST)?;
    if Method::from_name(method).is_none() {
        record_refusal(service.metrics(), "unknown", ErrorCode::UnknownMethod);
        return Err(StatusCode::NOT_IMPLEMENTED);
    }

    let context = caller(request, service, last(&body_fields, "extraCredentials")).await?;
    let access = match service.check_access(&context, method) {
        Ok(access) => access,
        Err(error) => {
            record_refusal(service.metrics(), method, error.code());
            return Err(StatusCode::UNAUTHORIZED);
        }
    };
    let args = match last(&body_fields, "args") {
        None => Vec::new(),
        Some(text) => match jencode::decode(text.as_bytes()) {
            Ok(Value::List(args) | Value::Tuple(args)) => args,
            Ok(other) => {
                return Ok(Value::s_error(
                    0,
                    format!(
                        "Error in parameter check: args must be a list, not {}",
                        other.python_type()
                    ),
                ));
            }
            Err(error) => {
                return Ok(Value::s_error(
                    0,
                    format!("Error in parameter check: {error}"),
                ));
            }
        },
    };
    // The URL the client used, as DIRAC's ping reports it: its Host header, else our address.
    let url = || {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| request.conn_data::<LocalAddress>().map(|a| a.0.to_string()))
            .unwrap_or_default();
        format!("https://{host}{}", request.path())
    };
    Ok(answer(service, access, &context, method, args, PROTOCOL, &url).await)
}

fn last<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .rev()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.trim())
}

/// DIRAC tries the TLS client certificate first, then a bearer token
/// (docs/DIRAC.md#who-an-https-caller-is); neither → 401. `extraCredentials` only counts with a
/// certificate.
async fn caller(
    request: &HttpRequest,
    service: &Service,
    extra: Option<&str>,
) -> Result<CallContext, StatusCode> {
    let ip = request.peer_addr().map(|a| a.ip());
    if let Some(certificate) = request
        .conn_data::<Option<Arc<ChainIdentity>>>()
        .cloned()
        .flatten()
    {
        let extra_credentials = match extra.filter(|e| !e.is_empty()) {
            None => ExtraCredentials::None,
            Some(text) => match jencode::decode(text.as_bytes()) {
                Ok(value) => extra_credentials(&value),
                Err(_) => ExtraCredentials::Invalid,
            },
        };
        return Ok(CallContext {
            certificate: Some(certificate),
            bearer: None,
            extra_credentials,
            ip,
            protocol: Protocol::Https,
        });
    }
    let token = bearer_token(request).ok_or_else(|| {
        record_refusal(service.metrics(), "unknown", ErrorCode::Unauthenticated);
        StatusCode::UNAUTHORIZED
    })?;
    let bearer = service
        .bearer_caller(token)
        .await
        .map_err(|error: MethodError| {
            record_refusal(service.metrics(), "unknown", error.code());
            StatusCode::UNAUTHORIZED
        })?;
    Ok(CallContext {
        certificate: None,
        bearer: Some(bearer),
        extra_credentials: ExtraCredentials::None,
        ip,
        protocol: Protocol::Https,
    })
}

/// DIRAC wants exactly two words, the first `bearer` in any case.
fn bearer_token(request: &HttpRequest) -> Option<&str> {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let mut words = header.split_whitespace();
    let (scheme, token) = (words.next()?, words.next()?);
    (scheme.eq_ignore_ascii_case("bearer") && words.next().is_none()).then_some(token)
}

fn record_refusal(metrics: &Metrics, method: &str, code: ErrorCode) {
    super::record_refusal(metrics, method, PROTOCOL, code.as_str());
}
