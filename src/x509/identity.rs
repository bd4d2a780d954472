//! What DIRAC derives from a peer's certificate chain (`X509Chain.__checkProxyness` and
//! `getCredentials(withRegistryInfo=False)`), docs/DIRAC.md#callers-with-a-certificate.
//!
//! The chain is the one the peer sent, leaf first, not the chain OpenSSL built: DIRAC works on
//! the sent one, and `secondsLeft` must not see the trust anchor unless the peer sent it. Only
//! call [`PeerChain::analyse`] on chains OpenSSL has verified (the [`super::tls`] acceptor does):
//! the analysis checks that each certificate is signed by the next one, not that the chain ends
//! at a trusted CA.

use std::cmp::Ordering;
use std::fmt;

use openssl::asn1::{Asn1Object, Asn1Time};
use openssl::error::ErrorStack;
use openssl::nid::Nid;
use openssl::ssl::SslRef;
use openssl::x509::{X509, X509NameRef, X509Ref};

use super::{der, oid, raw};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("empty certificate chain")]
    EmptyChain,
    #[error("cannot format a distinguished name of the chain")]
    UnprintableName,
    #[error("DIRAC group extension (1.2.42.42) of {subject} is not a UTF-8 IA5String")]
    MalformedGroup { subject: String },
    #[error(transparent)]
    OpenSsl(#[from] ErrorStack),
}

/// The DN in OpenSSL `X509_NAME_oneline` format, DIRAC's and its Registry's format, e.g.
/// `/C=ch/O=DIRAC/OU=DIRAC CI/CN=ciuser/emailAddress=x@y`: short names, RDNs in certificate
/// order, bytes outside printable ASCII as `\xHH`. It is produced by the linked libcrypto, so it
/// matches DIRAC (M2Crypto) on the same OpenSSL generation byte for byte. OpenSSL 3 joins the
/// members of a multi-valued RDN with `+` and escapes `/` and `+` inside values as `\/`, `\+`;
/// OpenSSL 1.x wrote each member as its own `/K=V` and escaped nothing.
///
/// Empty only if libcrypto cannot format the name (allocation failure, name over 1 MiB);
/// [`PeerChain::analyse`] refuses such chains instead.
pub fn dn_string(name: &X509NameRef) -> String {
    raw::name_oneline(name).unwrap_or_default()
}

fn dn(name: &X509NameRef) -> Result<String, IdentityError> {
    raw::name_oneline(name).ok_or(IdentityError::UnprintableName)
}

/// The raw chain facts of DIRAC's credentials dictionary (docs/DIRAC.md#whoami; its key in
/// brackets). Registry facts (`username`, `group` fallback to the default group, `VO`,
/// `properties`, `validDN`, `validGroup`) are added by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainIdentity {
    /// Leaf subject (`subject`).
    pub subject: String,
    /// Leaf issuer (`issuer`).
    pub issuer: String,
    /// Smallest remaining validity over the chain, never negative (`secondsLeft`).
    pub seconds_left: i64,
    /// `isProxy`.
    pub is_proxy: bool,
    /// `isLimitedProxy`; false unless `is_proxy`.
    pub is_limited_proxy: bool,
    /// End-entity subject for a proxy, leaf subject otherwise (`DN`).
    pub dn: String,
    /// End-entity subject; proxies only (`identity`).
    pub identity: Option<String>,
    /// Value of the DIRAC group extension, the first non-empty one from the end-entity side
    /// towards the leaf; proxies only, as DIRAC reads it only for them (source of `group`).
    pub group_extension: Option<String>,
}

/// A peer's certificates as sent, leaf first.
#[derive(Clone)]
pub struct PeerChain {
    certs: Vec<X509>,
}

impl fmt::Debug for PeerChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.certs.iter().map(|cert| dn_string(cert.subject_name())))
            .finish()
    }
}

/// What `__checkProxyDN` finds between a certificate and the next one (DIRAC's 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyStep {
    NotProxy,
    Proxy,
    Limited,
}

impl PeerChain {
    pub fn new(certs: Vec<X509>) -> Result<Self, IdentityError> {
        if certs.is_empty() {
            return Err(IdentityError::EmptyChain);
        }
        Ok(Self { certs })
    }

