//! DIRAC's two wire protocols, HTTPS ("Tornado", docs/DIRAC.md#https-tornado) and DISET
//! (`dips://`, docs/DIRAC.md#diset-dips), over the one method table. What they share lives here:
//! method names, `extraCredentials`, and the S_OK/S_ERROR reply of a call.

pub mod diset;
pub mod https;

use std::time::Instant;

use dirac_wire::Value;
use serde_json::Value as Json;

use crate::domain::policy::ExtraCredentials;
use crate::metrics::Metrics;
use crate::service::{Access, CallContext, ErrorCode, Method, MethodError, Service};

/// DIRAC's errno for a refused query (`DErrno.ENOAUTH`).
pub const ENOAUTH: i64 = 1111;

/// DIRAC's `extraCredentials` (docs/DIRAC.md#extra-credentials): `"hosts"`, `[DN, group]` (a list,
/// or a tuple from DEncode), or any other string, which DIRAC takes as a group.
pub fn extra_credentials(value: &Value) -> ExtraCredentials {
    match value {
        Value::None => ExtraCredentials::None,
        Value::Str(s) if s.is_empty() => ExtraCredentials::None,
        Value::Str(s) if s == "hosts" => ExtraCredentials::Hosts,
        Value::Str(s) => ExtraCredentials::Group(s.clone()),
        Value::List(items) | Value::Tuple(items) => match items.as_slice() {
            [Value::Str(dn), Value::Str(group)] => ExtraCredentials::Forwarded {
                dn: dn.clone(),
                group: group.clone(),
            },
            [] => ExtraCredentials::None,
            _ => ExtraCredentials::Invalid,
        },
        _ => ExtraCredentials::Invalid,
    }
}

/// What a DIRAC protocol answers for one call whose access was already checked: the method's
/// S_OK, or an S_ERROR with DIRAC's messages (argument checks included, as DISET words them).
/// `name` is the method the caller asked for; one we do not have gets DISET's message. `url` is
/// gives the service's URL as the caller reached it, which DIRAC's `ping` reports (only ping
/// pays for building it).
pub async fn answer(
    service: &Service,
    access: Access,
    context: &CallContext,
    name: &str,
    args: Vec<Value>,
    protocol: &'static str,
    url: &dyn Fn() -> String,
) -> Value {
    let started = Instant::now();
    let Some(method) = access.method() else {
        service.metrics().observe_request(
            "unknown",
            protocol,
            ErrorCode::UnknownMethod.as_str(),
            started,
        );
        return Value::s_error(0, format!("Unknown method {name}"));
    };
    let args: Vec<Json> = args.iter().map(Value::to_json).collect();
    let outcome = match access.positional(args) {
        Ok(call) => service.run(context, call).await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(value) => {
            service
                .metrics()
                .observe_request(method.name(), protocol, "ok", started);
            Value::s_ok(to_dirac(method, value, url))
        }
        Err(error) => {
            service.metrics().observe_request(
                method.name(),
                protocol,
                error.code().as_str(),
                started,
            );
            s_error(&error)
        }
    }
}

/// DIRAC's S_ERROR for a failed call: a refused access check is DIRAC's `Unauthorized query`
/// with errno ENOAUTH; any other failure carries its message with errno 0.
pub fn s_error(error: &MethodError) -> Value {
    let errno = match error {
        MethodError::Unauthorized(_) => ENOAUTH,
        MethodError::Refused { .. } => 0,
    };
    Value::s_error(errno, dirac_message(errno, &error.to_string()))
}

/// Counts a call refused before it ran (no credentials, a rule, a framework error): no latency
/// is recorded for it.
fn record_refusal(metrics: &Metrics, method: &str, protocol: &str, outcome: &str) {
    metrics
        .requests
        .with_label_values(&[method, protocol, outcome])
        .inc();
}

/// DIRAC's `S_ERROR(errno, text)` prefixes the errno's name: `"Unauthorized query ( 1111 :
/// Unauthorized query)"`. Errno 0 keeps the text as it is.
pub fn dirac_message(errno: i64, text: &str) -> String {
    match errno {
        ENOAUTH => format!("Unauthorized query ( {ENOAUTH} : {text})"),
        _ => text.to_owned(),
    }
}

