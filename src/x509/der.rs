//! The two DER values openssl-rs has no typed API for: RFC 3820 ProxyCertInfo and the DIRAC group
//! extension (an IA5String). Only definite lengths, as DER requires.

const TAG_IA5_STRING: u8 = 0x16;
const TAG_INTEGER: u8 = 0x02;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Splits one TLV off `input`: `(tag, content, rest)`.
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > size_of::<usize>() || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// `ProxyCertInfo ::= SEQUENCE { pCPathLenConstraint INTEGER OPTIONAL, proxyPolicy ProxyPolicy }`,
/// `ProxyPolicy ::= SEQUENCE { policyLanguage OBJECT IDENTIFIER, policy OCTET STRING OPTIONAL }`;
/// no path length constraint and no policy, as DIRAC and voms-proxy-init write it.
pub(super) fn proxy_cert_info(policy_language: &[u8]) -> Vec<u8> {
    let policy = tlv(TAG_SEQUENCE, &tlv(TAG_OID, policy_language));
    tlv(TAG_SEQUENCE, &policy)
}

/// Content octets of the policy language OID of a ProxyCertInfo value.
pub(super) fn proxy_policy_language(value: &[u8]) -> Option<&[u8]> {
    let (tag, info, _) = read_tlv(value)?;
    if tag != TAG_SEQUENCE {
        return None;
    }
    let (mut tag, mut content, mut rest) = read_tlv(info)?;
    if tag == TAG_INTEGER {
        (tag, content, rest) = read_tlv(rest)?;
    }
    if tag != TAG_SEQUENCE || !rest.is_empty() {
        return None;
    }
    let (tag, language, _) = read_tlv(content)?;
    (tag == TAG_OID).then_some(language)
}

pub(super) fn ia5_string(value: &str) -> Vec<u8> {
    tlv(TAG_IA5_STRING, value.as_bytes())
}

/// Content of a DER IA5String; bytes after it are ignored, as DIRAC's pyasn1 decoder does.
pub(super) fn read_ia5_string(value: &[u8]) -> Option<&[u8]> {
    let (tag, content, _) = read_tlv(value)?;
    (tag == TAG_IA5_STRING).then_some(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lengths_round_trip() {
        let group = "g".repeat(300);
        let encoded = ia5_string(&group);
        assert_eq!(&encoded[..4], &[TAG_IA5_STRING, 0x82, 0x01, 0x2c]);
        assert_eq!(read_ia5_string(&encoded), Some(group.as_bytes()));
    }

    #[test]
    fn policy_language_with_and_without_path_length() {
        let language = [0x2b, 0x06, 0x01];
        assert_eq!(
            proxy_policy_language(&proxy_cert_info(&language)),
            Some(&language[..])
        );
        let policy = tlv(TAG_SEQUENCE, &tlv(TAG_OID, &language));
        let with_len = tlv(TAG_SEQUENCE, &[tlv(TAG_INTEGER, &[3]), policy].concat());
        assert_eq!(proxy_policy_language(&with_len), Some(&language[..]));
    }

    #[test]
    fn truncated_input_is_refused() {
        let encoded = proxy_cert_info(&[0x2b, 0x06, 0x01]);
        assert_eq!(proxy_policy_language(&encoded[..encoded.len() - 1]), None);
        assert_eq!(read_ia5_string(&[TAG_IA5_STRING, 0x85, 1, 2]), None);
    }
}
