#![no_main]

use dirac_wire::form;
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [Option<&str>; 6] = [
    None,
    Some("application/x-www-form-urlencoded"),
    Some("multipart/form-data; boundary=B"),
    Some("multipart/form-data; charset=utf-8; boundary=\"--xyz\""),
    Some("multipart/form-data"),
    Some("text/plain"),
];

fn percent_encode(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    if selector == 0xff {
        if let Ok(query) = std::str::from_utf8(body) {
            let _ = form::parse_query(query);
        }
        return;
    }
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    let Ok(fields) = form::parse_form(content_type, body) else {
        return;
    };
    if content_type == CONTENT_TYPES[1] {
        // Fully percent-encoded pairs must parse back to the same fields.
        let rebuilt: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect();
        let again = form::parse_form(content_type, rebuilt.join("&").as_bytes()).expect("re-parse");
        assert_eq!(again, fields);
    } else if content_type.is_some_and(|c| c.starts_with("multipart")) {
        assert!(fields.iter().all(|(name, _)| !name.is_empty()));
    } else {
        assert!(fields.is_empty());
    }
});
