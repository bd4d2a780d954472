//! Certificate generation: a CA, host and user certificates, and grid proxies (RFC 3820 and legacy
//! Globus, full or limited, with the DIRAC group extension).
//!
//! Keys are RSA 2048 bits (DIRAC's `DEFAULT_PROXY_STRENGTH`, accepted by every grid client),
//! signatures SHA-256. DNs are written in DIRAC's slash format, `/C=ch/O=DIRAC/CN=alice`; a `+`
//! joins the members of a multi-valued RDN (`/OU=Users+UID=42`). Neither separator can be
//! escaped, so values cannot contain `/` or `+`.
//!
//! The product uses [`DemoPki`] for the throwaway PKI of its example configuration; the tests
//! build everything else from the same API, with two documented knobs on [`ProxyBuilder`] for
//! invalid proxies.

use std::ffi::CString;
use std::fmt;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::asn1::{Asn1Integer, Asn1Object, Asn1OctetString, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, PKeyRef, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{
    X509, X509Builder, X509Extension, X509Name, X509NameBuilder, X509NameRef, X509Ref,
};

use super::identity::dn_string;
use super::{der, oid, raw};

/// RSA modulus size of every generated key.
pub const KEY_BITS: u32 = 2048;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("invalid DN {dn:?}: {reason}")]
    InvalidDn { dn: String, reason: &'static str },
    #[error("a host certificate needs at least one host name")]
    NoHostName,
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    OpenSsl(#[from] ErrorStack),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Validity window in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    not_before: i64,
    not_after: i64,
}

impl Validity {
    /// Back-dated by 15 minutes against clock skew between hosts, as DIRAC does for proxies.
    const BACKDATE: i64 = 900;

    /// From now (minus the back-dating) for `lifetime`.
    pub fn from_now(lifetime: Duration) -> Self {
        let now = unix_now();
        let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
        Self {
            not_before: now - Self::BACKDATE,
            not_after: now.saturating_add(lifetime),
        }
    }

    /// An arbitrary window, e.g. one in the past for an expired certificate.
    pub fn unix(not_before: i64, not_after: i64) -> Self {
        Self {
            not_before,
            not_after,
        }
    }

    /// Ended an hour ago, after one hour of validity: the usual expired test certificate.
    pub fn expired() -> Self {
        let now = unix_now();
        Self::unix(now - 7200, now - 3600)
    }

    fn apply(self, builder: &mut X509Builder) -> Result<(), ErrorStack> {
        let (not_before, not_after) = (
            Asn1Time::from_unix(self.not_before)?,
            Asn1Time::from_unix(self.not_after)?,
        );
        builder.set_not_before(&not_before)?;
        builder.set_not_after(&not_after)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

/// Parses a slash-format DN (see the module documentation) into an `X509Name`, keeping the
/// order and the multi-valued RDNs.
pub fn parse_dn(dn: &str) -> Result<X509Name, PkiError> {
    let invalid = |reason| PkiError::InvalidDn {
        dn: dn.to_owned(),
        reason,
    };
    let rdns = dn
        .strip_prefix('/')
        .ok_or_else(|| invalid("must start with '/'"))?;
    let mut name = X509NameBuilder::new()?.build();
    for rdn in rdns.split('/') {
        for (position, member) in rdn.split('+').enumerate() {
            let (field, value) = member
                .split_once('=')
                .ok_or_else(|| invalid("every entry must be K=V"))?;
            if field.is_empty() || value.is_empty() {
                return Err(invalid("empty attribute name or value"));
            }
            let field =
                CString::new(field).map_err(|_| invalid("NUL byte in an attribute name"))?;
            raw::append_name_entry(&mut name, &field, value, position > 0)
                .map_err(|_| invalid("unknown attribute, or value not allowed for it"))?;
        }
    }
    Ok(name)
}

fn append_common_name(name: &X509NameRef, value: &str) -> Result<X509Name, ErrorStack> {
    // A copy of the issuer's name, not a re-parse of its string: OpenSSL compares the encodings
    // when it checks an RFC 3820 proxy's subject against its issuer.
    let mut name = name.to_owned()?;
    raw::append_name_entry(&mut name, c"CN", value, false)?;
    Ok(name)
}

fn new_key() -> Result<PKey<Private>, ErrorStack> {
    PKey::from_rsa(Rsa::generate(KEY_BITS)?)
}

fn random_serial(bits: i32) -> Result<Asn1Integer, ErrorStack> {
    let mut serial = BigNum::new()?;
    // Top bit set: always `bits` long, always positive.
    serial.rand(bits, MsbOption::ONE, false)?;
    serial.to_asn1_integer()
}

/// Writes `data`, creating the file with `mode` and tightening an existing file to it before
/// any byte is written.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io_error(path))?;
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(io_error(path))?;
    file.write_all(data).map_err(io_error(path))
}

/// A certificate, its private key, and the certificates that issued it, nearest first, trust
/// anchor excluded (empty for a certificate issued by a root [`Ca`]).
#[derive(Clone)]
pub struct CertifiedKey {
    pub cert: X509,
    pub key: PKey<Private>,
    pub chain: Vec<X509>,
}

impl fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("subject", &dn_string(self.cert.subject_name()))
            .field(
                "chain",
                &self
                    .chain
                    .iter()
                    .map(|c| dn_string(c.subject_name()))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl CertifiedKey {
    pub fn subject(&self) -> String {
        dn_string(self.cert.subject_name())
    }

    /// Certificate then chain: a host certificate file with its intermediates.
    pub fn cert_pem(&self) -> Result<Vec<u8>, PkiError> {
        let mut pem = self.cert.to_pem()?;
        for cert in &self.chain {
            pem.extend(cert.to_pem()?);
        }
        Ok(pem)
    }

    /// DIRAC's proxy file layout (`dumpAllToString`): certificate, unencrypted key, then the
    /// issuing chain. Contains the private key.
    pub fn chain_pem(&self) -> Result<Vec<u8>, PkiError> {
        let mut pem = self.cert.to_pem()?;
        pem.extend(self.key.private_key_to_pem_pkcs8()?);
        for cert in &self.chain {
            pem.extend(cert.to_pem()?);
        }
        Ok(pem)
    }

    /// Certificate and chain to `cert_path` (mode 0644), unencrypted key to `key_path` (0600).
    pub fn to_pem_files(&self, cert_path: &Path, key_path: &Path) -> Result<(), PkiError> {
        write_file(cert_path, &self.cert_pem()?, 0o644)?;
        write_file(key_path, &self.key.private_key_to_pem_pkcs8()?, 0o600)
    }

    /// [`Self::chain_pem`] to `path`, mode 0600 like `dirac-proxy-init`.
    pub fn write_proxy_file(&self, path: &Path) -> Result<(), PkiError> {
        write_file(path, &self.chain_pem()?, 0o600)
    }

    /// Starts a proxy issued by this certificate (which may itself be a proxy).
    pub fn proxy(&self, kind: ProxyKind) -> ProxyBuilder<'_> {
        ProxyBuilder {
            issuer: self,
            kind,
            group: None,
            validity: Validity::from_now(ProxyBuilder::DEFAULT_LIFETIME),
            subject_override: None,
            signer: None,
        }
    }
}

/// A self-signed root CA (`CA:TRUE, pathlen:0`: it issues end-entity certificates only, like
/// most IGTF issuing CAs).
pub struct Ca {
    cert: X509,
    key: PKey<Private>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("subject", &dn_string(self.cert.subject_name()))
            .finish_non_exhaustive()
    }
}

impl Ca {
    pub fn new(dn: &str, validity: Validity) -> Result<Self, PkiError> {
        let key = new_key()?;
        let name = parse_dn(dn)?;
        let serial = random_serial(127)?;
        let mut builder = X509::builder()?;
        builder.set_version(2)?;
        builder.set_serial_number(&serial)?;
        builder.set_subject_name(&name)?;
        builder.set_issuer_name(&name)?;
        builder.set_pubkey(&key)?;
        validity.apply(&mut builder)?;
        builder.append_extension(BasicConstraints::new().critical().ca().pathlen(0).build()?)?;
        builder.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()?,
        )?;
        let ski = SubjectKeyIdentifier::new().build(&builder.x509v3_context(None, None))?;
        builder.append_extension(ski)?;
        builder.sign(&key, MessageDigest::sha256())?;
        Ok(Self {
            cert: builder.build(),
            key,
        })
    }

    pub fn cert(&self) -> &X509Ref {
        &self.cert
    }

    /// A service certificate, usable as TLS server and as DIRAC host client (`"hosts"`). Each
    /// SAN that parses as an IP address becomes an IP SAN, any other a DNS SAN.
    pub fn issue_host(
        &self,
        dn: &str,
        sans: &[&str],
        validity: Validity,
    ) -> Result<CertifiedKey, PkiError> {
        if sans.is_empty() {
            return Err(PkiError::NoHostName);
        }
        let san = {
            let mut san = SubjectAlternativeName::new();
            for name in sans {
                if name.parse::<IpAddr>().is_ok() {
                    san.ip(name);
                } else {
                    san.dns(name);
                }
            }
            san
        };
        let usage = KeyUsage::new()
            .critical()
            .digital_signature()
            .key_encipherment()
            .build()?;
        let purposes = ExtendedKeyUsage::new()
            .server_auth()
            .client_auth()
            .build()?;
        self.issue(dn, validity, |builder| {
            let san = san.build(&builder.x509v3_context(Some(&self.cert), None))?;
            builder.append_extension(san)?;
            builder.append_extension(usage)?;
            builder.append_extension(purposes)
        })
    }

    /// A grid user certificate (`clientAuth`).
    pub fn issue_user(&self, dn: &str, validity: Validity) -> Result<CertifiedKey, PkiError> {
        let usage = KeyUsage::new()
            .critical()
            .digital_signature()
            .key_encipherment()
            .data_encipherment()
            .build()?;
        let purposes = ExtendedKeyUsage::new().client_auth().build()?;
        self.issue(dn, validity, |builder| {
            builder.append_extension(usage)?;
            builder.append_extension(purposes)
        })
    }

    fn issue(
        &self,
        dn: &str,
        validity: Validity,
        extend: impl FnOnce(&mut X509Builder) -> Result<(), ErrorStack>,
    ) -> Result<CertifiedKey, PkiError> {
        let key = new_key()?;
        let (serial, subject) = (random_serial(127)?, parse_dn(dn)?);
        let mut builder = X509::builder()?;
        builder.set_version(2)?;
        builder.set_serial_number(&serial)?;
        builder.set_subject_name(&subject)?;
        builder.set_issuer_name(self.cert.subject_name())?;
        builder.set_pubkey(&key)?;
        validity.apply(&mut builder)?;
        builder.append_extension(BasicConstraints::new().critical().build()?)?;
        let ski =
            SubjectKeyIdentifier::new().build(&builder.x509v3_context(Some(&self.cert), None))?;
        builder.append_extension(ski)?;
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&builder.x509v3_context(Some(&self.cert), None))?;
        builder.append_extension(aki)?;
        extend(&mut builder)?;
        builder.sign(&self.key, MessageDigest::sha256())?;
        Ok(CertifiedKey {
            cert: builder.build(),
            key,
            chain: Vec::new(),
        })
    }

    /// Adds the CA certificate to an OpenSSL hashed directory (CApath) as `c_rehash` does:
    /// `<subject hash>.<n>`, the first free `n`, or the existing file holding this very
    /// certificate. Creates the directory if needed; returns the file written or found.
    pub fn write_hashed_dir(&self, dir: &Path) -> Result<PathBuf, PkiError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let pem = self.cert.to_pem()?;
        let hash = self.cert.subject_name_hash();
        let mut suffix = 0u32;
        loop {
            let path = dir.join(format!("{hash:08x}.{suffix}"));
            match fs::read(&path) {
                Ok(existing) if existing == pem => return Ok(path),
                // Another CA whose subject hashes the same.
                Ok(_) => suffix += 1,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    write_file(&path, &pem, 0o644)?;
                    return Ok(path);
                }
                Err(error) => return Err(io_error(&path)(error)),
            }
        }
    }
}