/// The method table speaks JSON; DIRAC's `ping` sends its two times as datetimes, and the URL
/// after the name.
fn to_dirac(method: Method, value: Json, url: &dyn Fn() -> String) -> Value {
    let mut value = Value::from_json(value);
    if method == Method::Ping
        && let Value::Dict(entries) = &mut value
    {
        if let Some(after_name) = entries
            .iter()
            .position(|(k, _)| matches!(k, Value::Str(k) if k == "name"))
        {
            entries.insert(
                after_name + 1,
                (Value::Str("URL".into()), Value::Str(url())),
            );
        }
        for (key, entry) in entries.iter_mut() {
            let is_time = matches!(key, Value::Str(k) if k == "time" || k == "service start time");
            if let (true, Value::Str(text)) = (is_time, &*entry)
                && let Some(datetime) = parse_datetime(text)
            {
                *entry = datetime;
            }
        }
    }
    value
}

/// `YYYY-MM-DD HH:MM:SS`, the format of the service's UTC timestamps.
fn parse_datetime(text: &str) -> Option<Value> {
    let (date, time) = text.split_once(' ')?;
    let mut date = date.splitn(3, '-').map(str::parse::<u32>);
    let mut time = time.splitn(3, ':').map(str::parse::<u32>);
    let next = |parts: &mut dyn Iterator<Item = Result<u32, _>>| parts.next()?.ok();
    Some(Value::DateTime {
        year: next(&mut date)? as u16,
        month: next(&mut date)? as u8,
        day: next(&mut date)? as u8,
        hour: next(&mut time)? as u8,
        minute: next(&mut time)? as u8,
        second: next(&mut time)? as u8,
        microsecond: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_credentials_follow_dirac() {
        let s = |t: &str| Value::Str(t.into());
        assert_eq!(extra_credentials(&s("")), ExtraCredentials::None);
        assert_eq!(extra_credentials(&Value::None), ExtraCredentials::None);
        assert_eq!(extra_credentials(&s("hosts")), ExtraCredentials::Hosts);
        assert_eq!(
            extra_credentials(&s("g_user")),
            ExtraCredentials::Group("g_user".into())
        );
        let forwarded = ExtraCredentials::Forwarded {
            dn: "/CN=u".into(),
            group: "g".into(),
        };
        assert_eq!(
            extra_credentials(&Value::Tuple(vec![s("/CN=u"), s("g")])),
            forwarded
        );
        assert_eq!(
            extra_credentials(&Value::List(vec![s("/CN=u"), s("g")])),
            forwarded
        );
        assert_eq!(
            extra_credentials(&Value::List(vec![s("/CN=u")])),
            ExtraCredentials::Invalid
        );
        assert_eq!(extra_credentials(&Value::Int(3)), ExtraCredentials::Invalid);
    }

    #[test]
    fn ping_times_become_datetimes() {
        let ping = serde_json::json!({"time": "2026-11-28 13:17:02", "load": "0.1 0.2 0.3", "name": "F/T"});
        let Value::Dict(entries) = to_dirac(Method::Ping, ping, &|| "dips://h:1/F/T".to_owned())
        else {
            panic!("a dict")
        };
        assert!(matches!(
            entries[0].1,
            Value::DateTime {
                year: 2026,
                month: 11,
                day: 28,
                hour: 13,
                minute: 17,
                second: 2,
                ..
            }
        ));
        assert_eq!(entries[1].1, Value::Str("0.1 0.2 0.3".into()));
        assert_eq!(
            entries[3],
            (
                Value::Str("URL".into()),
                Value::Str("dips://h:1/F/T".into())
            )
        );
    }

    #[test]
    fn a_refused_access_check_is_diracs_unauthorized_query_and_other_failures_their_message() {
        let refused = s_error(&MethodError::Unauthorized(
            crate::domain::policy::Denied::InvalidUser,
        ));
        assert_eq!(
            refused,
            Value::s_error(ENOAUTH, "Unauthorized query ( 1111 : Unauthorized query)")
        );
        let method_check = s_error(&MethodError::new(
            ErrorCode::Forbidden,
            "You aren't allowed!",
        ));
        assert_eq!(method_check, Value::s_error(0, "You aren't allowed!"));
    }

    #[test]
    fn refusals_carry_diracs_errno_text() {
        assert_eq!(
            dirac_message(ENOAUTH, "Unauthorized query"),
            "Unauthorized query ( 1111 : Unauthorized query)"
        );
        assert_eq!(dirac_message(0, "No token found"), "No token found");
    }
}
