//! DIRAC's JEncode (`DIRAC/Core/Utilities/JEncode.py`): Python's `json`
//! module with defaults plus the `__dCls` object hook.
//!
//! Output is byte-identical to `json.dumps(obj, cls=DJSONEncoder)`. The
//! decoder is a small hand-written parser because Python's dialect has
//! `NaN`/`Infinity` literals and unbounded integers, and we want a depth
//! limit and Python's duplicate-key rule. Differences from Python, all on
//! input no DIRAC peer produces: only UTF-8 (optionally with a BOM) is
//! accepted, not UTF-16/32; escaped lone surrogates (`"\ud800"`) are refused
//! since a Rust string cannot hold them; date fields must use ASCII digits.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::collections::HashMap;
use std::fmt::Write as _;

use super::value::{date_text, days_in_month, json_float, json_key_text, parse_py_int};
use super::{DecodeError, EncodeError, MAX_DEPTH, Value, quote};

/// Encodes like `json.dumps(value, cls=DJSONEncoder)`.
pub fn encode(value: &Value) -> Result<Vec<u8>, EncodeError> {
    let mut out = String::with_capacity(256);
    encode_into(value, &mut out)?;
    Ok(out.into_bytes())
}

fn encode_into(value: &Value, out: &mut String) -> Result<(), EncodeError> {
    match value {
        Value::None => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::BigInt(s) => out.push_str(s),
        Value::Float(f) => out.push_str(&json_float(*f)),
        Value::Str(s) => write_string(s, out),
        Value::Bytes(b) => tagged("b64", &STANDARD.encode(b), out),
        Value::List(items) | Value::Tuple(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push_str(", ");
                }
                encode_into(item, out)?;
            }
            out.push(']');
        }
        Value::Dict(items) => {
            out.push('{');
            for (n, (k, v)) in items.iter().enumerate() {
                if n > 0 {
                    out.push_str(", ");
                }
                let key = json_key_text(k).ok_or(EncodeError::BadKey(k.type_name()))?;
                write_string(&key, out);
                out.push_str(": ");
                encode_into(v, out)?;
            }
            out.push('}');
        }
        Value::DateTime { .. } => tagged("dt", &date_text(value).unwrap_or_default(), out),
        Value::Date { .. } => tagged("date", &date_text(value).unwrap_or_default(), out),
        Value::Time { .. } => return Err(EncodeError::NotSerializable("time")),
    }
    Ok(())
}

fn tagged(class: &str, obj: &str, out: &mut String) {
    out.push_str("{\"__dCls\": \"");
    out.push_str(class);
    out.push_str("\", \"obj\": ");
    write_string(obj, out);
    out.push('}');
}

/// `ensure_ascii=True` string escaping. Runs of printable ASCII (all of a token) are copied whole.
fn write_string(s: &str, out: &mut String) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut rest = s;
    while let Some(at) = first_to_escape(rest.as_bytes()) {
        out.push_str(&rest[..at]);
        let c = rest[at..].chars().next().unwrap_or_default();
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.push_str(rest);
    out.push('"');
}

/// The index of the first byte that is not printable ASCII or is `"` or `\\`. Eight bytes at a
/// time: a 700-character token is the bulk of a getToken reply.
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    let needs_escape = |b: u8| !(b' '..=b'~').contains(&b) || b == b'"' || b == b'\\';
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in chunks.by_ref() {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let suspicious = word & HIGH != 0 // non-ASCII
            || word.wrapping_sub(ONES * 0x20) & !word & HIGH != 0 // below ' '
            || has_zero(word ^ (ONES * 0x7f))
            || has_zero(word ^ (ONES * u64::from(b'"')))
            || has_zero(word ^ (ONES * u64::from(b'\\')));
        if suspicious && let Some(at) = chunk.iter().position(|&b| needs_escape(b)) {
            return Some(offset + at);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| needs_escape(b))
        .map(|at| offset + at)
}

/// Decodes like `json.loads(data, cls=DJSONDecoder)`. The whole input must
/// be one JSON text (surrounding whitespace allowed).
pub fn decode(data: &[u8]) -> Result<Value, DecodeError> {
    let data = data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data);
    let text = std::str::from_utf8(data).map_err(|e| DecodeError::Invalid {
        offset: e.valid_up_to(),
        reason: "invalid UTF-8",
    })?;
    let mut parser = Parser {
        text: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    parser.skip_ws();
    if parser.pos == parser.text.len() {
        return Err(DecodeError::Empty);
    }
    let value = parser.value()?;
    parser.skip_ws();
    if parser.pos != parser.text.len() {
        return Err(parser.invalid("extra data"));
    }
    Ok(value)
}

