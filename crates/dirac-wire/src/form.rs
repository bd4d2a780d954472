//! Request bodies of DIRAC's HTTPS protocol, parsed as Tornado
//! (`tornado.httputil.parse_body_arguments`) does.
//!
//! Pairs are returned in wire order with raw values; Tornado's
//! `get_argument` takes the *last* value of a name and strips surrounding
//! whitespace, which is left to the caller. Differences from Tornado, which
//! logs and drops bad bodies instead of failing: malformed input is an
//! error here, names and values must be UTF-8 (Tornado only checks values
//! when they are read), and media types match case-insensitively.

use thiserror::Error;

use super::quote;

/// RFC 2046 allows 70; the cap bounds the substring searches below.
const MAX_BOUNDARY: usize = 200;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FormError {
    /// Tornado ignores such bodies; the caller will usually answer 400.
    #[error("unsupported content type {0:?}")]
    UnsupportedContentType(String),
    #[error("multipart boundary not found")]
    MissingBoundary,
    #[error("multipart boundary too long")]
    BoundaryTooLong,
    #[error("Invalid multipart/form-data: no final boundary")]
    NoFinalBoundary,
    #[error("Invalid multipart/form-data: {0}")]
    MalformedPart(&'static str),
    #[error("Invalid unicode in {0:?}")]
    InvalidUtf8(String),
}

pub type Fields = Vec<(String, String)>;

/// Parses a POST body according to its `Content-Type`. Without a content
/// type Tornado ignores the body, so this returns no fields.
pub fn parse_form(content_type: Option<&str>, body: &[u8]) -> Result<Fields, FormError> {
    let Some(content_type) = content_type else {
        return Ok(Vec::new());
    };
    if starts_with_ignore_case(content_type, "application/x-www-form-urlencoded") {
        parse_urlencoded(body)
    } else if starts_with_ignore_case(content_type, "multipart/form-data") {
        let boundary = content_type
            .split(';')
            .filter_map(|field| field.trim().split_once('='))
            .find(|(k, v)| *k == "boundary" && !v.is_empty())
            .map(|(_, v)| v)
            .ok_or(FormError::MissingBoundary)?;
        let boundary = boundary
            .strip_prefix('"')
            .and_then(|b| b.strip_suffix('"'))
            .unwrap_or(boundary);
        parse_multipart(boundary.as_bytes(), body)
    } else {
        Err(FormError::UnsupportedContentType(quote(content_type)))
    }
}

/// Parses a URL query string (without the `?`).
pub fn parse_query(query: &str) -> Result<Fields, FormError> {
    parse_urlencoded(query.as_bytes())
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// `urllib.parse.parse_qsl(keep_blank_values=True)`: `&`-separated, empty
/// segments skipped, a missing `=` gives an empty value, `+` is a space and
/// invalid `%` escapes are kept literally.
fn parse_urlencoded(body: &[u8]) -> Result<Fields, FormError> {
    body.split(|&b| b == b'&')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            let (name, value) = match segment.iter().position(|&b| b == b'=') {
                Some(eq) => (&segment[..eq], &segment[eq + 1..]),
                None => (segment, &b""[..]),
            };
            let name = utf8(unquote_plus(name))?;
            let value = utf8(unquote_plus(value)).map_err(|_| invalid_utf8(&name))?;
            Ok((name, value))
        })
        .collect()
}