/// The proxy flavours grid clients present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// RFC 3820 impersonation proxy (`id-ppl-inheritAll`), subject `<issuer>/CN=<serial>`; what
    /// `dirac-proxy-init` and `voms-proxy-init` make.
    Rfc3820,
    /// RFC 3820 proxy with the Globus limited-proxy policy language 1.3.6.1.4.1.3536.1.1.1.9.
    Rfc3820Limited,
    /// Legacy Globus (GT2) proxy: subject `<issuer>/CN=proxy`, no ProxyCertInfo.
    Legacy,
    /// Legacy Globus limited proxy: subject `<issuer>/CN=limited proxy`.
    LegacyLimited,
}

/// Issues a proxy; see [`CertifiedKey::proxy`]. Proxies carry the extensions DIRAC writes:
/// critical keyUsage (digitalSignature, keyEncipherment, dataEncipherment), critical
/// ProxyCertInfo for RFC 3820 kinds, and the optional DIRAC group.
pub struct ProxyBuilder<'a> {
    issuer: &'a CertifiedKey,
    kind: ProxyKind,
    group: Option<String>,
    validity: Validity,
    subject_override: Option<String>,
    signer: Option<&'a PKeyRef<Private>>,
}

impl<'a> ProxyBuilder<'a> {
    /// DIRAC's default proxy lifetime.
    const DEFAULT_LIFETIME: Duration = Duration::from_secs(86_400);