struct Parser<'a> {
    /// Valid UTF-8, so slicing at ASCII delimiters yields valid `str`s.
    text: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn invalid(&self, reason: &'static str) -> DecodeError {
        if self.pos >= self.text.len() {
            DecodeError::Truncated
        } else {
            DecodeError::Invalid {
                offset: self.pos,
                reason,
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, DecodeError> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.invalid("expecting value"))
        }
    }

    fn value(&mut self) -> Result<Value, DecodeError> {
        match self.peek() {
            Some(b'{') => self.nested(Self::object),
            Some(b'[') => self.nested(Self::array),
            Some(b'"') => Ok(Value::Str(self.string()?)),
            Some(b'n') => self.literal(b"null", Value::None),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'N') => self.literal(b"NaN", Value::Float(f64::NAN)),
            Some(b'I') => self.literal(b"Infinity", Value::Float(f64::INFINITY)),
            Some(b'-') if self.text[self.pos..].starts_with(b"-Infinity") => {
                self.pos += 9;
                Ok(Value::Float(f64::NEG_INFINITY))
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.invalid("expecting value")),
        }
    }

    fn nested(
        &mut self,
        f: fn(&mut Self) -> Result<Value, DecodeError>,
    ) -> Result<Value, DecodeError> {
        if self.depth >= MAX_DEPTH {
            return Err(DecodeError::TooDeep { limit: MAX_DEPTH });
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Python's `NUMBER_RE`: `-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?`; a
    /// fraction or exponent makes a float, otherwise an unbounded int.
    fn number(&mut self) -> Result<Value, DecodeError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.invalid("expecting value")),
        }
        let mut is_float = false;
        if self.peek() == Some(b'.') && matches!(self.text.get(self.pos + 1), Some(b'0'..=b'9')) {
            self.pos += 1;
            self.digits();
            is_float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            let save = self.pos;
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                // Not part of the number; the caller then trips over it.
                self.pos = save;
            } else {
                is_float = true;
            }
        }
        let text = &self.text[start..self.pos];
        if is_float {
            let f = std::str::from_utf8(text)
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .ok_or(DecodeError::Invalid {
                    offset: start,
                    reason: "bad number",
                })?;
            Ok(Value::Float(f))
        } else {
            parse_py_int(text).ok_or(DecodeError::Invalid {
                offset: start,
                reason: "integer too long",
            })
        }
    }

    fn hex4(&mut self) -> Result<u32, DecodeError> {
        let digits = self
            .text
            .get(self.pos..self.pos + 4)
            .ok_or(DecodeError::Truncated)?;
        let mut v = 0;
        for &d in digits {
            let nibble = (d as char)
                .to_digit(16)
                .ok_or(self.invalid("bad \\u escape"))?;
            v = v * 16 + nibble;
        }
        self.pos += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let run_start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // The run ends at an ASCII byte, so it is a char boundary.
            out.push_str(std::str::from_utf8(&self.text[run_start..self.pos]).unwrap_or_default());
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let esc = self.peek().ok_or(DecodeError::Truncated)?;
                    self.pos += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => {
                            self.pos -= 1;
                            return Err(self.invalid("invalid escape"));
                        }
                    }
                }
                Some(_) => return Err(self.invalid("invalid control character")),
                None => return Err(DecodeError::Truncated),
            }
        }
    }

    fn unicode_escape(&mut self) -> Result<char, DecodeError> {
        let first = self.hex4()?;
        let code = if (0xd800..0xdc00).contains(&first) && self.text[self.pos..].starts_with(b"\\u")
        {
            let save = self.pos;
            self.pos += 2;
            let second = self.hex4()?;
            if (0xdc00..0xe000).contains(&second) {
                0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
            } else {
                self.pos = save;
                first
            }
        } else {
            first
        };
        char::from_u32(code).ok_or(self.invalid("lone surrogate"))
    }

    fn array(&mut self) -> Result<Value, DecodeError> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::List(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value()?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::List(items));
                }
                _ => return Err(self.invalid("expecting ',' delimiter")),
            }
        }
    }

    fn object(&mut self) -> Result<Value, DecodeError> {
        self.pos += 1;
        let mut items: Vec<(String, Value)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return object_hook(items);
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.invalid("expecting property name"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.invalid("expecting ':' delimiter"));
            }
            self.pos += 1;
            self.skip_ws();
            let value = self.value()?;
            // Python builds a dict: a repeated key keeps its first position
            // and takes the last value.
            match index.get(&key) {
                Some(&at) => items[at].1 = value,
                None => {
                    index.insert(key.clone(), items.len());
                    items.push((key, value));
                }
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return object_hook(items);
                }
                _ => return Err(self.invalid("expecting ',' delimiter")),
            }
        }
    }
}

