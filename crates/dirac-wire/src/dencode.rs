//! DIRAC's DEncode (`DIRAC/Core/Utilities/DEncode.py`), byte for byte.
//!
//! Decoding follows Python's behaviour, including its quirks (`b` followed by
//! anything but `0` is true, floats with an exponent are rebuilt as
//! `mantissa * 10**exp`, dates accept any iterable), except where Python would
//! misbehave on hostile input: negative or overlong string lengths and
//! exponents Python could not evaluate are errors rather than silent
//! truncation, hangs or wrap-around.
//!
//! Strings: Python decodes `s` payloads with `surrogateescape`, producing a
//! `str` that may hold lone surrogates. We return `Str` for valid UTF-8 and
//! `Bytes` otherwise; both encode back to the same bytes.

use super::value::{DictBuilder, days_in_month, float_repr, parse_py_float, parse_py_int};
use super::{DecodeError, MAX_DEPTH, Value};

/// Encodes a value. Every [`Value`] has a DEncode form.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

fn encode_into(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::None => out.push(b'n'),
        Value::Bool(b) => out.extend_from_slice(if *b { b"b1" } else { b"b0" }),
        Value::Int(i) => {
            out.push(b'i');
            out.extend_from_slice(i.to_string().as_bytes());
            out.push(b'e');
        }
        Value::BigInt(s) => {
            out.push(b'i');
            out.extend_from_slice(s.as_bytes());
            out.push(b'e');
        }
        Value::Float(f) => {
            out.push(b'f');
            out.extend_from_slice(float_repr(*f).as_bytes());
            out.push(b'e');
        }
        Value::Str(s) => encode_bytes(s.as_bytes(), out),
        Value::Bytes(b) => encode_bytes(b, out),
        Value::List(items) => encode_seq(b'l', items, out),
        Value::Tuple(items) => encode_seq(b't', items, out),
        Value::Dict(items) => {
            out.push(b'd');
            for (k, v) in items {
                encode_into(k, out);
                encode_into(v, out);
            }
            out.push(b'e');
        }
        Value::DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
            microsecond,
        } => {
            out.extend_from_slice(b"za");
            let mut fields: Vec<Value> = [
                i64::from(*year),
                i64::from(*month),
                i64::from(*day),
                i64::from(*hour),
                i64::from(*minute),
                i64::from(*second),
                i64::from(*microsecond),
            ]
            .into_iter()
            .map(Value::Int)
            .collect();
            fields.push(Value::None); // tzinfo
            encode_seq(b't', &fields, out);
        }
        Value::Date { year, month, day } => {
            out.extend_from_slice(b"zd");
            let fields = [i64::from(*year), i64::from(*month), i64::from(*day)].map(Value::Int);
            encode_seq(b't', &fields, out);
        }
        Value::Time {
            hour,
            minute,
            second,
            microsecond,
        } => {
            out.extend_from_slice(b"zt");
            let mut fields: Vec<Value> = [
                i64::from(*hour),
                i64::from(*minute),
                i64::from(*second),
                i64::from(*microsecond),
            ]
            .into_iter()
            .map(Value::Int)
            .collect();
            fields.push(Value::None); // tzinfo
            encode_seq(b't', &fields, out);
        }
    }
}

fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b's');
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(bytes);
}

fn encode_seq(tag: u8, items: &[Value], out: &mut Vec<u8>) {
    out.push(tag);
    for item in items {
        encode_into(item, out);
    }
    out.push(b'e');
}

/// Decodes one value starting at byte 0 and returns it with the offset just
/// past it; trailing bytes are left to the caller, as in Python.
pub fn decode(data: &[u8]) -> Result<(Value, usize), DecodeError> {
    if data.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut decoder = Decoder { data, depth: 0 };
    let value = decoder.value(0)?;
    Ok(value)
}

/// A decoding step: start offset in, value and end offset out.
type Step<'a, T> = fn(&mut Decoder<'a>, usize) -> Result<(T, usize), DecodeError>;

struct Decoder<'a> {
    data: &'a [u8],
    depth: usize,
}

fn invalid(offset: usize, reason: &'static str) -> DecodeError {
    DecodeError::Invalid { offset, reason }
}

impl<'a> Decoder<'a> {
    fn byte(&self, at: usize) -> Result<u8, DecodeError> {
        self.data.get(at).copied().ok_or(DecodeError::Truncated)
    }