    /// The client chain of a server-side TLS connection (full or resumed handshake), `None`
    /// without a client certificate.
    pub fn from_ssl(ssl: &SslRef) -> Option<Self> {
        let leaf = ssl.peer_certificate()?;
        let sent = ssl
            .peer_cert_chain()
            .map(|stack| stack.iter())
            .into_iter()
            .flatten();
        // OpenSSL leaves the leaf out of the server-side stack, but keeps it on the client side
        // (and some forks do on both): never count it twice.
        let rest: Vec<X509> = sent
            .skip_while(|cert| **cert == leaf)
            .map(ToOwned::to_owned)
            .collect();
        let mut certs = Vec::with_capacity(rest.len() + 1);
        certs.push(leaf);
        certs.extend(rest);
        Some(Self { certs })
    }

    pub fn certs(&self) -> &[X509] {
        &self.certs
    }

    /// DIRAC's `__checkProxyness` followed by the chain part of `getCredentials`.
    ///
    /// Walking from the leaf, a certificate is a proxy of the next one if the next one signed it,
    /// its subject is the next one's subject plus one trailing `/CN=<x>`, and either `<x>` is
    /// `proxy`/`limited proxy` (legacy Globus) or it carries ProxyCertInfo (RFC 3820). The first
    /// certificate that is not a proxy of the next is the end-entity certificate. A certificate not
    /// signed by the next one, a leaf that is not a proxy, or a full proxy below a limited one make
    /// the whole chain "not a proxy" (DN = leaf subject).
    ///
    /// One check is added to DIRAC's: a proxy's issuer field must name the next certificate.
    /// DIRAC relies on the signature alone; real proxy chains always satisfy it.
    pub fn analyse(&self) -> Result<ChainIdentity, IdentityError> {
        let certs = &self.certs;
        let leaf = &certs[0];
        let subject = dn(leaf.subject_name())?;
        let issuer = dn(leaf.issuer_name())?;
        let seconds_left = seconds_left(certs)?;

        let (identity, is_limited_proxy) = match end_entity_position(certs)? {
            Some((position, limited)) => (Some(dn(certs[position].subject_name())?), limited),
            None => (None, false),
        };
        let is_proxy = identity.is_some();
        let group_extension = if is_proxy {
            group_extension(certs)?
        } else {
            None
        };
        Ok(ChainIdentity {
            dn: identity.clone().unwrap_or_else(|| subject.clone()),
            subject,
            issuer,
            seconds_left,
            is_proxy,
            is_limited_proxy,
            identity,
            group_extension,
        })
    }
}

/// Position of the end-entity certificate and whether the proxy is limited; `None` if the chain
/// is not a proxy. Mirrors `__checkProxyness` step by step.
fn end_entity_position(certs: &[X509]) -> Result<Option<(usize, bool)>, IdentityError> {
    if certs.len() < 2 {
        return Ok(None);
    }
    // DIRAC's default `__firstProxyStep` is len - 2: every certificate but the last is a proxy.
    let mut end_entity = certs.len() - 1;
    let mut limited = false;
    let mut previous = Some(ProxyStep::Limited);
    for (step, pair) in certs.windows(2).enumerate() {
        let (cert, next) = (&pair[0], &pair[1]);
        if !signed_by(cert, next) {
            return Ok(None);
        }
        let Some(previous_step) = previous else {
            continue;
        };
        let current = proxy_step(cert, next)?;
        match current {
            ProxyStep::NotProxy if step == 0 => return Ok(None),
            ProxyStep::NotProxy => end_entity = step,
            ProxyStep::Limited if previous_step != ProxyStep::Limited => return Ok(None),
            ProxyStep::Limited => limited = true,
            ProxyStep::Proxy => {}
        }
        previous = (current != ProxyStep::NotProxy).then_some(current);
    }
    Ok(Some((end_entity, limited)))
}

fn signed_by(cert: &X509Ref, issuer: &X509Ref) -> bool {
    issuer
        .public_key()
        .and_then(|key| cert.verify(&key))
        .unwrap_or(false)
}

/// DIRAC's `__checkProxyDN`, on the same `X509_NAME_oneline` strings.
fn proxy_step(cert: &X509Ref, issuer: &X509Ref) -> Result<ProxyStep, IdentityError> {
    let subject = dn(cert.subject_name())?;
    let Some((prefix, last)) = subject.rsplit_once('/') else {
        return Ok(ProxyStep::NotProxy);
    };
    let mut entry = last.split('=');
    if entry.next() != Some("CN") {
        return Ok(ProxyStep::NotProxy);
    }
    // DIRAC takes the text between the first and second '='; where there is none it raises,
    // failing the authentication. Here that is just not a proxy.
    let Some(value) = entry.next() else {
        return Ok(ProxyStep::NotProxy);
    };
    let limited = match value {
        "proxy" => false,
        "limited proxy" => true,
        _ => match proxy_policy_language(cert)? {
            Some(language) => language == Asn1Object::from_str(oid::POLICY_LIMITED)?.as_slice(),
            None => return Ok(ProxyStep::NotProxy),
        },
    };
    if prefix != dn(issuer.subject_name())? || !same_name(cert.issuer_name(), issuer.subject_name())
    {
        return Ok(ProxyStep::NotProxy);
    }
    Ok(if limited {
        ProxyStep::Limited
    } else {
        ProxyStep::Proxy
    })
}