fn unquote_plus(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(i + 1..i + 3).and_then(|h| {
                    let h = std::str::from_utf8(h).ok()?;
                    u8::from_str_radix(h, 16)
                        .ok()
                        .filter(|_| h.bytes().all(|c| c.is_ascii_hexdigit()))
                });
                if let Some(byte) = hex {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn invalid_utf8(name: &str) -> FormError {
    FormError::InvalidUtf8(quote(name))
}

fn utf8(bytes: Vec<u8>) -> Result<String, FormError> {
    String::from_utf8(bytes).map_err(|e| invalid_utf8(&String::from_utf8_lossy(e.as_bytes())))
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// `tornado.httputil.parse_multipart_form_data`. Parts carrying a
/// `filename` are uploads, which Tornado keeps out of the arguments; they
/// are skipped likewise.
fn parse_multipart(boundary: &[u8], body: &[u8]) -> Result<Fields, FormError> {
    if boundary.len() > MAX_BOUNDARY {
        return Err(FormError::BoundaryTooLong);
    }
    let closing = [b"--", boundary, b"--"].concat();
    let final_at = body
        .windows(closing.len())
        .rposition(|w| w == closing)
        .ok_or(FormError::NoFinalBoundary)?;
    let data = &body[..final_at];
    let delimiter = [b"--", boundary, b"\r\n"].concat();
    let mut parts = Vec::new();
    let mut start = 0;
    while let Some(at) = find(data, &delimiter, start) {
        parts.push(&data[start..at]);
        start = at + delimiter.len();
    }
    parts.push(&data[start..]);
    let mut fields = Vec::new();
    // The first piece precedes the first delimiter: a preamble, not a part.
    for part in parts.into_iter().skip(1) {
        if part.is_empty() {
            continue;
        }
        let eoh = find(part, b"\r\n\r\n", 0).ok_or(FormError::MalformedPart("missing headers"))?;
        let headers = std::str::from_utf8(&part[..eoh])
            .map_err(|_| FormError::MalformedPart("headers are not UTF-8"))?;
        let disposition = header(headers, "Content-Disposition").unwrap_or_default();
        let (kind, params) = parse_header(&disposition);
        let value = part
            .get(eoh + 4..)
            .and_then(|v| v.strip_suffix(b"\r\n"))
            .ok_or(FormError::MalformedPart("part does not end with CRLF"))?;
        if !kind.eq_ignore_ascii_case("form-data") {
            return Err(FormError::MalformedPart("not form-data"));
        }
        let name = param(&params, "name")
            .filter(|n| !n.is_empty())
            .ok_or(FormError::MalformedPart("value missing name"))?;
        if param(&params, "filename").is_some_and(|f| !f.is_empty()) {
            continue;
        }
        let value = String::from_utf8(value.to_vec()).map_err(|_| invalid_utf8(&name))?;
        fields.push((name, value));
    }
    Ok(fields)
}

fn param(params: &[(String, Option<String>)], name: &str) -> Option<String> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.clone())
}

/// Value of a header (`HTTPHeaders.parse`: CRLF or LF lines, continuation
/// lines start with whitespace, names case-insensitive; the last wins, which
/// is what `headers.get` gives for a single-valued header in practice).
fn header(block: &str, name: &str) -> Option<String> {
    let mut found: Option<String> = None;
    let mut current: Option<(String, String)> = None;
    let flush = |cur: Option<(String, String)>, found: &mut Option<String>| {
        if let Some((k, v)) = cur
            && k.eq_ignore_ascii_case(name)
        {
            *found = Some(v);
        }
    };
    for line in block.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = current.as_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        flush(current.take(), &mut found);
        if let Some((k, v)) = line.split_once(':') {
            current = Some((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    flush(current, &mut found);
    found
}

/// Tornado's `_parse_header`: `kind; k=v; k="quoted \"v\""`.
fn parse_header(line: &str) -> (String, Vec<(String, Option<String>)>) {
    let mut pieces = split_params(line).into_iter();
    let kind = pieces.next().unwrap_or_default().trim().to_owned();
    let params = pieces
        .map(|p| match p.split_once('=') {
            Some((k, v)) => {
                let v = v.trim();
                let v = match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                    Some(inner) => inner.replace("\\\\", "\\").replace("\\\"", "\""),
                    None => v.to_owned(),
                };
                (k.trim().to_ascii_lowercase(), Some(v))
            }
            None => (p.trim().to_owned(), None),
        })
        .collect();
    (kind, params)
}

/// Splits on `;` outside double quotes (a backslash escapes a quote).
fn split_params(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in line.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Fields {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const URLENCODED: Option<&str> = Some("application/x-www-form-urlencoded");

    #[test]
    fn urlencoded_as_dirac_sends_it() {
        let body =
            b"method=echo&args=%5B%22hello+from+DIRAC+client%22%5D&clientVO=dirac&clientSetup=None";
        assert_eq!(
            parse_form(URLENCODED, body),
            Ok(pairs(&[
                ("method", "echo"),
                ("args", "[\"hello from DIRAC client\"]"),
                ("clientVO", "dirac"),
                ("clientSetup", "None"),
            ]))
        );
        let body =
            b"method=getToken&args=%5Bnull%2C+%22dteam_pilot%22%5D&extraCredentials=%22hosts%22";
        let fields = parse_form(
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            body,
        )
        .expect("form");
        assert_eq!(fields[1].1, "[null, \"dteam_pilot\"]");
        assert_eq!(fields[2].1, "\"hosts\"");
    }

    #[test]
    fn urlencoded_edge_cases() {
        // Python's unquote keeps bad escapes literally.
        assert_eq!(
            parse_form(URLENCODED, b"a=%zz%4&b&&=c&d=%C3%A9%20"),
            Ok(pairs(&[("a", "%zz%4"), ("b", ""), ("", "c"), ("d", "é ")]))
        );
        assert_eq!(
            parse_form(URLENCODED, b"args=%ff"),
            Err(FormError::InvalidUtf8("args".into()))
        );
        assert_eq!(
            parse_query("method=ping&x=1+2"),
            Ok(pairs(&[("method", "ping"), ("x", "1 2")]))
        );
        assert_eq!(parse_form(None, b"method=ping"), Ok(vec![]));
        assert!(matches!(
            parse_form(Some("application/json"), b"{}"),
            Err(FormError::UnsupportedContentType(_))
        ));
    }

    #[test]
    fn multipart_two_fields() {
        let body = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"method\"\r\n\r\necho\r\n\
--XyZ\r\ncontent-disposition: form-data; name=args\r\nContent-Type: text/plain\r\n\r\n[\"a;b\", \"\xc3\xa9\"]\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"up\"; filename=\"f.txt\"\r\n\r\nfile\r\n--XyZ--\r\n";
        for ct in [
            "multipart/form-data; boundary=XyZ",
            "multipart/form-data; boundary=\"XyZ\"",
        ] {
            assert_eq!(
                parse_form(Some(ct), body),
                Ok(pairs(&[("method", "echo"), ("args", "[\"a;b\", \"é\"]")]))
            );
        }
    }

    #[test]
    fn multipart_refusals() {
        let ct = Some("multipart/form-data; boundary=B");
        assert_eq!(
            parse_form(Some("multipart/form-data"), b"--B--"),
            Err(FormError::MissingBoundary)
        );
        assert_eq!(parse_form(ct, b"--B\r\n"), Err(FormError::NoFinalBoundary));
        assert_eq!(
            parse_form(
                ct,
                b"--B\r\nContent-Disposition: form-data; name=a\r\nx--B--"
            ),
            Err(FormError::MalformedPart("missing headers"))
        );
        assert_eq!(
            parse_form(
                ct,
                b"--B\r\nContent-Disposition: form-data\r\n\r\nx\r\n--B--"
            ),
            Err(FormError::MalformedPart("value missing name"))
        );
        assert_eq!(
            parse_form(
                ct,
                b"--B\r\nContent-Disposition: attachment; name=a\r\n\r\nx\r\n--B--"
            ),
            Err(FormError::MalformedPart("not form-data"))
        );
        let long = format!(
            "multipart/form-data; boundary={}",
            "b".repeat(MAX_BOUNDARY + 1)
        );
        assert_eq!(
            parse_form(Some(&long), b""),
            Err(FormError::BoundaryTooLong)
        );
    }
}