    /// Adds the DIRAC group extension (OID 1.2.42.42, DER IA5String), as `dirac-proxy-init -g`.
    pub fn group(mut self, group: &str) -> Self {
        self.group = Some(group.to_owned());
        self
    }

    /// Default: 24 h from now.
    pub fn validity(mut self, validity: Validity) -> Self {
        self.validity = validity;
        self
    }

    /// Test knob: use this subject instead of the one the kind prescribes, e.g. to make a
    /// misnamed proxy. Everything else (issuer name, extensions, signature) stays correct.
    pub fn subject_override(mut self, dn: &str) -> Self {
        self.subject_override = Some(dn.to_owned());
        self
    }

    /// Test knob: sign with `key` instead of the issuer's key, i.e. forge the proxy.
    pub fn signed_by(mut self, key: &'a PKeyRef<Private>) -> Self {
        self.signer = Some(key);
        self
    }

    pub fn issue(self) -> Result<CertifiedKey, PkiError> {
        let issuer = self.issuer;
        let key = new_key()?;
        // 32 random bits, top bit set: a 10-digit CN like DIRAC's `random() * 10**10`.
        let serial = random_serial(32)?;
        let subject = match (&self.subject_override, self.kind) {
            (Some(dn), _) => parse_dn(dn)?,
            (None, ProxyKind::Rfc3820 | ProxyKind::Rfc3820Limited) => {
                let cn = serial.to_bn()?.to_dec_str()?;
                append_common_name(issuer.cert.subject_name(), &cn)?
            }
            (None, ProxyKind::Legacy) => append_common_name(issuer.cert.subject_name(), "proxy")?,
            (None, ProxyKind::LegacyLimited) => {
                append_common_name(issuer.cert.subject_name(), "limited proxy")?
            }
        };

        let mut builder = X509::builder()?;
        builder.set_version(2)?;
        builder.set_serial_number(&serial)?;
        builder.set_subject_name(&subject)?;
        builder.set_issuer_name(issuer.cert.subject_name())?;
        builder.set_pubkey(&key)?;
        self.validity.apply(&mut builder)?;
        let usage = KeyUsage::new()
            .critical()
            .digital_signature()
            .key_encipherment()
            .data_encipherment()
            .build()?;
        builder.append_extension(usage)?;
        let policy_language = match self.kind {
            ProxyKind::Rfc3820 => Some(oid::POLICY_INHERIT_ALL),
            ProxyKind::Rfc3820Limited => Some(oid::POLICY_LIMITED),
            ProxyKind::Legacy | ProxyKind::LegacyLimited => None,
        };
        if let Some(language) = policy_language {
            let value = der::proxy_cert_info(Asn1Object::from_str(language)?.as_slice());
            builder.append_extension(extension(oid::PROXY_CERT_INFO, true, &value)?)?;
        }
        if let Some(group) = &self.group {
            builder.append_extension(extension(
                oid::DIRAC_GROUP,
                false,
                &der::ia5_string(group),
            )?)?;
        }
        builder.sign(self.signer.unwrap_or(&issuer.key), MessageDigest::sha256())?;

        let mut chain = Vec::with_capacity(issuer.chain.len() + 1);
        chain.push(issuer.cert.clone());
        chain.extend(issuer.chain.iter().cloned());
        Ok(CertifiedKey {
            cert: builder.build(),
            key,
            chain,
        })
    }
}