fn same_name(a: &X509NameRef, b: &X509NameRef) -> bool {
    matches!(a.try_cmp(b), Ok(Ordering::Equal))
}

/// Policy language OID (content octets) of the ProxyCertInfo extension, if the certificate has
/// one that parses. DIRAC reads it from OpenSSL's text rendering and treats anything without a
/// "Policy Language" line as not a proxy; so does this.
fn proxy_policy_language(cert: &X509Ref) -> Result<Option<Vec<u8>>, ErrorStack> {
    let pci = Asn1Object::from_str(oid::PROXY_CERT_INFO)?;
    let info = raw::extension_value(cert, &pci);
    Ok(info.and_then(|value| der::proxy_policy_language(&value).map(<[u8]>::to_vec)))
}

pub(super) fn has_proxy_cert_info(cert: &X509Ref) -> Result<bool, ErrorStack> {
    let pci = Asn1Object::from_str(oid::PROXY_CERT_INFO)?;
    Ok(raw::extension_value(cert, &pci).is_some())
}

/// A correctly named legacy Globus proxy of `issuer`: no ProxyCertInfo, issued under the
/// issuer's subject, and a subject equal to it plus one final RDN `CN=proxy` or
/// `CN=limited proxy`.
pub(super) fn is_legacy_proxy_of(cert: &X509Ref, issuer: &X509Ref) -> bool {
    let subject = cert.subject_name();
    let issuer_subject = issuer.subject_name();
    let Some(last) = subject.entries().last() else {
        return false;
    };
    let cn = match last.data().as_slice() {
        b"proxy" => "proxy",
        b"limited proxy" => "limited proxy",
        _ => return false,
    };
    // With the entry count, the string comparison also rules out a multi-valued last RDN
    // (printed `+CN=proxy`) and a `/` hidden in a value (printed `\/`).
    let expected = raw::name_oneline(issuer_subject).map(|issuer| format!("{issuer}/CN={cn}"));
    last.object().nid() == Nid::COMMONNAME
        && subject.entries().count() == issuer_subject.entries().count() + 1
        && expected.is_some()
        && expected == raw::name_oneline(subject)
        && same_name(cert.issuer_name(), issuer_subject)
        && matches!(has_proxy_cert_info(cert), Ok(false))
}

/// DIRAC's `getRemainingSecs`: per certificate `max(0, notAfter - now)`, minimum over the chain.
fn seconds_left(certs: &[X509]) -> Result<i64, ErrorStack> {
    let now = Asn1Time::days_from_now(0)?;
    let mut left = i64::MAX;
    for cert in certs {
        let diff = now.diff(cert.not_after())?;
        left = left.min((i64::from(diff.days) * 86_400 + i64::from(diff.secs)).max(0));
    }
    Ok(left)
}

