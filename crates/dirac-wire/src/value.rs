use std::borrow::Cow;
use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A value as DIRAC's Python code sees it after decoding a message.
///
/// `Dict` keeps insertion order and allows any key type, as DEncode does; the
/// decoders merge duplicate keys the way a Python `dict` would.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// Canonical decimal text (optional `-`, no leading zeros) of an integer
    /// outside the `i64` range; Python ints are unbounded.
    BigInt(String),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    DateTime {
        year: u16,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
        microsecond: u32,
    },
    Date {
        year: u16,
        month: u8,
        day: u8,
    },
    Time {
        hour: u8,
        minute: u8,
        second: u8,
        microsecond: u32,
    },
}

/// Returned by [`Value::ok_value`] for a missing `Value` key, which DIRAC
/// treats as `None`.
static NONE: Value = Value::None;

impl Value {
    /// `str(type(x))` in Python, as quoted in DISET's type-mismatch errors.
    pub fn python_type(&self) -> &'static str {
        match self {
            Value::None => "<class 'NoneType'>",
            Value::Bool(_) => "<class 'bool'>",
            Value::Int(_) | Value::BigInt(_) => "<class 'int'>",
            Value::Float(_) => "<class 'float'>",
            Value::Str(_) => "<class 'str'>",
            Value::Bytes(_) => "<class 'bytes'>",
            Value::List(_) => "<class 'list'>",
            Value::Tuple(_) => "<class 'tuple'>",
            Value::Dict(_) => "<class 'dict'>",
            Value::DateTime { .. } => "<class 'datetime.datetime'>",
            Value::Date { .. } => "<class 'datetime.date'>",
            Value::Time { .. } => "<class 'datetime.time'>",
        }
    }

    /// Bare Python type name, as used in `TypeError` texts.
    pub(super) fn type_name(&self) -> &'static str {
        match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::DateTime { .. } => "datetime",
            Value::Date { .. } => "date",
            Value::Time { .. } => "time",
        }
    }

    /// Python truthiness (`bool(x)`); JEncode's decoder branches on it.
    pub(super) fn is_truthy(&self) -> bool {
        match self {
            Value::None => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::Bytes(b) => !b.is_empty(),
            Value::List(v) | Value::Tuple(v) => !v.is_empty(),
            Value::Dict(d) => !d.is_empty(),
            Value::BigInt(_) | Value::DateTime { .. } | Value::Date { .. } | Value::Time { .. } => {
                true
            }
        }
    }

    /// `S_OK(value)`.
    pub fn s_ok(value: Value) -> Value {
        Value::Dict(vec![
            (Value::Str("OK".into()), Value::Bool(true)),
            (Value::Str("Value".into()), value),
        ])
    }

    /// The dict DIRAC's `S_ERROR` builds, with `message` taken verbatim (the
    /// caller formats `"<strerror> ( <errno> : <text>)"` where DIRAC does).
    pub fn s_error(errno: i64, message: impl Into<String>) -> Value {
        Value::Dict(vec![
            (Value::Str("OK".into()), Value::Bool(false)),
            (Value::Str("Errno".into()), Value::Int(errno)),
            (Value::Str("Message".into()), Value::Str(message.into())),
        ])
    }

    /// Looks up a string key in a dict (last occurrence wins, like a Python
    /// dict built from the same pairs).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .rev()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Reads a top-level S_OK/S_ERROR: `Ok(Value)` if `OK` is truthy, else
    /// `Err((Errno, Message))` with DIRAC's defaults (0, "") for missing keys.
    /// Something that is not a dict with an `OK` key is reported as an error
    /// with errno 0, as DIRAC clients do for malformed replies.
    pub fn ok_value(&self) -> Result<&Value, (i64, String)> {
        let Some(ok) = self.get("OK") else {
            return Err((0, "Not an S_OK/S_ERROR structure".into()));
        };
        if ok.is_truthy() {
            return Ok(self.get("Value").unwrap_or(&NONE));
        }
        let errno = match self.get("Errno") {
            Some(Value::Int(n)) => *n,
            _ => 0,
        };
        let message = match self.get("Message") {
            Some(Value::Str(m)) => m.clone(),
            _ => String::new(),
        };
        Err((errno, message))
    }

    /// Converts to plain JSON for a protocol-neutral method table.
    ///
    /// Lossy where JSON has no equivalent: tuples become arrays, dict keys
    /// become strings the way JEncode writes them (other key types: their
    /// JSON text), dates become `YYYY-MM-DD[ HH:MM:SS]` / `HH:MM:SS` strings,
    /// bytes become a string if UTF-8 else standard base64, NaN/±inf become
    /// null. A `BigInt` becomes a `u64` number when it fits, else an `f64`
    /// number (losing digits, but keeping it numeric for comparisons), else
    /// (beyond f64 range) its decimal text.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::None => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::BigInt(s) => {
                if let Ok(u) = s.parse::<u64>() {
                    J::from(u)
                } else {
                    match s.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                        Some(n) => J::Number(n),
                        None => J::String(s.clone()),
                    }
                }
            }
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => J::String(s.to_owned()),
                Err(_) => J::String(STANDARD.encode(b)),
            },
            Value::List(items) | Value::Tuple(items) => {
                J::Array(items.iter().map(Value::to_json).collect())
            }
            Value::Dict(items) => {
                let mut map = serde_json::Map::with_capacity(items.len());
                for (k, v) in items {
                    let key = json_key_text(k).map_or_else(
                        || serde_json::to_string(&k.to_json()).unwrap_or_default(),
                        Cow::into_owned,
                    );
                    map.insert(key, v.to_json());
                }
                J::Object(map)
            }
            Value::DateTime { .. } | Value::Date { .. } | Value::Time { .. } => {
                J::String(date_text(self).unwrap_or_default())
            }
        }
    }

    /// Converts plain JSON (objects become dicts with string keys), moving its strings.
    pub fn from_json(json: serde_json::Value) -> Value {
        use serde_json::Value as J;
        match json {
            J::Null => Value::None,
            J::Bool(b) => Value::Bool(b),
            J::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Int(i)
                } else if let Some(u) = n.as_u64() {
                    Value::BigInt(u.to_string())
                } else {
                    Value::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            J::String(s) => Value::Str(s),
            J::Array(items) => Value::List(items.into_iter().map(Value::from_json).collect()),
            J::Object(map) => Value::Dict(
                map.into_iter()
                    .map(|(k, v)| (Value::Str(k), Value::from_json(v)))
                    .collect(),
            ),
        }
    }
}