/// `DJSONDecoder.dict_to_object`.
fn object_hook(mut items: Vec<(String, Value)>) -> Result<Value, DecodeError> {
    let class = items
        .iter()
        .position(|(k, _)| k == "__dCls")
        .map(|at| items.remove(at).1);
    let obj = || {
        items
            .iter()
            .find(|(k, _)| k == "obj")
            .map(|(_, v)| v)
            .ok_or(DecodeError::Invalid {
                offset: 0,
                reason: "tagged object without \"obj\"",
            })
    };
    let bad = |reason| DecodeError::Invalid { offset: 0, reason };
    match class {
        Some(Value::Str(c)) if c == "dt" => match obj()? {
            Value::Str(s) => parse_datetime(s).ok_or(bad("bad datetime text")),
            _ => Err(bad("datetime text is not a string")),
        },
        Some(Value::Str(c)) if c == "date" => match obj()? {
            Value::Str(s) => parse_date(s).ok_or(bad("bad date text")),
            _ => Err(bad("date text is not a string")),
        },
        Some(Value::Str(c)) if c == "b64" => match obj()? {
            Value::Str(s) => b64decode(s).map(Value::Bytes).ok_or(bad("bad base64")),
            _ => Err(bad("base64 payload is not a string")),
        },
        Some(c) if c.is_truthy() => Err(DecodeError::UnknownClass(match &c {
            Value::Str(s) => quote(s),
            other => other.type_name().to_owned(),
        })),
        _ => Ok(Value::Dict(
            items.into_iter().map(|(k, v)| (Value::Str(k), v)).collect(),
        )),
    }
}