/// DIRAC's `getDIRACGroup(ignoreDefault=True)`: from the last certificate of the chain towards
/// the leaf, the first non-empty group extension.
fn group_extension(certs: &[X509]) -> Result<Option<String>, IdentityError> {
    let group_oid = Asn1Object::from_str(oid::DIRAC_GROUP)?;
    for cert in certs.iter().rev() {
        let Some(value) = raw::extension_value(cert, &group_oid) else {
            continue;
        };
        let group = der::read_ia5_string(&value)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .ok_or_else(|| IdentityError::MalformedGroup {
                subject: dn_string(cert.subject_name()),
            })?;
        if !group.is_empty() {
            return Ok(Some(group.to_owned()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openssl::x509::X509NameBuilder;

    use super::super::pki::tests::shared;
    use super::super::pki::{self, Ca, CertifiedKey, DemoPki, ProxyKind, Validity};
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn name_of(dn: &str) -> openssl::x509::X509Name {
        pki::parse_dn(dn).unwrap()
    }

    #[test]
    fn dn_plain_and_email() {
        let dn = "/C=ch/O=DIRAC/OU=DIRAC CI/CN=ciuser/emailAddress=x@y";
        assert_eq!(dn_string(&name_of(dn)), dn);
    }

    #[test]
    fn dn_built_without_our_parser() {
        let mut builder = X509NameBuilder::new().unwrap();
        builder
            .append_entry_by_nid(Nid::DOMAINCOMPONENT, "org")
            .unwrap();
        builder
            .append_entry_by_nid(Nid::COMMONNAME, "Jane Doe")
            .unwrap();
        builder
            .append_entry_by_nid(Nid::PKCS9_EMAILADDRESS, "jane@example.org")
            .unwrap();
        let name = builder.build();
        assert_eq!(
            dn_string(&name),
            "/DC=org/CN=Jane Doe/emailAddress=jane@example.org"
        );
    }

    #[test]
    fn dn_utf8_bytes_are_escaped() {
        // "Jürgen Ωmega" in UTF-8; X509_NAME_oneline escapes each byte, hex in upper case.
        assert_eq!(
            dn_string(&name_of("/O=DIRAC/CN=Jürgen Ωmega")),
            "/O=DIRAC/CN=J\\xC3\\xBCrgen \\xCE\\xA9mega"
        );
    }

    #[test]
    fn dn_multi_valued_rdn_is_joined_with_plus() {
        let name = name_of("/DC=org/OU=Users+CN=alice+UID=42/CN=alice");
        assert_eq!(name.entries().count(), 5);
        assert_eq!(
            dn_string(&name),
            "/DC=org/OU=Users+CN=alice+UID=42/CN=alice"
        );
    }

    #[test]
    fn dn_separators_inside_values_are_escaped() {
        let mut builder = X509NameBuilder::new().unwrap();
        builder
            .append_entry_by_nid(Nid::ORGANIZATIONNAME, "A/B+C")
            .unwrap();
        builder
            .append_entry_by_nid(Nid::COMMONNAME, "robot: x=y")
            .unwrap();
        assert_eq!(dn_string(&builder.build()), "/O=A\\/B\\+C/CN=robot: x=y");
    }

    #[test]
    fn dn_of_certificate_subject_and_issuer() {
        let ca = Ca::new("/C=ch/O=DIRAC/CN=Test CA", Validity::from_now(DAY)).unwrap();
        let user = ca.issue_user(
            "/C=ch/O=DIRAC/OU=DIRAC CI/CN=ciuser/emailAddress=x@y",
            Validity::from_now(DAY),
        );
        let user = user.unwrap();
        assert_eq!(
            dn_string(user.cert.subject_name()),
            "/C=ch/O=DIRAC/OU=DIRAC CI/CN=ciuser/emailAddress=x@y"
        );
        assert_eq!(
            dn_string(user.cert.issuer_name()),
            "/C=ch/O=DIRAC/CN=Test CA"
        );
    }

    fn analyse(certs: Vec<X509>) -> ChainIdentity {
        PeerChain::new(certs).unwrap().analyse().unwrap()
    }

    /// The chain a client holding `key` sends: its certificate, then the issuing chain.
    fn sent(key: &CertifiedKey) -> Vec<X509> {
        [vec![key.cert.clone()], key.chain.clone()].concat()
    }

    #[test]
    fn sent_trust_anchor_is_not_an_identity() {
        let pki = shared();
        let proxy = pki
            .user
            .proxy(ProxyKind::Rfc3820)
            .group("dirac_user")
            .issue()
            .unwrap();
        let id = analyse([sent(&proxy), vec![pki.ca.cert().to_owned()]].concat());
        assert!(id.is_proxy);
        assert_eq!(id.dn, DemoPki::USER_DN);
        assert_eq!(id.group_extension.as_deref(), Some("dirac_user"));
    }

    #[test]
    fn host_certificate_with_its_ca() {
        let pki = shared();
        let id = analyse(vec![pki.host.cert.clone(), pki.ca.cert().to_owned()]);
        assert!(!id.is_proxy && id.identity.is_none());
        assert_eq!(id.dn, id.subject);
        assert_eq!(id.issuer, DemoPki::CA_DN);
    }

    #[test]
    fn full_proxy_below_a_limited_one_is_not_a_proxy() {
        let pki = shared();
        let limited = pki.user.proxy(ProxyKind::Rfc3820Limited).issue().unwrap();
        let full = limited.proxy(ProxyKind::Rfc3820).issue().unwrap();
        let id = analyse(sent(&full));
        assert!(!id.is_proxy && !id.is_limited_proxy);
        assert_eq!(id.dn, id.subject);

        let limited_again = limited.proxy(ProxyKind::LegacyLimited).issue().unwrap();
        let id = analyse(sent(&limited_again));
        assert!(id.is_proxy && id.is_limited_proxy);
        assert_eq!(id.dn, DemoPki::USER_DN);
    }

    #[test]
    fn limited_below_a_full_proxy_is_limited() {
        let pki = shared();
        let full = pki.user.proxy(ProxyKind::Rfc3820).issue().unwrap();
        let limited = full.proxy(ProxyKind::Rfc3820Limited).issue().unwrap();
        let id = analyse(sent(&limited));
        assert!(id.is_proxy && id.is_limited_proxy);
    }

    #[test]
    fn chain_not_signed_in_order_is_not_a_proxy() {
        let pki = shared();
        let forged = pki
            .user
            .proxy(ProxyKind::Rfc3820)
            .signed_by(&pki.host.key)
            .issue()
            .unwrap();
        let id = analyse(vec![forged.cert.clone(), pki.user.cert.clone()]);
        assert!(!id.is_proxy);
        assert_eq!(id.dn, id.subject);
    }

    #[test]
    fn misnamed_proxy_makes_its_issuer_the_end_entity() {
        let pki = shared();
        let proxy = pki.user.proxy(ProxyKind::Rfc3820).issue().unwrap();
        let odd = proxy
            .proxy(ProxyKind::Rfc3820)
            .subject_override(&format!("{}/CN=1/CN=2", DemoPki::USER_DN))
            .issue()
            .unwrap();
        let id = analyse(sent(&odd));
        assert!(!id.is_proxy, "a misnamed leaf means no proxy at all");

        let on_top = odd.proxy(ProxyKind::Rfc3820).issue().unwrap();
        let id = analyse(sent(&on_top));
        assert!(id.is_proxy);
        assert_eq!(id.dn, format!("{}/CN=1/CN=2", DemoPki::USER_DN));
    }

    #[test]
    fn seconds_left_is_the_minimum_and_never_negative() {
        let pki = shared();
        let short = pki
            .user
            .proxy(ProxyKind::Rfc3820)
            .validity(Validity::from_now(Duration::from_secs(600)));
        let short = short.issue().unwrap();
        let id = analyse(vec![short.cert.clone(), pki.user.cert.clone()]);
        assert!(
            (590..=600).contains(&id.seconds_left),
            "{}",
            id.seconds_left
        );

        let expired = pki
            .user
            .proxy(ProxyKind::Rfc3820)
            .validity(Validity::expired())
            .issue()
            .unwrap();
        assert_eq!(
            analyse(vec![expired.cert.clone(), pki.user.cert.clone()]).seconds_left,
            0
        );
    }

    #[test]
    fn group_is_searched_from_the_end_entity_side() {
        let pki = shared();
        let outer = pki
            .user
            .proxy(ProxyKind::Rfc3820)
            .group("first")
            .issue()
            .unwrap();
        let inner = outer
            .proxy(ProxyKind::Rfc3820)
            .group("second")
            .issue()
            .unwrap();
        let id = analyse(sent(&inner));
        assert_eq!(id.group_extension.as_deref(), Some("first"));

        let empty = pki
            .user
            .proxy(ProxyKind::Rfc3820)
            .group("")
            .issue()
            .unwrap();
        let named = empty
            .proxy(ProxyKind::Rfc3820)
            .group("second")
            .issue()
            .unwrap();
        let id = analyse(sent(&named));
        assert_eq!(id.group_extension.as_deref(), Some("second"));
    }

    #[test]
    fn empty_chain_is_refused() {
        assert!(matches!(
            PeerChain::new(Vec::new()),
            Err(IdentityError::EmptyChain)
        ));
    }

    #[test]
    fn legacy_naming_rules() {
        let pki = shared();
        let legacy = pki.user.proxy(ProxyKind::Legacy).issue().unwrap();
        assert!(is_legacy_proxy_of(&legacy.cert, &pki.user.cert));
        let limited = pki.user.proxy(ProxyKind::LegacyLimited).issue().unwrap();
        assert!(is_legacy_proxy_of(&limited.cert, &pki.user.cert));
        let rfc = pki.user.proxy(ProxyKind::Rfc3820).issue().unwrap();
        assert!(!is_legacy_proxy_of(&rfc.cert, &pki.user.cert));
        let shouting = pki.user.proxy(ProxyKind::Legacy);
        let shouting = shouting
            .subject_override(&format!("{}/CN=PROXY", DemoPki::USER_DN))
            .issue()
            .unwrap();
        assert!(!is_legacy_proxy_of(&shouting.cert, &pki.user.cert));
        assert!(!is_legacy_proxy_of(&legacy.cert, &pki.host.cert));
    }
}
