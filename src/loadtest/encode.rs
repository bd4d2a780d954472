//! Byte-exact encodings that DIRAC clients produce, so the load looks like real traffic:
//! Python `json.dumps` defaults (separators `", "`/`": "`, `ensure_ascii=True`) and
//! `urllib.parse.urlencode` (`quote_plus`).

use serde_json::Value;
use serde_json::ser::Formatter;
use std::io;

/// `serde_json` formatter reproducing Python's `json.dumps(obj)` output.
struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    // `ensure_ascii=True`: every non-ASCII character becomes `\uXXXX` (UTF-16 units).
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if c.is_ascii() {
                continue;
            }
            w.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(w, "\\u{unit:04x}")?;
            }
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

/// Serialises `value` the way Python's `json.dumps` does.
pub(super) fn python_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    serde::Serialize::serialize(value, &mut ser)
        .expect("serialising a serde_json::Value into a Vec cannot fail");
    out
}

/// Appends `s` encoded like Python's `quote_plus` (what `requests` uses for form bodies).
pub(super) fn form_encode_into(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => out.push(b),
            b' ' => out.push(b'+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_python_json_dumps() {
        let v = json!({"OK": true, "Value": [["Framework/TokenManager", "None", "unknown"], ["RPC", "echo"], "", "9.0"]});
        assert_eq!(
            String::from_utf8(python_json(&v)).unwrap(),
            r#"{"OK": true, "Value": [["Framework/TokenManager", "None", "unknown"], ["RPC", "echo"], "", "9.0"]}"#
        );
        assert_eq!(
            python_json(&json!(["h\u{e9}llo \u{1F600}"])),
            br#"["h\u00e9llo \ud83d\ude00"]"#
        );
        assert_eq!(python_json(&json!({})), b"{}");
    }

    #[test]
    fn matches_python_quote_plus() {
        // Appendix D.2.2 of the protocol notes: a captured DIRAC request body.
        let args = python_json(&json!([{"a": [1, 2.5, "x"], "b": null, "c": true}]));
        let mut out = Vec::new();
        form_encode_into(&mut out, &args);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "%5B%7B%22a%22%3A+%5B1%2C+2.5%2C+%22x%22%5D%2C+%22b%22%3A+null%2C+%22c%22%3A+true%7D%5D"
        );
    }
}