/// Dict key text as Python's `json.dumps` produces it, `None` for key types
/// it refuses.
pub(super) fn json_key_text(key: &Value) -> Option<Cow<'_, str>> {
    Some(match key {
        Value::Str(s) | Value::BigInt(s) => Cow::Borrowed(s.as_str()),
        Value::Int(i) => Cow::Owned(i.to_string()),
        Value::Float(f) => Cow::Owned(json_float(*f)),
        Value::Bool(true) => Cow::Borrowed("true"),
        Value::Bool(false) => Cow::Borrowed("false"),
        Value::None => Cow::Borrowed("null"),
        _ => return None,
    })
}

/// `strftime` text JEncode uses. Python leaves `%Y` unpadded below year 1000
/// (glibc), so we do too, even though `strptime` cannot read that back.
pub(super) fn date_text(v: &Value) -> Option<String> {
    Some(match *v {
        Value::DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
            ..
        } => format!("{year}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}"),
        Value::Date { year, month, day } => format!("{year}-{month:02}-{day:02}"),
        Value::Time {
            hour,
            minute,
            second,
            ..
        } => format!("{hour:02}:{minute:02}:{second:02}"),
        _ => return None,
    })
}

/// Float text as JSON writes it (`float.__repr__` plus JS-style specials).
pub(super) fn json_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        float_repr(f)
    }
}

/// Python's `repr(float)`: shortest round-trip digits, positional notation
/// for decimal exponents in -4..16, otherwise `d.ddde±XX`.
pub(super) fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if f == 0.0 {
        return format!("{sign}0.0");
    }
    // Rust's `{:e}` yields the same shortest digits as Python's repr.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if !(-4..16).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{dot}{rest}e{esign}{:02}", exp.abs());
    }
    let point = exp + 1;
    let n = digits.len() as i32;
    if point <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
    } else if point >= n {
        format!("{sign}{digits}{}.0", "0".repeat((point - n) as usize))
    } else {
        let (int, frac) = digits.split_at(point as usize);
        format!("{sign}{int}.{frac}")
    }
}

/// Python-style parsing of `int(text)` for ASCII input: surrounding
/// whitespace, a sign, and single underscores between digits are accepted.
/// Python refuses more than 4300 digits (`sys.int_max_str_digits`), which
/// also bounds our work.
pub(super) fn parse_py_int(text: &[u8]) -> Option<Value> {
    let text = text.trim_ascii();
    let (neg, body) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    let digits = strip_underscores(body)?;
    if digits.is_empty() || digits.len() > 4300 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let trimmed = match digits.iter().position(|&d| d != b'0') {
        Some(p) => &digits[p..],
        None => return Some(Value::Int(0)),
    };
    let mut text = String::with_capacity(trimmed.len() + 1);
    if neg {
        text.push('-');
    }
    text.extend(trimmed.iter().map(|&d| d as char));
    Some(match text.parse::<i64>() {
        Ok(i) => Value::Int(i),
        Err(_) => Value::BigInt(text),
    })
}