    /// `data.index(needle, from)`; a missing delimiter means the input ended.
    fn find(&self, needle: u8, from: usize) -> Result<usize, DecodeError> {
        self.data
            .get(from..)
            .and_then(|rest| rest.iter().position(|&b| b == needle))
            .map(|p| from + p)
            .ok_or(DecodeError::Truncated)
    }

    fn value(&mut self, i: usize) -> Result<(Value, usize), DecodeError> {
        match self.byte(i)? {
            b'i' | b'I' => {
                let end = self.find(b'e', i + 1)?;
                let v = parse_py_int(&self.data[i + 1..end]).ok_or(invalid(i, "bad integer"))?;
                Ok((v, end + 1))
            }
            b'f' => self.float(i),
            b'b' => Ok((Value::Bool(self.byte(i + 1)? != b'0'), i + 2)),
            b's' | b'u' => self.string(i),
            b'n' => Ok((Value::None, i + 1)),
            b'l' => {
                let (items, end) = self.nested(i, Self::seq)?;
                Ok((Value::List(items), end))
            }
            b't' => {
                let (items, end) = self.nested(i, Self::seq)?;
                Ok((Value::Tuple(items), end))
            }
            b'd' => {
                let (items, end) = self.nested(i, Self::dict)?;
                Ok((Value::Dict(items), end))
            }
            b'z' => self.nested(i, Self::date),
            _ => Err(invalid(i, "unknown type tag")),
        }
    }

    fn nested<T>(&mut self, i: usize, f: Step<'a, T>) -> Result<(T, usize), DecodeError> {
        if self.depth >= MAX_DEPTH {
            return Err(DecodeError::TooDeep { limit: MAX_DEPTH });
        }
        self.depth += 1;
        let result = f(self, i);
        self.depth -= 1;
        result
    }

    fn float(&self, i: usize) -> Result<(Value, usize), DecodeError> {
        let bad = || invalid(i, "bad float");
        let first_e = self.find(b'e', i + 1)?;
        if matches!(self.data.get(first_e + 1), Some(b'+' | b'-')) {
            let end = self.find(b'e', first_e + 1)?;
            let mantissa = parse_py_float(&self.data[i + 1..first_e]).ok_or_else(bad)?;
            let scale = match parse_py_int(&self.data[first_e + 1..end]).ok_or_else(bad)? {
                // `10**exp` is an exact int here; converting it to float
                // overflows from 10**309 on (Python: OverflowError).
                Value::Int(exp @ 0..=308) => {
                    format!("1e{exp}").parse::<f64>().map_err(|_| bad())?
                }
                // A negative power is computed with C `pow`, which underflows
                // quietly to 0.
                Value::Int(exp) if exp < 0 => 10f64.powf(exp as f64),
                Value::BigInt(s) if s.starts_with('-') && s.len() <= 309 => 0.0,
                _ => return Err(bad()),
            };
            Ok((Value::Float(mantissa * scale), end + 1))
        } else {
            let v = parse_py_float(&self.data[i + 1..first_e]).ok_or_else(bad)?;
            Ok((Value::Float(v), first_e + 1))
        }
    }

    fn string(&self, i: usize) -> Result<(Value, usize), DecodeError> {
        let colon = self.find(b':', i + 1)?;
        let len = match parse_py_int(&self.data[i + 1..colon]) {
            Some(Value::Int(n)) => usize::try_from(n).map_err(|_| invalid(i, "negative length"))?,
            Some(_) => return Err(DecodeError::Truncated),
            None => return Err(invalid(i, "bad string length")),
        };
        let start = colon + 1;
        let end = start.checked_add(len).ok_or(DecodeError::Truncated)?;
        let bytes = self.data.get(start..end).ok_or(DecodeError::Truncated)?;
        let value = match std::str::from_utf8(bytes) {
            Ok(s) => Value::Str(s.to_owned()),
            Err(_) => Value::Bytes(bytes.to_vec()),
        };
        Ok((value, end))
    }

    fn seq(&mut self, i: usize) -> Result<(Vec<Value>, usize), DecodeError> {
        let mut items = Vec::new();
        let mut i = i + 1;
        while self.byte(i)? != b'e' {
            let (item, next) = self.value(i)?;
            items.push(item);
            i = next;
        }
        Ok((items, i + 1))
    }

