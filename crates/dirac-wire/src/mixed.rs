//! MixedEncode: DIRAC 8 sends DEncode, DIRAC 9 sends JSON, both accept
//! either; a server should answer in the encoding the request used.

use super::{DecodeError, EncodeError, Value, dencode, jencode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    DEncode,
    Json,
}

/// Decodes a DISET payload and reports which encoding it was in.
///
/// Python always tries DEncode first and falls back to JSON. Top-level
/// messages are dicts, so `d` means DEncode and anything else is tried as
/// JSON first; on error the other decoder is tried. No input decodes
/// differently in the two orders (JSON texts DEncode accepts, `null` and
/// `n…`, give `None` either way). The error reported is the primary one.
/// Trailing bytes after a DEncode value are ignored, as in Python.
pub fn decode_message(data: &[u8]) -> Result<(Value, Encoding), DecodeError> {
    let dencode = || dencode::decode(data).map(|(v, _)| (v, Encoding::DEncode));
    let json = || jencode::decode(data).map(|v| (v, Encoding::Json));
    if data.first() == Some(&b'd') {
        dencode().or_else(|e| json().map_err(|_| e))
    } else {
        json().or_else(|e| dencode().map_err(|_| e))
    }
}

pub fn encode_message(value: &Value, encoding: Encoding) -> Result<Vec<u8>, EncodeError> {
    match encoding {
        Encoding::DEncode => Ok(dencode::encode(value)),
        Encoding::Json => jencode::encode(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_encoding_that_decodes() {
        let ok = Value::s_ok(Value::None);
        assert_eq!(
            decode_message(b"ds2:OKb1s5:Valuene"),
            Ok((ok.clone(), Encoding::DEncode))
        );
        assert_eq!(
            decode_message(br#"{"OK": true, "Value": null}"#),
            Ok((ok.clone(), Encoding::Json))
        );
        // Trailing bytes after DEncode are ignored, as Python does.
        assert_eq!(
            decode_message(b"ds2:OKb1s5:Valuenejunk"),
            Ok((ok, Encoding::DEncode))
        );
        assert_eq!(decode_message(b"null"), Ok((Value::None, Encoding::Json)));
        // Not JSON: Python's DEncode reads the leading `n` and stops.
        assert_eq!(decode_message(b"nan"), Ok((Value::None, Encoding::DEncode)));
        assert!(decode_message(b"").is_err());
        assert!(decode_message(b"dx").is_err());
        assert!(decode_message(b"{x").is_err());
    }

    #[test]
    fn encodes_in_the_requested_encoding() {
        let v = Value::s_ok(Value::List(vec![Value::Int(1)]));
        assert_eq!(
            encode_message(&v, Encoding::DEncode),
            Ok(b"ds2:OKb1s5:Valueli1eee".to_vec())
        );
        assert_eq!(
            encode_message(&v, Encoding::Json),
            Ok(br#"{"OK": true, "Value": [1]}"#.to_vec())
        );
        let t = Value::Time {
            hour: 1,
            minute: 2,
            second: 3,
            microsecond: 0,
        };
        assert_eq!(
            encode_message(&t, Encoding::Json),
            Err(EncodeError::NotSerializable("time"))
        );
    }

    #[test]
    fn round_trips_in_both_encodings() {
        for v in super::super::test_values::json_safe_values() {
            for enc in [Encoding::DEncode, Encoding::Json] {
                let bytes = encode_message(&v, enc).expect("encodable");
                let (back, _) = decode_message(&bytes).expect("decodable");
                assert_eq!(back, v, "{enc:?}");
            }
        }
    }
}