/// Python-style `float(text)` for ASCII input (whitespace, underscores
/// between digits, `inf`/`nan` spellings).
pub(super) fn parse_py_float(text: &[u8]) -> Option<f64> {
    let cleaned = strip_underscores(text.trim_ascii())?;
    let s = std::str::from_utf8(&cleaned).ok()?;
    // Keep Rust's parser to the characters Python's grammar can contain.
    if s.bytes()
        .any(|b| !(b.is_ascii_alphanumeric() || b"+-.".contains(&b)))
    {
        return None;
    }
    s.parse::<f64>().ok()
}

/// Removes `_` separators, refusing any not placed between two digits.
fn strip_underscores(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    for (i, &b) in text.iter().enumerate() {
        if b == b'_' {
            let before = i > 0 && text[i - 1].is_ascii_digit();
            let after = text.get(i + 1).is_some_and(u8::is_ascii_digit);
            if !(before && after) {
                return None;
            }
        } else {
            out.push(b);
        }
    }
    Some(out)
}

/// Python `dict` key identity: equal keys (with `1 == 1.0 == True`) merge,
/// unhashable ones (list, dict) are refused.
#[derive(Hash, PartialEq, Eq)]
enum HashKey {
    None,
    Int(i64),
    BigInt(String),
    Float(u64),
    /// Every decoded NaN is a distinct object in Python, so never equal.
    NaN(usize),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<HashKey>),
    DateTime(u16, u8, u8, u8, u8, u8, u32),
    Date(u16, u8, u8),
    Time(u8, u8, u8, u32),
}

/// Builds dicts with Python's duplicate-key rule (first position, last
/// value) in linear time.
#[derive(Default)]
pub(super) struct DictBuilder {
    items: Vec<(Value, Value)>,
    index: HashMap<HashKey, usize>,
    nan_count: usize,
}

impl DictBuilder {
    /// Returns `false` for an unhashable key (Python raises `TypeError`).
    pub(super) fn insert(&mut self, key: Value, value: Value) -> bool {
        let Some(hk) = self.hash_key(&key) else {
            return false;
        };
        match self.index.get(&hk) {
            Some(&pos) => self.items[pos].1 = value,
            None => {
                self.index.insert(hk, self.items.len());
                self.items.push((key, value));
            }
        }
        true
    }

    pub(super) fn finish(self) -> Vec<(Value, Value)> {
        self.items
    }

    fn hash_key(&mut self, v: &Value) -> Option<HashKey> {
        Some(match v {
            Value::None => HashKey::None,
            Value::Bool(b) => HashKey::Int(i64::from(*b)),
            Value::Int(i) => HashKey::Int(*i),
            Value::BigInt(s) => HashKey::BigInt(s.clone()),
            Value::Float(f) if f.is_nan() => {
                self.nan_count += 1;
                HashKey::NaN(self.nan_count)
            }
            Value::Float(f) if f.is_finite() && f.fract() == 0.0 => {
                // 2^63 is exact in f64, so the range check itself is exact.
                let limit = 2f64.powi(63);
                if *f >= -limit && *f < limit {
                    HashKey::Int(*f as i64)
                } else {
                    HashKey::BigInt(exact_integer_text(*f))
                }
            }
            Value::Float(f) => HashKey::Float(f.to_bits()),
            Value::Str(s) => HashKey::Str(s.clone()),
            Value::Bytes(b) => HashKey::Bytes(b.clone()),
            Value::Tuple(items) => HashKey::Tuple(
                items
                    .iter()
                    .map(|i| self.hash_key(i))
                    .collect::<Option<Vec<_>>>()?,
            ),
            Value::List(_) | Value::Dict(_) => return None,
            Value::DateTime {
                year,
                month,
                day,
                hour,
                minute,
                second,
                microsecond,
            } => HashKey::DateTime(*year, *month, *day, *hour, *minute, *second, *microsecond),
            Value::Date { year, month, day } => HashKey::Date(*year, *month, *day),
            Value::Time {
                hour,
                minute,
                second,
                microsecond,
            } => HashKey::Time(*hour, *minute, *second, *microsecond),
        })
    }
}