    fn dict(&mut self, i: usize) -> Result<(Vec<(Value, Value)>, usize), DecodeError> {
        let mut dict = DictBuilder::default();
        let mut i = i + 1;
        while self.byte(i)? != b'e' {
            let at = i;
            let (key, next) = self.value(i)?;
            let (value, next) = self.value(next)?;
            if !dict.insert(key, value) {
                return Err(invalid(at, "unhashable dict key"));
            }
            i = next;
        }
        Ok((dict.finish(), i + 1))
    }

    /// `za`/`zd`/`zt`: Python decodes whatever value follows and calls
    /// `datetime(*it)` / `date(*it)` / `time(*it)` on it.
    fn date(&mut self, i: usize) -> Result<(Value, usize), DecodeError> {
        let kind = self.byte(i + 1)?;
        let (fields, end) = self.value(i + 2)?;
        let bad = || invalid(i, "bad date/time fields");
        let args = date_args(fields).ok_or_else(bad)?;
        let value = match kind {
            b'a' => build_datetime(&args),
            b'd' => build_date(&args),
            b't' => build_time(&args),
            _ => return Err(invalid(i, "unknown date kind")),
        };
        Ok((value.ok_or_else(bad)?, end))
    }
}

/// Positional arguments of the `datetime` constructor call: integers (bools
/// count), with `None` allowed only where a `tzinfo` may stand.
enum Arg {
    Int(i64),
    None,
}

fn date_args(fields: Value) -> Option<Vec<Arg>> {
    let items = match fields {
        Value::List(items) | Value::Tuple(items) => items,
        Value::Dict(items) => items.into_iter().map(|(k, _)| k).collect(),
        // Iterating a str gives str items, which the constructors refuse;
        // only the empty string survives (as "no arguments").
        Value::Str(s) if s.is_empty() => Vec::new(),
        _ => return None,
    };
    items
        .into_iter()
        .map(|v| match v {
            Value::Int(i) => Some(Arg::Int(i)),
            Value::Bool(b) => Some(Arg::Int(i64::from(b))),
            Value::None => Some(Arg::None),
            _ => None,
        })
        .collect()
}

/// The leading integer arguments, each checked against its bounds.
fn ints(args: &[Arg], bounds: &[(i64, i64)]) -> Option<Vec<i64>> {
    args.iter()
        .zip(bounds)
        .map(|(a, &(lo, hi))| match a {
            Arg::Int(v) if (lo..=hi).contains(v) => Some(*v),
            _ => None,
        })
        .collect()
}

/// Python's `tzinfo` slot: only `None` can come out of DEncode.
fn tz_ok(args: &[Arg], at: usize) -> bool {
    args.get(at).is_none_or(|a| matches!(a, Arg::None))
}

fn check_day(y: i64, m: i64, d: i64) -> bool {
    d <= i64::from(days_in_month(y as u16, m as u8))
}

fn build_datetime(args: &[Arg]) -> Option<Value> {
    if !(3..=8).contains(&args.len()) || !tz_ok(args, 7) {
        return None;
    }
    let n = args.len().min(7);
    let mut f = ints(
        &args[..n],
        &[
            (1, 9999),
            (1, 12),
            (1, 31),
            (0, 23),
            (0, 59),
            (0, 59),
            (0, 999_999),
        ],
    )?;
    f.resize(7, 0);
    if !check_day(f[0], f[1], f[2]) {
        return None;
    }
    Some(Value::DateTime {
        year: f[0] as u16,
        month: f[1] as u8,
        day: f[2] as u8,
        hour: f[3] as u8,
        minute: f[4] as u8,
        second: f[5] as u8,
        microsecond: f[6] as u32,
    })
}

fn build_date(args: &[Arg]) -> Option<Value> {
    if args.len() != 3 {
        return None;
    }
    let f = ints(args, &[(1, 9999), (1, 12), (1, 31)])?;
    if !check_day(f[0], f[1], f[2]) {
        return None;
    }
    Some(Value::Date {
        year: f[0] as u16,
        month: f[1] as u8,
        day: f[2] as u8,
    })
}

