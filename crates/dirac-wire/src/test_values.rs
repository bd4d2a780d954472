//! Values shared by the round-trip tests of several codecs.

use super::Value;

fn s(text: &str) -> Value {
    Value::Str(text.into())
}

/// A spread of values that every codec must carry unchanged (no `Time`,
/// no tuples, no non-string keys: JSON cannot keep those).
pub(super) fn json_safe_values() -> Vec<Value> {
    let mut out = vec![
        Value::None,
        Value::Bool(true),
        Value::Int(0),
        Value::Int(i64::MIN),
        Value::Int(i64::MAX),
        Value::BigInt("-9223372036854775809".into()),
        Value::BigInt("1180591620717411303424".into()),
        Value::Float(0.1),
        Value::Float(-0.0),
        Value::Float(1e300),
        Value::Float(f64::INFINITY),
        Value::Float(1e-5),
        s(""),
        s("héllo \u{1F600} \"quoted\" \\ \n\t\u{7f}\u{2028}"),
        Value::Bytes(vec![0, 0xff, 0x80]),
        Value::List(vec![]),
        Value::Dict(vec![]),
        Value::DateTime {
            year: 2024,
            month: 2,
            day: 29,
            hour: 23,
            minute: 59,
            second: 59,
            microsecond: 0,
        },
        Value::Date {
            year: 1999,
            month: 12,
            day: 31,
        },
    ];
    let nested = Value::Dict(vec![
        (s("list"), Value::List(out.clone())),
        (
            s("inner"),
            Value::Dict(vec![(s("a"), Value::List(vec![Value::Int(1)]))]),
        ),
    ]);
    out.push(Value::s_ok(nested));
    out.push(Value::s_error(13, "Permission denied"));
    out
}

/// Values only DEncode keeps: tuples, non-string keys, times, microseconds.
pub(super) fn sample_values() -> Vec<Value> {
    let mut out = json_safe_values();
    out.extend([
        Value::Tuple(vec![Value::Int(1), s("a"), Value::Tuple(vec![])]),
        Value::Dict(vec![
            (Value::Int(1), Value::None),
            (Value::Float(2.5), Value::Bool(false)),
            (
                Value::Tuple(vec![Value::Int(1), s("x")]),
                Value::List(vec![]),
            ),
            (Value::None, Value::Int(3)),
        ]),
        Value::Time {
            hour: 23,
            minute: 0,
            second: 1,
            microsecond: 999_999,
        },
        Value::DateTime {
            year: 1,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            microsecond: 5,
        },
        Value::Float(1.5e-7),
    ]);
    out
}