/// One `strptime` field: the regex alternatives `_strptime` uses, tried in
/// order, each a sequence of character classes.
type Field = &'static [&'static [&'static [u8]]];
const D: &[u8] = b"0123456789";
const D19: &[u8] = b"123456789";
const YEAR: Field = &[&[D, D, D, D]];
const MONTH: Field = &[&[b"1", b"012"], &[b"0", D19], &[D19]];
const DAY: Field = &[
    &[b"3", b"01"],
    &[b"12", D],
    &[b"0", D19],
    &[D19],
    &[b" ", D19],
];
const HOUR: Field = &[&[b"2", b"0123"], &[b"01", D], &[D]];
const MINUTE: Field = &[&[b"012345", D], &[D]];
const SECOND: Field = &[&[b"6", b"01"], &[b"012345", D], &[D]];

/// Value and end offset if alternative `alt` of `field` matches at `at`.
fn field_alt(alt: &[&[u8]], text: &[u8], at: usize) -> Option<(i64, usize)> {
    let s = text.get(at..at + alt.len())?;
    if !s.iter().zip(alt).all(|(c, class)| class.contains(c)) {
        return None;
    }
    let v = s
        .iter()
        .filter(|c| c.is_ascii_digit())
        .fold(0, |acc, c| acc * 10 + i64::from(c - b'0'));
    Some((v, at + alt.len()))
}

/// Token of a `strptime` format after `_strptime` compiled it.
#[derive(Clone, Copy)]
enum Tok {
    Field(Field),
    Lit(u8),
    /// A space in the format becomes `\s+`.
    Ws,
}

/// Backtracking match of the compiled format; the regex is not anchored at
/// the end, so Python reports "unconverted data remains" for leftovers.
fn match_tokens(toks: &[Tok], text: &[u8], at: usize, out: &mut Vec<i64>) -> Option<usize> {
    let Some((tok, rest)) = toks.split_first() else {
        return Some(at);
    };
    match *tok {
        Tok::Lit(c) => (text.get(at) == Some(&c)).then_some(())?,
        Tok::Ws => {
            let n = text[at.min(text.len())..]
                .iter()
                .take_while(|c| b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f".contains(c))
                .count();
            if n == 0 {
                return None;
            }
            // `\s+` is greedy but may give back; only fields follow it, and
            // they never start with whitespace except DAY's " d" form, which
            // the format never places after a space.
            return match_tokens(rest, text, at + n, out);
        }
        Tok::Field(field) => {
            for alt in field {
                if let Some((v, next)) = field_alt(alt, text, at) {
                    out.push(v);
                    if let Some(end) = match_tokens(rest, text, next, out) {
                        return Some(end);
                    }
                    out.pop();
                }
            }
            return None;
        }
    }
    match_tokens(rest, text, at + 1, out)
}

fn strptime(text: &str, toks: &[Tok]) -> Option<Vec<i64>> {
    let mut fields = Vec::with_capacity(6);
    let end = match_tokens(toks, text.as_bytes(), 0, &mut fields)?;
    (end == text.len()).then_some(fields)
}

const DATE_TOKS: [Tok; 5] = [
    Tok::Field(YEAR),
    Tok::Lit(b'-'),
    Tok::Field(MONTH),
    Tok::Lit(b'-'),
    Tok::Field(DAY),
];

fn valid_date(f: &[i64]) -> bool {
    (1..=9999).contains(&f[0]) && f[2] <= i64::from(days_in_month(f[0] as u16, f[1] as u8))
}

/// `datetime.strptime(s, "%Y-%m-%d %H:%M:%S")`.
fn parse_datetime(s: &str) -> Option<Value> {
    let mut toks = DATE_TOKS.to_vec();
    toks.extend([
        Tok::Ws,
        Tok::Field(HOUR),
        Tok::Lit(b':'),
        Tok::Field(MINUTE),
        Tok::Lit(b':'),
        Tok::Field(SECOND),
    ]);
    let f = strptime(s, &toks)?;
    // The regex admits seconds 60 and 61; `datetime()` then refuses them.
    if !valid_date(&f) || f[5] > 59 {
        return None;
    }
    Some(Value::DateTime {
        year: f[0] as u16,
        month: f[1] as u8,
        day: f[2] as u8,
        hour: f[3] as u8,
        minute: f[4] as u8,
        second: f[5] as u8,
        microsecond: 0,
    })
}

/// `datetime.strptime(s, "%Y-%m-%d").date()`.
fn parse_date(s: &str) -> Option<Value> {
    let f = strptime(s, &DATE_TOKS)?;
    if !valid_date(&f) {
        return None;
    }
    Some(Value::Date {
        year: f[0] as u16,
        month: f[1] as u8,
        day: f[2] as u8,
    })
}

/// `base64.b64decode(s)` without `validate`: characters outside the
/// alphabet are skipped, decoding stops at complete padding, and leftover
/// single characters or missing padding are errors.
fn b64decode(s: &str) -> Option<Vec<u8>> {
    if !s.is_ascii() {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut quad, mut acc, mut pads) = (0u8, 0u32, 0u8);
    for &c in s.as_bytes() {
        if c == b'=' {
            if quad >= 2 {
                pads += 1;
                if quad + pads >= 4 {
                    return Some(out);
                }
            }
            continue;
        }
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        pads = 0;
        acc = (acc << 6) | u32::from(v);
        quad += 1;
        match quad {
            2 => out.push((acc >> 4) as u8),
            3 => out.push((acc >> 2) as u8),
            4 => {
                out.push(acc as u8);
                quad = 0;
                acc = 0;
            }
            _ => {}
        }
    }
    (quad == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::Str(text.into())
    }

    #[test]
    fn strings_are_escaped_as_python_ensure_ascii() {
        // python3 -c 'import json; print(json.dumps("a\"b\\c\nd\u00e9\U0001F600~ \x7f\x01\t"))'
        let encoded = encode(&s("a\"b\\c\nd\u{e9}\u{1F600}~ \u{7f}\u{1}\t")).unwrap();
        assert_eq!(
            String::from_utf8(encoded).unwrap(),
            r#""a\"b\\c\nd\u00e9\ud83d\ude00~ \u007f\u0001\t""#
        );
        assert_eq!(encode(&s("")).unwrap(), b"\"\"");
        assert_eq!(encode(&s("eyJ.x-y_z")).unwrap(), b"\"eyJ.x-y_z\"");
    }

    #[test]
    fn the_first_byte_to_escape_is_found_at_every_position() {
        let needing: Vec<u8> = (0u8..0x20).chain([b'"', b'\\', 0x7f, 0x80, 0xff]).collect();
        for len in 0..20 {
            assert_eq!(first_to_escape(&vec![b'a'; len]), None, "{len}");
            assert_eq!(first_to_escape(&vec![b' '; len]), None, "{len}");
            assert_eq!(first_to_escape(&vec![b'~'; len]), None, "{len}");
            for at in 0..len {
                for &bad in &needing {
                    let mut bytes = vec![b'x'; len];
                    bytes[at] = bad;
                    assert_eq!(first_to_escape(&bytes), Some(at), "{len} {at} {bad:#x}");
                }
            }
        }
        for clean in b' '..=b'~' {
            if clean != b'"' && clean != b'\\' {
                assert_eq!(first_to_escape(&[clean; 9]), None, "{clean:#x}");
            }
        }
    }

    fn both_ways(value: &Value, text: &str) {
        assert_eq!(
            encode(value).as_deref(),
            Ok(text.as_bytes()),
            "encoding {value:?}"
        );
        assert_eq!(
            decode(text.as_bytes()).as_ref(),
            Ok(value),
            "decoding {text}"
        );
    }

    #[test]
    fn golden_messages() {
        let proposal = super::super::dencode::tests::proposal("", "9.0.0a31");
        both_ways(
            &proposal,
            r#"{"OK": true, "Value": [["Framework/TokenManager", "Production", "dteam"], ["RPC", "getToken"], "", "9.0.0a31"]}"#,
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
            r#"{"OK": true, "Value": [null, "dteam_pilot", ["compute.create", "compute.read"], "ce.example.org", "IAM-dteam", 600]}"#,
        );
        both_ways(&Value::s_ok(Value::None), r#"{"OK": true, "Value": null}"#);
        both_ways(
            &Value::s_error(1111, "Unauthorized query ( 1111 : Unauthorized query)"),
            r#"{"OK": false, "Errno": 1111, "Message": "Unauthorized query ( 1111 : Unauthorized query)"}"#,
        );
    }

    #[test]
    fn golden_scalars() {
        both_ways(&Value::Int(1), "1");
        both_ways(&Value::Int(-5), "-5");
        both_ways(
            &Value::BigInt("1180591620717411303424".into()),
            "1180591620717411303424",
        );
        both_ways(&Value::Float(1.5), "1.5");
        both_ways(&Value::Float(1e20), "1e+20");
        both_ways(&Value::Float(1.5e-7), "1.5e-07");
        both_ways(&Value::Float(f64::INFINITY), "Infinity");
        both_ways(&Value::Bool(true), "true");
        both_ways(&Value::Bool(false), "false");
        both_ways(&Value::None, "null");
        both_ways(&s("héllo"), r#""h\u00e9llo""#);
        both_ways(
            &Value::Bytes(vec![0, 0xff]),
            r#"{"__dCls": "b64", "obj": "AP8="}"#,
        );
        assert_eq!(
            encode(&Value::Tuple(vec![Value::Int(1), s("a")])),
            Ok(br#"[1, "a"]"#.to_vec())
        );
        assert_eq!(
            encode(&Value::Dict(vec![(Value::Int(1), Value::Int(2))])),
            Ok(br#"{"1": 2}"#.to_vec())
        );
        let dt = Value::DateTime {
            year: 2024,
            month: 1,
            day: 2,
            hour: 3,
            minute: 4,
            second: 5,
            microsecond: 6,
        };
        assert_eq!(
            encode(&dt),
            Ok(br#"{"__dCls": "dt", "obj": "2024-01-02 03:04:05"}"#.to_vec())
        );
        both_ways(
            &Value::DateTime {
                year: 2024,
                month: 1,
                day: 2,
                hour: 3,
                minute: 4,
                second: 5,
                microsecond: 0,
            },
            r#"{"__dCls": "dt", "obj": "2024-01-02 03:04:05"}"#,
        );
        both_ways(
            &Value::Date {
                year: 2024,
                month: 1,
                day: 2,
            },
            r#"{"__dCls": "date", "obj": "2024-01-02"}"#,
        );
        let time = Value::Time {
            hour: 3,
            minute: 4,
            second: 5,
            microsecond: 0,
        };
        assert_eq!(encode(&time), Err(EncodeError::NotSerializable("time")));
        assert_eq!(encode(&Value::Float(f64::NAN)), Ok(b"NaN".to_vec()));
        assert!(matches!(decode(b"NaN"), Ok(Value::Float(f)) if f.is_nan()));
    }

    #[test]
    fn matches_python_output() {
        // python3 -c 'import json; print(json.dumps([1e16, 1e15, 123456789012345678.0, 1e-5,
        //   0.0001, -0.0, 5e-324, 1.7976931348623157e308, 0.1, 1/3, 1e22, 2.5e-5, float("nan"),
        //   float("inf"), -float("inf"), 10**20, -2**63]))'
        let floats = [
            1e16,
            1e15,
            123456789012345678.0,
            1e-5,
            0.0001,
            -0.0,
            5e-324,
            1.7976931348623157e308,
            0.1,
            1.0 / 3.0,
            1e22,
            2.5e-5,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        let mut list: Vec<Value> = floats.into_iter().map(Value::Float).collect();
        list.push(Value::BigInt("100000000000000000000".into()));
        list.push(Value::Int(i64::MIN));
        assert_eq!(
            String::from_utf8(encode(&Value::List(list)).expect("json")).expect("ascii"),
            "[1e+16, 1000000000000000.0, 1.2345678901234568e+17, 1e-05, 0.0001, -0.0, 5e-324, \
             1.7976931348623157e+308, 0.1, 0.3333333333333333, 1e+22, 2.5e-05, NaN, Infinity, \
             -Infinity, 100000000000000000000, -9223372036854775808]"
        );
        // python3 -c 'import json; print(json.dumps("\u00e9\U0001F600\x00\x1f\x7f\"\\/\n\r\t\b\f\u2028\uffff"))'
        both_ways(
            &s("\u{e9}\u{1F600}\u{0}\u{1f}\u{7f}\"\\/\n\r\t\u{8}\u{c}\u{2028}\u{ffff}"),
            r#""\u00e9\ud83d\ude00\u0000\u001f\u007f\"\\/\n\r\t\b\f\u2028\uffff""#,
        );
        // python3 -c 'import json; print(json.dumps({1:2, 2.5:3, True:4, None:5, False:6,
        //   float("nan"):7, "k":{"n":[]}}))' (Python merges 1 and True first; we keep both)
        let keys = Value::Dict(vec![
            (Value::Int(1), Value::Int(4)),
            (Value::Float(2.5), Value::Int(3)),
            (Value::None, Value::Int(5)),
            (Value::Bool(false), Value::Int(6)),
            (Value::Float(f64::NAN), Value::Int(7)),
            (s("k"), Value::Dict(vec![(s("n"), Value::List(vec![]))])),
        ]);
        assert_eq!(
            encode(&keys),
            Ok(br#"{"1": 4, "2.5": 3, "null": 5, "false": 6, "NaN": 7, "k": {"n": []}}"#.to_vec())
        );
        assert_eq!(
            encode(&Value::Dict(vec![(Value::Tuple(vec![]), Value::None)])),
            Err(EncodeError::BadKey("tuple"))
        );
    }

    #[test]
    fn python_json_input_rules() {
        // python3 -c 'import json; print(json.loads("[1e400, -1e400, 1.0e5, 10000000000000000000000, -0, 1E2]"))'
        assert_eq!(
            decode(b" [1e400, -1e400, 1.0e5, 10000000000000000000000, -0, 1E2]\n"),
            Ok(Value::List(vec![
                Value::Float(f64::INFINITY),
                Value::Float(f64::NEG_INFINITY),
                Value::Float(100000.0),
                Value::BigInt("10000000000000000000000".into()),
                Value::Int(0),
                Value::Float(100.0),
            ]))
        );
        // python3 -c 'import json; print(json.loads("{\"a\":1,\"b\":2,\"a\":3}"))' -> {'a': 3, 'b': 2}
        assert_eq!(
            decode(br#"{"a":1,"b":2,"a":3}"#),
            Ok(Value::Dict(vec![
                (s("a"), Value::Int(3)),
                (s("b"), Value::Int(2))
            ]))
        );
        assert_eq!(decode(b"\xef\xbb\xbf\"x\""), Ok(s("x")));
        assert_eq!(decode(br#""\ud83d\ude00""#), Ok(s("\u{1F600}")));
        assert_eq!(
            decode(br#"{"__dCls": "", "a": 1}"#),
            Ok(Value::Dict(vec![(s("a"), Value::Int(1))]))
        );
        assert_eq!(
            decode(br#"{"__dCls": {"__dCls": "b64", "obj": ""}, "a": 1}"#),
            Ok(Value::Dict(vec![(s("a"), Value::Int(1))]))
        );
        for bad in [
            &b"01"[..],
            b"1.",
            b"[1,]",
            b"{\"a\" 1}",
            b"{'a': 1}",
            b"\"\x01\"",
            b"\"\\x\"",
            b"\"\\ud800\"",
            b"nul",
            b"[1] 2",
            b"-",
            b"+1",
            b"\xff",
        ] {
            assert!(
                matches!(
                    decode(bad),
                    Err(DecodeError::Invalid { .. } | DecodeError::Truncated)
                ),
                "{bad:?} -> {:?}",
                decode(bad)
            );
        }
        assert_eq!(decode(b"  "), Err(DecodeError::Empty));
        assert_eq!(decode(b"[1, "), Err(DecodeError::Truncated));
        let digits = "9".repeat(4301);
        assert!(decode(digits.as_bytes()).is_err());
    }

    #[test]
    fn tagged_objects() {
        // python3: datetime.strptime(s, "%Y-%m-%d %H:%M:%S") for each s
        let dt = |s: &str| decode(format!(r#"{{"__dCls": "dt", "obj": "{s}"}}"#).as_bytes());
        let at = |h, mi, se| Value::DateTime {
            year: 2024,
            month: 1,
            day: 2,
            hour: h,
            minute: mi,
            second: se,
            microsecond: 0,
        };
        assert_eq!(dt("2024-1-2 3:4:5"), Ok(at(3, 4, 5)));
        assert_eq!(dt("2024-01-02  03:04:05"), Ok(at(3, 4, 5)));
        assert_eq!(dt("2024-01- 2 03:04:05"), Ok(at(3, 4, 5)));
        for bad in [
            "2024-01-02T03:04:05",
            "2024-01-02 03:04:05 ",
            "0000-01-01 00:00:00",
            "2024-01-02 24:00:00",
            "2024-01-02 03:04:61",
            "2023-02-29 00:00:00",
        ] {
            assert!(dt(bad).is_err(), "{bad}");
        }
        // python3: base64.b64decode(s) for each s
        let b64 = |s: &str| decode(format!(r#"{{"__dCls": "b64", "obj": "{s}"}}"#).as_bytes());
        for ok in ["AP8=", "AP8=junk", "A P 8 =", "AP9="] {
            assert_eq!(b64(ok), Ok(Value::Bytes(vec![0, 0xff])), "{ok}");
        }
        assert_eq!(b64("AP=="), Ok(Value::Bytes(vec![0])));
        assert_eq!(b64(""), Ok(Value::Bytes(vec![])));
        for bad in ["AP8", "A===", "QUJDRA", "\\u00e9AAA"] {
            assert!(b64(bad).is_err(), "{bad}");
        }
        assert!(decode(br#"{"__dCls": "dt"}"#).is_err());
        assert!(decode(br#"{"__dCls": "dt", "obj": 5}"#).is_err());
    }

    #[test]
    fn refuses_foreign_classes_and_bombs() {
        assert_eq!(
            decode(br#"{"__dCls":"exit","__dMod":"sys"}"#),
            Err(DecodeError::UnknownClass("exit".into()))
        );
        assert_eq!(
            decode(br#"{"__dCls": 1}"#),
            Err(DecodeError::UnknownClass("int".into()))
        );
        let long = format!(r#"{{"__dCls": "{}"}}"#, "x".repeat(10_000));
        let msg = decode(long.as_bytes()).expect_err("refused").to_string();
        assert!(msg.len() < 100, "{msg}");
        let bomb = "[".repeat(100_000);
        assert_eq!(
            decode(bomb.as_bytes()),
            Err(DecodeError::TooDeep { limit: MAX_DEPTH })
        );
        let bomb = "{\"a\":".repeat(100_000);
        assert_eq!(
            decode(bomb.as_bytes()),
            Err(DecodeError::TooDeep { limit: MAX_DEPTH })
        );
    }

    #[test]
    fn round_trips() {
        for v in super::super::test_values::json_safe_values() {
            let bytes = encode(&v).expect("encodable");
            assert_eq!(
                decode(&bytes),
                Ok(v.clone()),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}