fn build_time(args: &[Arg]) -> Option<Value> {
    if args.len() > 5 || !tz_ok(args, 4) {
        return None;
    }
    let n = args.len().min(4);
    let mut f = ints(&args[..n], &[(0, 23), (0, 59), (0, 59), (0, 999_999)])?;
    f.resize(4, 0);
    Some(Value::Time {
        hour: f[0] as u8,
        minute: f[1] as u8,
        second: f[2] as u8,
        microsecond: f[3] as u32,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::Str(text.into())
    }

    fn dict(items: Vec<(&str, Value)>) -> Value {
        Value::Dict(items.into_iter().map(|(k, v)| (s(k), v)).collect())
    }

    fn both_ways(value: &Value, bytes: &[u8]) {
        assert_eq!(encode(value), bytes, "encoding {value:?}");
        assert_eq!(decode(bytes), Ok((value.clone(), bytes.len())));
    }

    pub(in super::super) fn proposal(extra: &str, version: &str) -> Value {
        Value::s_ok(Value::List(vec![
            Value::List(vec![
                s("Framework/TokenManager"),
                s("Production"),
                s("dteam"),
            ]),
            Value::List(vec![s("RPC"), s("getToken")]),
            s(extra),
            s(version),
        ]))
    }

    #[test]
    fn golden_messages() {
        both_ways(
            &proposal("", "9.0.0a31"),
            b"ds2:OKb1s5:Valuells22:Framework/TokenManagers10:Productions5:dteamels3:RPCs8:getTokenes0:s8:9.0.0a31ee",
        );
        both_ways(
            &proposal("hosts", "8.0.55"),
            b"ds2:OKb1s5:Valuells22:Framework/TokenManagers10:Productions5:dteamels3:RPCs8:getTokenes5:hostss6:8.0.55ee",
        );
        let args = Value::s_ok(Value::List(vec![
            Value::None,
            s("dteam_pilot"),
            Value::List(vec![s("compute.create"), s("compute.read")]),
            s("ce.example.org"),
            s("IAM-dteam"),
            Value::Int(600),
        ]));
        both_ways(
            &args,
            b"ds2:OKb1s5:Valuelns11:dteam_pilotls14:compute.creates12:compute.reades14:ce.example.orgs9:IAM-dteami600eee",
        );
        both_ways(&Value::s_ok(Value::None), b"ds2:OKb1s5:Valuene");
        both_ways(
            &Value::s_error(1111, "Unauthorized query ( 1111 : Unauthorized query)"),
            b"ds2:OKb0s5:Errnoi1111es7:Messages47:Unauthorized query ( 1111 : Unauthorized query)e",
        );
        let ping = Value::s_ok(dict(vec![("id", s("abc0")), ("kaping", Value::Bool(true))]));
        both_ways(&ping, b"ds2:OKb1s5:Valueds2:ids4:abc0s6:kapingb1ee");
    }

    #[test]
    fn golden_scalars() {
        both_ways(&Value::Int(1), b"i1e");
        both_ways(&Value::Int(-5), b"i-5e");
        both_ways(
            &Value::BigInt("1180591620717411303424".into()),
            b"i1180591620717411303424e",
        );
        both_ways(&Value::Float(1.5), b"f1.5e");
        both_ways(&Value::Float(1e20), b"f1e+20e");
        both_ways(&Value::Float(1.5e-7), b"f1.5e-07e");
        both_ways(&Value::Float(f64::INFINITY), b"finfe");
        both_ways(&Value::Float(f64::NEG_INFINITY), b"f-infe");
        assert_eq!(encode(&Value::Float(f64::NAN)), b"fnane");
        assert!(matches!(decode(b"fnane"), Ok((Value::Float(f), 5)) if f.is_nan()));
        both_ways(&Value::Bool(true), b"b1");
        both_ways(&Value::Bool(false), b"b0");
        both_ways(&Value::None, b"n");
        both_ways(&s("héllo"), b"s6:h\xc3\xa9llo");
        // Python yields the str '\x00\udcff'; we keep the raw bytes.
        both_ways(&Value::Bytes(vec![0, 0xff]), b"s2:\x00\xff");
        both_ways(&Value::Tuple(vec![Value::Int(1), s("a")]), b"ti1es1:ae");
        both_ways(
            &Value::Dict(vec![(Value::Int(1), Value::Int(2))]),
            b"di1ei2ee",
        );
        both_ways(
            &Value::DateTime {
                year: 2024,
                month: 1,
                day: 2,
                hour: 3,
                minute: 4,
                second: 5,
                microsecond: 6,
            },
            b"zati2024ei1ei2ei3ei4ei5ei6ene",
        );
        both_ways(
            &Value::Date {
                year: 2024,
                month: 1,
                day: 2,
            },
            b"zdti2024ei1ei2ee",
        );
        both_ways(
            &Value::Time {
                hour: 3,
                minute: 4,
                second: 5,
                microsecond: 0,
            },
            b"ztti3ei4ei5ei0ene",
        );
    }

    #[test]
    fn python_quirks_on_input() {
        assert_eq!(decode(b"I5e"), Ok((Value::Int(5), 3)));
        assert_eq!(decode(b"u2:abXX"), Ok((s("ab"), 5)));
        assert_eq!(decode(b"bx"), Ok((Value::Bool(true), 2)));
        assert_eq!(decode(b"i 1_0 e"), Ok((Value::Int(10), 7)));
        // No exponent sign: Python parses only up to the first `e`.
        assert_eq!(decode(b"f1e5e"), Ok((Value::Float(1.0), 3)));
        assert_eq!(decode(b"f2e+3e"), Ok((Value::Float(2000.0), 6)));
        assert_eq!(decode(b"f1e-400e"), Ok((Value::Float(0.0), 8)));
        assert!(decode(b"f1e+309e").is_err());
        // python3 -c 'print(repr(1.2345678901234568*10**17))' -> 1.2345678901234566e+17:
        // DIRAC's exponent handling does not round-trip every float.
        assert_eq!(
            decode(b"f1.2345678901234568e+17e"),
            Ok((Value::Float(1.2345678901234566e17), 24))
        );
        // So two float keys whose values differ in the last bit can be one key once encoded and
        // decoded again. python3 -c 'print(2.0202012011002*10**19 == 2.0202012011002003*10**19)'
        // -> True; as plain decimals they are two floats (repr 2.0202012011002e+19 and
        // 2.0202012011002003e+19).
        let (distinct, _) =
            decode(b"df20202012011002000110ei1ef20202012011002004626ei2ee").unwrap();
        assert!(
            matches!(&distinct, Value::Dict(entries) if entries.len() == 2),
            "{distinct:?}"
        );
        let (merged, _) = decode(&encode(&distinct)).unwrap();
        assert_eq!(
            merged,
            Value::Dict(vec![(Value::Float(2.0202012011002003e19), Value::Int(2))])
        );
        // Dates accept any iterable; `time()` needs no argument at all.
        assert_eq!(
            decode(b"zdli2024ei2ei29ee"),
            Ok((
                Value::Date {
                    year: 2024,
                    month: 2,
                    day: 29
                },
                17
            ))
        );
        assert!(matches!(
            decode(b"ztte"),
            Ok((Value::Time { hour: 0, .. }, 4))
        ));
        assert!(decode(b"zdti2023ei2ei29ee").is_err());
        assert!(decode(b"zati2024ei1ei2ei0ei0ei0ei0ei1ee").is_err());
        // Python dict semantics for duplicate keys.
        assert_eq!(
            decode(b"di1es1:ab1s1:be"),
            Ok((Value::Dict(vec![(Value::Int(1), s("b"))]), 15))
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(decode(b""), Err(DecodeError::Empty));
        for bad in [
            &b"ds2:OK"[..],
            b"l",
            b"i12",
            b"s5:abc",
            b"b",
            b"s99999999999999999999999:x",
        ] {
            assert_eq!(decode(bad), Err(DecodeError::Truncated), "{bad:?}");
        }
        for bad in [
            &b"x"[..],
            b"s-1:",
            b"ixe",
            b"fxe",
            b"dlee",
            b"dli1eei1ee",
            b"zqte",
        ] {
            assert!(
                matches!(decode(bad), Err(DecodeError::Invalid { .. })),
                "{bad:?}"
            );
        }
        let bomb = vec![b'l'; 100_000];
        assert_eq!(
            decode(&bomb),
            Err(DecodeError::TooDeep { limit: MAX_DEPTH })
        );
        let ok_depth = [vec![b'l'; MAX_DEPTH], vec![b'e'; MAX_DEPTH]].concat();
        assert!(decode(&ok_depth).is_ok());
    }

    #[test]
    fn round_trips() {
        for v in super::super::test_values::sample_values() {
            let bytes = encode(&v);
            assert_eq!(decode(&bytes), Ok((v.clone(), bytes.len())), "{v:?}");
        }
    }
}
