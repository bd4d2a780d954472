//! X.509 layer: grid certificates, proxies and the TLS server setup shared by the HTTPS and DISET
//! listeners.
//!
//! * [`pki`] makes certificates (CA, host, user, RFC 3820 and legacy Globus proxies). The product
//!   uses it for the throwaway demo PKI of the example configuration, the tests for their PKI.
//! * [`identity`] derives what DIRAC's `X509Chain.getCredentials` derives from a peer chain:
//!   DN strings in `X509_NAME_oneline` format, proxy detection, limited proxies, the DIRAC group
//!   extension. Registry lookups belong to the caller.
//! * [`expiry`] reads when the host certificate and the trusted CAs expire.
//! * [`tls`] builds the OpenSSL acceptor: proxies allowed, legacy proxies forgiven, every
//!   refused client certificate logged.
//!
//! OpenSSL rather than rustls: webpki refuses every certificate carrying the critical
//! ProxyCertInfo extension, i.e. every RFC 3820 proxy.

mod der;
pub mod expiry;
pub mod identity;
pub mod pki;
mod raw;
pub mod tls;

/// OIDs, dotted, as `Asn1Object::from_str` wants them.
mod oid {
    /// RFC 3820 ProxyCertInfo extension.
    pub const PROXY_CERT_INFO: &str = "1.3.6.1.5.5.7.1.14";
    /// RFC 3820 policy language id-ppl-inheritAll: an impersonation proxy.
    pub const POLICY_INHERIT_ALL: &str = "1.3.6.1.5.5.7.21.1";
    /// Globus policy language of limited proxies (DIRAC `LIMITED_PROXY_OID`).
    pub const POLICY_LIMITED: &str = "1.3.6.1.4.1.3536.1.1.1.9";
    /// DIRAC group extension, value a DER IA5String (DIRAC `DIRAC_GROUP_OID`).
    pub const DIRAC_GROUP: &str = "1.2.42.42";
}