/// Exact decimal value of an integral float beyond `i64` (so that `1e20` and
/// the int `10**20` are the same dict key, as in Python).
fn exact_integer_text(f: f64) -> String {
    let bits = f.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32 - 1075;
    let mantissa = (bits & ((1 << 52) - 1)) | (1 << 52);
    // Little-endian base-10 digits, doubled `exp` times (exp <= 971).
    let mut digits: Vec<u8> = mantissa
        .to_string()
        .bytes()
        .rev()
        .map(|d| d - b'0')
        .collect();
    for _ in 0..exp.max(0) {
        let mut carry = 0;
        for d in digits.iter_mut() {
            let x = *d * 2 + carry;
            *d = x % 10;
            carry = x / 10;
        }
        if carry > 0 {
            digits.push(carry);
        }
    }
    let sign = if f < 0.0 { "-" } else { "" };
    let text: String = digits.iter().rev().map(|d| (b'0' + d) as char).collect();
    format!("{sign}{text}")
}

/// Days in a month of the proleptic Gregorian calendar, as `datetime` checks.
pub(super) fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        // python3 -c 'print([repr(x) for x in [1.5, 1e20, 1.5e-7, 1e16, 1e15,
        //   123456789012345678.0, 1e-5, 0.0001, -0.0, 5e-324, 1.7976931348623157e308, 0.1, 1/3, 100.0]])'
        let cases = [
            (1.5, "1.5"),
            (1e20, "1e+20"),
            (1.5e-7, "1.5e-07"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (-0.0, "-0.0"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (0.1, "0.1"),
            (1.0 / 3.0, "0.3333333333333333"),
            (100.0, "100.0"),
        ];
        for (f, text) in cases {
            assert_eq!(float_repr(f), text);
        }
    }

    #[test]
    fn python_int_parsing() {
        assert_eq!(parse_py_int(b" +1_2 "), Some(Value::Int(12)));
        assert_eq!(parse_py_int(b"-007"), Some(Value::Int(-7)));
        assert_eq!(parse_py_int(b"-0"), Some(Value::Int(0)));
        assert_eq!(
            parse_py_int(b"1180591620717411303424"),
            Some(Value::BigInt("1180591620717411303424".into()))
        );
        for bad in [&b""[..], b"1__2", b"_1", b"1_", b"0x1", b"--1", b"1 2"] {
            assert_eq!(parse_py_int(bad), None);
        }
    }

    #[test]
    fn dict_keys_merge_like_python() {
        let mut d = DictBuilder::default();
        assert!(d.insert(Value::Int(1), Value::Str("a".into())));
        assert!(d.insert(Value::Bool(true), Value::Str("b".into())));
        assert!(d.insert(Value::Float(1e20), Value::None));
        assert!(d.insert(Value::BigInt("100000000000000000000".into()), Value::Int(2)));
        assert!(d.insert(Value::Float(f64::NAN), Value::None));
        assert!(d.insert(Value::Float(f64::NAN), Value::None));
        assert!(!d.insert(Value::List(vec![]), Value::None));
        let items = d.finish();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0], (Value::Int(1), Value::Str("b".into())));
        assert_eq!(items[1], (Value::Float(1e20), Value::Int(2)));
    }

    #[test]
    fn s_ok_and_s_error() {
        let ok = Value::s_ok(Value::Int(3));
        assert_eq!(ok.ok_value(), Ok(&Value::Int(3)));
        let err = Value::s_error(1111, "Unauthorized query ( 1111 : Unauthorized query)");
        assert_eq!(
            err.ok_value(),
            Err((
                1111,
                "Unauthorized query ( 1111 : Unauthorized query)".into()
            ))
        );
        assert_eq!(err.python_type(), "<class 'dict'>");
        assert!(Value::Int(1).ok_value().is_err());
    }

    #[test]
    fn json_conversion() {
        let v = Value::Dict(vec![
            (Value::Int(1), Value::Tuple(vec![Value::Float(f64::NAN)])),
            (
                Value::Float(2.5),
                Value::BigInt("1180591620717411303424".into()),
            ),
            (Value::Bool(true), Value::Bytes(vec![0xff])),
            (
                Value::None,
                Value::Date {
                    year: 2024,
                    month: 1,
                    day: 2,
                },
            ),
            (
                Value::Tuple(vec![Value::Int(1)]),
                Value::BigInt("18446744073709551615".into()),
            ),
        ]);
        let j = v.to_json();
        assert_eq!(
            j.to_string(),
            r#"{"1":[null],"2.5":1.1805916207174113e+21,"true":"/w==","null":"2024-01-02","[1]":18446744073709551615}"#
        );
        let back = Value::from_json(serde_json::json!({"a": [1, 18446744073709551615u64, 0.5]}));
        assert_eq!(
            back,
            Value::Dict(vec![(
                Value::Str("a".into()),
                Value::List(vec![
                    Value::Int(1),
                    Value::BigInt("18446744073709551615".into()),
                    Value::Float(0.5)
                ])
            )])
        );
    }
}