fn extension(oid: &str, critical: bool, value: &[u8]) -> Result<X509Extension, ErrorStack> {
    let (oid, value) = (
        Asn1Object::from_str(oid)?,
        Asn1OctetString::new_from_bytes(value)?,
    );
    X509Extension::new_from_der(&oid, critical, &value)
}

/// The throwaway PKI of the example configuration: a CA, a host certificate and a user
/// certificate. The CA lives 10 years, the other two 2 years.
#[derive(Debug)]
pub struct DemoPki {
    pub ca: Ca,
    pub host: CertifiedKey,
    pub user: CertifiedKey,
}

/// Where [`DemoPki::write_to`] put the files, in DIRAC's `etc/grid-security` naming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoPkiFiles {
    /// Hashed CA directory (`certificates/`), usable as CApath / `X509_CERT_DIR`.
    pub ca_dir: PathBuf,
    pub host_cert: PathBuf,
    pub host_key: PathBuf,
    pub user_cert: PathBuf,
    pub user_key: PathBuf,
}

impl DemoPki {
    pub const CA_DN: &'static str = "/C=ch/O=DIRAC/CN=DIRAC demo CA";
    pub const USER_DN: &'static str = "/C=ch/O=DIRAC/OU=DIRAC demo/CN=demouser";
    /// The host DN is this prefix plus `/CN=<first host name>`.
    pub const HOST_DN_PREFIX: &'static str = "/C=ch/O=DIRAC/OU=DIRAC demo";

