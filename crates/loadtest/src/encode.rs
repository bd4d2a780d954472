//! Byte-exact encodings that DIRAC clients produce, so the load looks like real traffic:
//! Python `json.dumps` defaults (separators `", "`/`": "`, `ensure_ascii=True`) and
//! `urllib.parse.urlencode` (`quote_plus`).

use serde_json::Value;

use dirac_wire::{Value as DiracValue, jencode};

/// Serialises `value` the way Python's `json.dumps` does: DIRAC's JEncode, which the service
/// itself writes.
pub(crate) fn python_json(value: &Value) -> Vec<u8> {
    jencode::encode(&DiracValue::from_json(value.clone()))
        .expect("JSON values have only encodable types and string keys")
}

/// Appends `s` encoded like Python's `quote_plus` (what `requests` uses for form bodies).
pub(crate) fn form_encode_into(out: &mut Vec<u8>, s: &[u8]) {
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
        // A captured DIRAC request body (docs/DIRAC.md#https-requests).
        let args = python_json(&json!([{"a": [1, 2.5, "x"], "b": null, "c": true}]));
        let mut out = Vec::new();
        form_encode_into(&mut out, &args);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "%5B%7B%22a%22%3A+%5B1%2C+2.5%2C+%22x%22%5D%2C+%22b%22%3A+null%2C+%22c%22%3A+true%7D%5D"
        );
    }
}