    const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
    const LEAF_LIFETIME: Duration = Duration::from_secs(2 * 365 * 86_400);

    /// `host_names` are the host certificate's SANs (DNS names or IP addresses) and the first one
    /// its CN; clients check the SAN against the URL they call.
    pub fn generate(host_names: &[&str]) -> Result<Self, PkiError> {
        let first = host_names.first().ok_or(PkiError::NoHostName)?;
        let ca = Ca::new(Self::CA_DN, Validity::from_now(Self::CA_LIFETIME))?;
        let host_dn = format!("{}/CN={first}", Self::HOST_DN_PREFIX);
        let host = ca.issue_host(
            &host_dn,
            host_names,
            Validity::from_now(Self::LEAF_LIFETIME),
        )?;
        let user = ca.issue_user(Self::USER_DN, Validity::from_now(Self::LEAF_LIFETIME))?;
        Ok(Self { ca, host, user })
    }

    /// Writes `certificates/<hash>.0`, `hostcert.pem`, `hostkey.pem`, `usercert.pem` and
    /// `userkey.pem` under `dir` (created if needed); keys are mode 0600.
    pub fn write_to(&self, dir: &Path) -> Result<DemoPkiFiles, PkiError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let files = DemoPkiFiles {
            ca_dir: dir.join("certificates"),
            host_cert: dir.join("hostcert.pem"),
            host_key: dir.join("hostkey.pem"),
            user_cert: dir.join("usercert.pem"),
            user_key: dir.join("userkey.pem"),
        };
        self.ca.write_hashed_dir(&files.ca_dir)?;
        self.host.to_pem_files(&files.host_cert, &files.host_key)?;
        self.user.to_pem_files(&files.user_cert, &files.user_key)?;
        Ok(files)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::OnceLock;

    use openssl::stack::Stack;
    use openssl::x509::store::{X509Lookup, X509StoreBuilder};
    use openssl::x509::{X509StoreContext, X509VerifyResult};

    use super::*;

    /// One PKI for all tests of the module: RSA key generation dominates their run time.
    pub(in super::super) fn shared() -> &'static DemoPki {
        static PKI: OnceLock<DemoPki> = OnceLock::new();
        PKI.get_or_init(|| DemoPki::generate(&["localhost", "127.0.0.1"]).expect("test PKI"))
    }

    /// An intermediate CA under `ca` (`Ca::new` only makes roots), for path length tests.
    pub(in super::super) fn intermediate(ca: &Ca, dn: &str) -> Ca {
        let key = new_key().unwrap();
        let (serial, subject) = (random_serial(127).unwrap(), parse_dn(dn).unwrap());
        let mut builder = X509::builder().unwrap();
        builder.set_version(2).unwrap();
        builder.set_serial_number(&serial).unwrap();
        builder.set_subject_name(&subject).unwrap();
        builder.set_issuer_name(ca.cert.subject_name()).unwrap();
        builder.set_pubkey(&key).unwrap();
        Validity::from_now(Duration::from_secs(3600))
            .apply(&mut builder)
            .unwrap();
        builder
            .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        builder
            .append_extension(KeyUsage::new().critical().key_cert_sign().build().unwrap())
            .unwrap();
        let ski = SubjectKeyIdentifier::new()
            .build(&builder.x509v3_context(Some(&ca.cert), None))
            .unwrap();
        builder.append_extension(ski).unwrap();
        builder.sign(&ca.key, MessageDigest::sha256()).unwrap();
        Ca {
            cert: builder.build(),
            key,
        }
    }

    /// A TLS server certificate only (no clientAuth): not a valid proxy issuer.
    pub(in super::super) fn server_only_certificate(ca: &Ca, dn: &str) -> CertifiedKey {
        let validity = Validity::from_now(Duration::from_secs(3600));
        ca.issue(dn, validity, |builder| {
            let usage = KeyUsage::new().critical().digital_signature().build()?;
            builder.append_extension(usage)?;
            builder.append_extension(ExtendedKeyUsage::new().server_auth().build()?)
        })
        .unwrap()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn verify_with_dir(dir: &Path, cert: &X509Ref) -> X509VerifyResult {
        let mut store = X509StoreBuilder::new().unwrap();
        let lookup = store.add_lookup(X509Lookup::hash_dir()).unwrap();
        lookup
            .add_dir(dir.to_str().unwrap(), openssl::ssl::SslFiletype::PEM)
            .unwrap();
        let store = store.build();
        let mut ctx = X509StoreContext::new().unwrap();
        let chain = Stack::new().unwrap();
        ctx.init(&store, cert, &chain, |c| {
            c.verify_cert()?;
            Ok(c.error())
        })
        .unwrap()
    }

    #[test]
    fn demo_pki_files_verify_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let pki = shared();
        let files = pki.write_to(dir.path()).unwrap();
        assert_eq!(mode(&files.host_key), 0o600);
        assert_eq!(mode(&files.user_key), 0o600);
        assert_eq!(mode(&files.host_cert), 0o644);

        let hashed = files
            .ca_dir
            .join(format!("{:08x}.0", pki.ca.cert().subject_name_hash()));
        assert!(hashed.is_file());
        assert_eq!(
            pki.ca.write_hashed_dir(&files.ca_dir).unwrap(),
            hashed,
            "rewriting is idempotent"
        );
        let user = X509::from_pem(&fs::read(&files.user_cert).unwrap()).unwrap();
        assert_eq!(verify_with_dir(&files.ca_dir, &user), X509VerifyResult::OK);

        let key = PKey::private_key_from_pem(&fs::read(&files.host_key).unwrap()).unwrap();
        assert!(pki.host.cert.public_key().unwrap().public_eq(&key));
        assert!(
            pki.host
                .cert
                .subject_alt_names()
                .unwrap()
                .iter()
                .any(|n| n.ipaddress() == Some(&[127u8, 0, 0, 1][..]))
        );
    }

    #[test]
    fn same_subject_hash_gets_the_next_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let first = Ca::new("/CN=Twin CA", Validity::from_now(Duration::from_secs(3600))).unwrap();
        let second = Ca::new("/CN=Twin CA", Validity::from_now(Duration::from_secs(3600))).unwrap();
        let a = first.write_hashed_dir(dir.path()).unwrap();
        let b = second.write_hashed_dir(dir.path()).unwrap();
        assert!(a.to_str().unwrap().ends_with(".0") && b.to_str().unwrap().ends_with(".1"));
    }

    #[test]
    fn existing_key_file_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        fs::write(&key, b"old").unwrap();
        fs::set_permissions(&key, Permissions::from_mode(0o644)).unwrap();
        shared().user.to_pem_files(&cert, &key).unwrap();
        assert_eq!(mode(&key), 0o600);
    }

    #[test]
    fn proxy_file_layout_is_cert_key_chain() {
        let pki = shared();
        let proxy = pki.user.proxy(ProxyKind::Rfc3820).issue().unwrap();
        let second = proxy.proxy(ProxyKind::Rfc3820).issue().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x509up_u1000");
        second.write_proxy_file(&path).unwrap();
        assert_eq!(mode(&path), 0o600);

        let text = String::from_utf8(fs::read(&path).unwrap()).unwrap();
        let blocks: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-----BEGIN"))
            .collect();
        assert_eq!(
            blocks,
            [
                "-----BEGIN CERTIFICATE-----",
                "-----BEGIN PRIVATE KEY-----",
                "-----BEGIN CERTIFICATE-----",
                "-----BEGIN CERTIFICATE-----"
            ]
        );
        let certs = X509::stack_from_pem(text.as_bytes()).unwrap();
        assert_eq!(
            certs,
            [
                second.cert.clone(),
                proxy.cert.clone(),
                pki.user.cert.clone()
            ]
        );
    }

    #[test]
    fn rfc3820_proxy_extensions_as_openssl_reads_them() {
        let pki = shared();
        let proxy = pki
            .user
            .proxy(ProxyKind::Rfc3820)
            .group("dirac_user")
            .issue()
            .unwrap();
        let text = String::from_utf8(proxy.cert.to_text().unwrap()).unwrap();
        assert!(
            text.contains("Proxy Certificate Information: critical"),
            "{text}"
        );
        assert!(text.contains("Policy Language: Inherit all"), "{text}");
        let group = raw::extension_value(
            &proxy.cert,
            &Asn1Object::from_str(oid::DIRAC_GROUP).unwrap(),
        );
        assert_eq!(
            group.unwrap(),
            [&[0x16, 10][..], b"dirac_user"].concat(),
            "DER IA5String"
        );

        let serial = proxy
            .cert
            .serial_number()
            .to_bn()
            .unwrap()
            .to_dec_str()
            .unwrap()
            .to_string();
        assert_eq!(serial.len(), 10);
        assert_eq!(proxy.subject(), format!("{}/CN={serial}", DemoPki::USER_DN));
        assert_eq!(dn_string(proxy.cert.issuer_name()), DemoPki::USER_DN);

        let limited = pki.user.proxy(ProxyKind::Rfc3820Limited).issue().unwrap();
        let text = String::from_utf8(limited.cert.to_text().unwrap()).unwrap();
        assert!(
            text.contains("Policy Language: 1.3.6.1.4.1.3536.1.1.1.9"),
            "{text}"
        );
    }

    #[test]
    fn legacy_proxy_names() {
        let pki = shared();
        let legacy = pki.user.proxy(ProxyKind::Legacy).issue().unwrap();
        assert_eq!(legacy.subject(), format!("{}/CN=proxy", DemoPki::USER_DN));
        assert!(
            !String::from_utf8(legacy.cert.to_text().unwrap())
                .unwrap()
                .contains("Proxy Certificate")
        );
        let limited = legacy.proxy(ProxyKind::LegacyLimited).issue().unwrap();
        assert_eq!(
            limited.subject(),
            format!("{}/CN=proxy/CN=limited proxy", DemoPki::USER_DN)
        );
        assert_eq!(limited.chain.len(), 2);
    }

    #[test]
    fn debug_output_has_no_key_material() {
        let pki = shared();
        let shown = format!("{pki:?} {:?}", pki.user);
        assert!(shown.contains(DemoPki::USER_DN));
        let key_pem = String::from_utf8(pki.user.key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        let key_line = key_pem.lines().nth(1).unwrap();
        assert!(!shown.contains(key_line) && !shown.contains("PRIVATE"));
    }

    #[test]
    fn malformed_dns_are_refused() {
        for dn in ["CN=x", "/CN", "/CN=", "/=x", "/CN=a//CN=b", "/NOSUCHATTR=x"] {
            assert!(
                matches!(parse_dn(dn), Err(PkiError::InvalidDn { .. })),
                "{dn}"
            );
        }
        assert!(matches!(DemoPki::generate(&[]), Err(PkiError::NoHostName)));
    }
}
