//! Server TLS for both protocols: OpenSSL, grid proxies accepted, legacy Globus proxies forgiven,
//! every refused client certificate logged.
//!
//! [`acceptor`] only reads the three configured paths and builds a fresh context; reloading (on
//! SIGHUP) is calling it again and swapping the result. CA certificates are read from the hashed
//! directory lazily, at the first handshake that needs them, and cached by that acceptor.

use std::cmp::Ordering;
use std::fs;
use std::path::{Path, PathBuf};

use openssl::error::ErrorStack;
use openssl::hash::{MessageDigest, hash};
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    SslAcceptor, SslAcceptorBuilder, SslFiletype, SslMethod, SslMode, SslOptions, SslVerifyMode,
    SslVersion,
};
use openssl::stack::StackRef;
use openssl::x509::store::X509Lookup;
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509, X509ExtendedKeyUsage, X509KeyUsage, X509Ref, X509StoreContextRef};

use super::identity::{self, dn_string};

/// Sessions each server context keeps for resumption. With tickets off every TLS 1.3 connection
/// stores its session, client chain included, on the server, for OpenSSL's default lifetime of
/// 2 h: ~8 KiB of resident memory a session (the chain's parsed certificates, and the pages they
/// pin among freed connection memory), kept until newer sessions push it out. OpenSSL's default
/// of 20,480 let a service that sees many clients grow by ~150 MiB per listener; 4,096 per
/// listener kept 60 MiB after four bursts of 2,000 clients and 1,024 still 16 MiB (tests/flood:
/// 85 and 44 MiB against 25 MiB idle, 27 MiB without a cache). Caching stays on: DISET clients
/// reconnect for every call and resume their session, and the 512 most recent clients of a
/// listener cover a job's or an agent's run of calls.
pub const SESSION_CACHE_SIZE: i32 = 512;

/// DIRAC's server verify depth.
const VERIFY_DEPTH: u32 = 50;
/// `SSL_MAX_SID_CTX_LENGTH`.
const MAX_SESSION_ID_CONTEXT: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertMode {
    /// DISET: the handshake fails without a client certificate.
    Required,
    /// HTTPS: a client certificate is asked for but optional, so bearer-token clients connect.
    Requested,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Host certificate (PEM), optionally followed by its intermediate CAs.
    pub cert_file: PathBuf,
    /// Unencrypted PEM key of the host certificate.
    pub key_file: PathBuf,
    /// OpenSSL hashed CA directory (CApath), e.g. `/etc/grid-security/certificates`. Only
    /// `<hash>.<n>` files are read; `.signing_policy`, `.namespaces` and CRLs are ignored.
    pub ca_dir: PathBuf,
    pub client_cert: ClientCertMode,
    /// Must be non-empty (stack-notes pitfall 14); DIRAC uses `DIRAC-<host>-<port>`. Values
    /// over OpenSSL's 32-byte limit are replaced by their SHA-256.
    pub session_id_context: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {}: {reason}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS session id context must not be empty")]
    EmptySessionIdContext,
    #[error("TLS setup: {0}")]
    Setup(#[from] ErrorStack),
}

fn file_error(what: &'static str, path: &Path) -> impl FnOnce(String) -> TlsError {
    let path = path.to_owned();
    move |reason| TlsError::File { what, path, reason }
}

/// A server acceptor: TLS 1.2 minimum (1.3 when the client offers it), Mozilla
/// intermediate ciphers, client chains verified against `ca_dir` with RFC 3820 proxies allowed
/// (OpenSSL also refuses misnamed ones) and legacy Globus proxies forgiven (see
/// [`verify_client_certificate`]).
///
/// Session tickets are off: a ticket carries the client's leaf certificate but not the rest of
/// its chain, so a resumed session would lose the proxy chain. Sessions are resumed from this
/// acceptor's own cache instead, which keeps the whole chain.
pub fn acceptor(settings: &TlsSettings) -> Result<SslAcceptor, TlsError> {
    Ok(acceptor_builder(settings)?.build())
}

/// The acceptor before `build()`, for servers that take a builder (actix-web).
pub fn acceptor_builder(settings: &TlsSettings) -> Result<SslAcceptorBuilder, TlsError> {
    let session_id_context = session_id_context(&settings.session_id_context)?;
    let (cert, intermediates) = read_certificates(&settings.cert_file)?;
    let key = read_key(&settings.key_file)?;
    let ca_dir = settings
        .ca_dir
        .to_str()
        // openssl-rs panics on a NUL byte in the path.
        .filter(|dir| !dir.contains('\0') && settings.ca_dir.is_dir())
        .ok_or_else(|| {
            file_error("CA directory", &settings.ca_dir)("not a directory with a UTF-8 path".into())
        })?;

    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    builder.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    builder.set_certificate(&cert)?;
    for intermediate in intermediates {
        builder.add_extra_chain_cert(intermediate)?;
    }
    builder
        .set_private_key(&key)
        .and_then(|()| builder.check_private_key())
        .map_err(|e| {
            file_error("host key", &settings.key_file)(format!(
                "does not match the certificate: {e}"
            ))
        })?;

    builder
        .cert_store_mut()
        .add_lookup(X509Lookup::hash_dir())?
        .add_dir(ca_dir, SslFiletype::PEM)?;
    builder
        .verify_param_mut()
        .set_flags(X509VerifyFlags::ALLOW_PROXY_CERTS)?;
    builder.set_verify_depth(VERIFY_DEPTH);
    let mode = match settings.client_cert {
        ClientCertMode::Required => SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        ClientCertMode::Requested => SslVerifyMode::PEER,
    };
    builder.set_verify_callback(mode, verify_client_certificate);
    builder.set_session_id_context(&session_id_context)?;
    builder.set_options(SslOptions::NO_TICKET);
    builder.set_session_cache_size(SESSION_CACHE_SIZE);
    // One recv for all a request's records instead of one for each record header and one for
    // its body: a third of the server's syscalls on a kept-alive connection.
    builder.set_read_ahead(true);
    // A connection's read and write buffers (~17 KiB each, allocated on first use) go back to
    // the allocator whenever they are empty, instead of staying with the connection until it
    // closes: thousands of idle kept-alive connections would hold ~34 KiB each. Refilling them
    // is an allocation per record, from jemalloc's thread cache.
    builder.set_mode(SslMode::RELEASE_BUFFERS);
    Ok(builder)
}

fn session_id_context(context: &str) -> Result<Vec<u8>, TlsError> {
    match context.len() {
        0 => Err(TlsError::EmptySessionIdContext),
        1..=MAX_SESSION_ID_CONTEXT => Ok(context.as_bytes().to_vec()),
        _ => Ok(hash(MessageDigest::sha256(), context.as_bytes())?.to_vec()),
    }
}

fn read_certificates(path: &Path) -> Result<(X509, Vec<X509>), TlsError> {
    let error = |reason: String| file_error("host certificate", path)(reason);
    let pem = fs::read(path).map_err(|e| error(e.to_string()))?;
    let mut certs = X509::stack_from_pem(&pem)
        .map_err(|e| error(e.to_string()))?
        .into_iter();
    let leaf = certs
        .next()
        .ok_or_else(|| error("no PEM certificate in the file".into()))?;
    Ok((leaf, certs.collect()))
}

fn read_key(path: &Path) -> Result<PKey<Private>, TlsError> {
    let error = |reason: String| file_error("host key", path)(reason);
    let pem = fs::read(path).map_err(|e| error(e.to_string()))?;
    // An empty passphrase, not OpenSSL's default of prompting on the terminal.
    PKey::private_key_from_pem_passphrase(&pem, b"")
        .map_err(|e| error(format!("unreadable or encrypted: {e}")))
}

/// The verify callback. OpenSSL's own verdict stands, except for the errors a correctly named
/// legacy Globus proxy raises, because OpenSSL takes such a proxy for an ordinary certificate
/// issued by an end-entity certificate. On a certificate whose child in the chain is a legacy
/// proxy of it (subject = its subject + `/CN=proxy` or `/CN=limited proxy`, no ProxyCertInfo):
///
/// * `INVALID_CA`;
/// * `INVALID_PURPOSE`, if the certificate passes the SSL-client purpose as an end entity, and
///   `KEYUSAGE_NO_CERTSIGN`, if its keyUsage has digitalSignature: exactly what OpenSSL demands
///   of the issuer of an RFC 3820 proxy instead;
///
/// and `PATH_LENGTH_EXCEEDED` on a CA whose `pathlen` holds once legacy proxies are counted like
/// RFC 3820 proxies (OpenSSL counts the issuer of a legacy proxy as an intermediate CA).
///
/// Signatures, validity, trust and RFC 3820 naming are never forgiven. Every refusal is logged
/// at WARN, since a refused handshake is otherwise silent.
fn verify_client_certificate(preverified: bool, ctx: &mut X509StoreContextRef) -> bool {
    if preverified {
        return true;
    }
    let error = ctx.error();
    let depth = ctx.error_depth();
    let subject = ctx
        .current_cert()
        .map(|cert| dn_string(cert.subject_name()))
        .unwrap_or_default();
    let forgiven = ctx.chain().is_some_and(|chain| {
        usize::try_from(depth)
            .is_ok_and(|depth| legacy_proxy_explains(chain, depth, error.as_raw()))
    });
    if forgiven {
        tracing::debug!(
            %subject,
            depth,
            error = error.error_string(),
            "legacy Globus proxy: verification error forgiven"
        );
    } else {
        tracing::warn!(
            %subject,
            depth,
            error = error.error_string(),
            "client certificate refused"
        );
    }
    forgiven
}

fn legacy_proxy_explains(chain: &StackRef<X509>, depth: usize, error: i32) -> bool {
    let Some(cert) = chain.get(depth) else {
        return false;
    };
    let issues_legacy_proxy = || {
        depth
            .checked_sub(1)
            .and_then(|child| chain.get(child))
            .is_some_and(|child| identity::is_legacy_proxy_of(child, cert))
    };
    match error {
        openssl_sys::X509_V_ERR_INVALID_CA => issues_legacy_proxy(),
        openssl_sys::X509_V_ERR_INVALID_PURPOSE => {
            ssl_client_end_entity(cert) && issues_legacy_proxy()
        }
        openssl_sys::X509_V_ERR_KEYUSAGE_NO_CERTSIGN => {
            cert.key_usage()
                .is_some_and(|usage| usage.contains(X509KeyUsage::DIGITAL_SIGNATURE))
                && issues_legacy_proxy()
        }
        openssl_sys::X509_V_ERR_PATH_LENGTH_EXCEEDED => {
            path_length_holds_with_legacy_proxies(chain, depth)
        }
        _ => false,
    }
}

/// OpenSSL's SSL-client purpose check for a non-CA certificate (`check_purpose_ssl_client`
/// without `require_ca`; the obsolete Netscape cert type aside).
fn ssl_client_end_entity(cert: &X509Ref) -> bool {
    let purposes_ok = cert
        .extended_key_usage()
        .is_none_or(|purposes| purposes.contains(X509ExtendedKeyUsage::SSL_CLIENT));
    let usage_ok = cert.key_usage().is_none_or(|usage| {
        usage.intersects(X509KeyUsage::DIGITAL_SIGNATURE | X509KeyUsage::KEY_AGREEMENT)
    });
    purposes_ok && usage_ok
}

/// Recounts OpenSSL's path length check for the CA at `depth`: non-self-issued certificates
/// between the leaf and it, minus proxies (RFC 3820 ones, as OpenSSL does, and legacy ones).
fn path_length_holds_with_legacy_proxies(chain: &StackRef<X509>, depth: usize) -> bool {
    let Some(limit) = chain.get(depth).and_then(X509Ref::pathlen) else {
        return false;
    };
    let below: Vec<&X509Ref> = chain.iter().take(depth).collect();
    let intermediates = below
        .iter()
        .skip(1)
        .filter(|cert| !self_issued(cert))
        .count();
    let proxies = below
        .iter()
        .enumerate()
        .filter(|(position, cert)| {
            identity::has_proxy_cert_info(cert).unwrap_or(false)
                || chain
                    .get(position + 1)
                    .is_some_and(|issuer| identity::is_legacy_proxy_of(cert, issuer))
        })
        .count();
    usize::try_from(limit).is_ok_and(|limit| intermediates <= limit + proxies)
}

fn self_issued(cert: &X509Ref) -> bool {
    matches!(
        cert.subject_name().try_cmp(cert.issuer_name()),
        Ok(Ordering::Equal)
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::thread::{self, JoinHandle};
    use std::time::Duration;

    use openssl::ssl::{HandshakeError, SslConnector, SslSession};
    use openssl::x509::X509VerifyResult;
    use tempfile::TempDir;

    use super::super::identity::{ChainIdentity, PeerChain};
    use super::super::pki::tests::{intermediate, server_only_certificate, shared};
    use super::super::pki::{Ca, CertifiedKey, DemoPki, ProxyKind, Validity};
    use super::*;

    const TIMEOUT: Option<Duration> = Some(Duration::from_secs(10));
    const HOUR: Duration = Duration::from_secs(3600);

    /// What the server saw on one connection: the analysed client chain (`None` without a client
    /// certificate) or the verification error that failed the handshake.
    type ServerOutcome = Result<Option<ChainIdentity>, X509VerifyResult>;

    fn settings(mode: ClientCertMode) -> (TempDir, TlsSettings) {
        let dir = tempfile::tempdir().unwrap();
        let files = shared().write_to(dir.path()).unwrap();
        let settings = TlsSettings {
            cert_file: files.host_cert,
            key_file: files.host_key,
            ca_dir: files.ca_dir,
            client_cert: mode,
            session_id_context: "DIRAC-localhost-9181".into(),
        };
        (dir, settings)
    }

    #[test]
    fn the_session_cache_is_bounded() {
        let (_dir, settings) = settings(ClientCertMode::Requested);
        let acceptor = acceptor(&settings).unwrap();
        assert_eq!(
            acceptor.context().session_cache_size(),
            i64::from(SESSION_CACHE_SIZE)
        );
    }

    #[test]
    fn idle_connections_release_their_buffers() {
        let (_dir, settings) = settings(ClientCertMode::Requested);
        let mut builder = acceptor_builder(&settings).unwrap();
        // SSL_CTX_set_mode adds bits and returns the mode in force: adding none reads it.
        let mode = builder.set_mode(SslMode::empty());
        assert!(mode.contains(SslMode::RELEASE_BUFFERS), "{mode:?}");
    }

    /// Accepts `connections` connections; each accepted client gets `ok` and a TLS shutdown.
    fn serve(
        mode: ClientCertMode,
        connections: usize,
    ) -> (SocketAddr, JoinHandle<Vec<ServerOutcome>>) {
        let (dir, settings) = settings(mode);
        let acceptor = acceptor(&settings).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let _dir = dir;
            (0..connections)
                .map(|_| {
                    let (tcp, _) = listener.accept().unwrap();
                    tcp.set_read_timeout(TIMEOUT).unwrap();
                    match acceptor.accept(tcp) {
                        Ok(mut stream) => {
                            let seen = PeerChain::from_ssl(stream.ssl())
                                .map(|chain| chain.analyse().unwrap());
                            stream.write_all(b"ok").unwrap();
                            let _ = stream.shutdown();
                            Ok(seen)
                        }
                        Err(HandshakeError::Failure(mid)) => Err(mid.ssl().verify_result()),
                        Err(other) => panic!("server handshake: {other}"),
                    }
                })
                .collect()
        });
        (addr, server)
    }

    fn connector(client: Option<&CertifiedKey>, max_version: Option<SslVersion>) -> SslConnector {
        let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
        builder
            .cert_store_mut()
            .add_cert(shared().ca.cert().to_owned())
            .unwrap();
        builder.set_max_proto_version(max_version).unwrap();
        if let Some(client) = client {
            builder.set_certificate(&client.cert).unwrap();
            for cert in &client.chain {
                builder.add_extra_chain_cert(cert.clone()).unwrap();
            }
            builder.set_private_key(&client.key).unwrap();
        }
        builder.build()
    }

    /// One client connection: whether the server let it read `ok`, whether the session was
    /// resumed, and the session to resume next time.
    fn connect(
        connector: &SslConnector,
        addr: SocketAddr,
        resume: Option<&SslSession>,
    ) -> Result<(bool, SslSession), String> {
        let mut ssl = connector
            .configure()
            .unwrap()
            .into_ssl("localhost")
            .unwrap();
        if let Some(session) = resume {
            // SAFETY: the session comes from a connection made with this same connector.
            unsafe { ssl.set_session(session).unwrap() };
        }
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(TIMEOUT).unwrap();
        let mut stream = ssl.connect(tcp).map_err(|e| e.to_string())?;
        // Client side, OpenSSL puts the leaf into the peer chain too; it must not count twice.
        let server_chain = PeerChain::from_ssl(stream.ssl()).unwrap();
        let host = &shared().host.cert;
        assert_eq!(&server_chain.certs()[0], host);
        assert_eq!(
            server_chain.certs().iter().filter(|c| *c == host).count(),
            1
        );
        let mut reply = [0; 2];
        stream.read_exact(&mut reply).map_err(|e| e.to_string())?;
        assert_eq!(&reply, b"ok");
        let session = stream.ssl().session().unwrap().to_owned();
        let reused = stream.ssl().session_reused();
        // Closing without close_notify makes OpenSSL mark the session not resumable.
        let _ = stream.shutdown();
        Ok((reused, session))
    }

    /// Handshake with `client`'s chain; the server's view of it.
    fn handshake(mode: ClientCertMode, client: Option<&CertifiedKey>) -> ServerOutcome {
        let (addr, server) = serve(mode, 1);
        let client_result = connect(&connector(client, None), addr, None).map(|(reused, _)| reused);
        let outcome = server.join().unwrap().remove(0);
        assert_eq!(
            client_result.is_ok(),
            outcome.is_ok(),
            "client {client_result:?}, server {outcome:?}"
        );
        outcome
    }

    fn accepted(client: &CertifiedKey) -> ChainIdentity {
        handshake(ClientCertMode::Required, Some(client))
            .unwrap()
            .expect("a client chain")
    }

    fn refused(client: &CertifiedKey) -> i32 {
        handshake(ClientCertMode::Required, Some(client))
            .unwrap_err()
            .as_raw()
    }

    fn proxy_dn(kind_suffix: &str) -> String {
        format!("{}{kind_suffix}", DemoPki::USER_DN)
    }

    #[test]
    fn plain_user_certificate() {
        let id = accepted(&shared().user);
        assert!(!id.is_proxy && !id.is_limited_proxy);
        assert_eq!(
            (id.subject.as_str(), id.dn.as_str()),
            (DemoPki::USER_DN, DemoPki::USER_DN)
        );
        assert_eq!(id.issuer, DemoPki::CA_DN);
        assert_eq!((id.identity, id.group_extension), (None, None));
        assert!(id.seconds_left > 365 * 86_400);
    }

    #[test]
    fn rfc3820_proxy() {
        let proxy = shared().user.proxy(ProxyKind::Rfc3820).issue().unwrap();
        let id = accepted(&proxy);
        assert!(id.is_proxy && !id.is_limited_proxy);
        assert_eq!(id.subject, proxy.subject());
        assert_eq!(id.issuer, DemoPki::USER_DN);
        assert_eq!(id.dn, DemoPki::USER_DN);
        assert_eq!(id.identity.as_deref(), Some(DemoPki::USER_DN));
        assert!(
            (86_300..=86_400).contains(&id.seconds_left),
            "{}",
            id.seconds_left
        );
    }

    #[test]
    fn proxy_of_proxy() {
        let first = shared().user.proxy(ProxyKind::Rfc3820).issue().unwrap();
        let second = first.proxy(ProxyKind::Rfc3820).issue().unwrap();
        let id = accepted(&second);
        assert!(id.is_proxy);
        assert_eq!(id.issuer, first.subject());
        assert_eq!(id.dn, DemoPki::USER_DN);
    }

    #[test]
    fn rfc3820_limited_proxy() {
        let id = accepted(
            &shared()
                .user
                .proxy(ProxyKind::Rfc3820Limited)
                .issue()
                .unwrap(),
        );
        assert!(id.is_proxy && id.is_limited_proxy);
        assert_eq!(id.dn, DemoPki::USER_DN);
    }

    #[test]
    fn legacy_proxy() {
        let id = accepted(&shared().user.proxy(ProxyKind::Legacy).issue().unwrap());
        assert!(id.is_proxy && !id.is_limited_proxy);
        assert_eq!(id.subject, proxy_dn("/CN=proxy"));
        assert_eq!(id.dn, DemoPki::USER_DN);
    }

    #[test]
    fn legacy_limited_proxy() {
        let id = accepted(
            &shared()
                .user
                .proxy(ProxyKind::LegacyLimited)
                .issue()
                .unwrap(),
        );
        assert!(id.is_proxy && id.is_limited_proxy);
        assert_eq!(id.dn, DemoPki::USER_DN);
    }

    #[test]
    fn legacy_proxy_of_legacy_proxy_and_rfc_on_legacy() {
        let legacy = shared().user.proxy(ProxyKind::Legacy).issue().unwrap();
        let id = accepted(&legacy.proxy(ProxyKind::Legacy).issue().unwrap());
        assert!(id.is_proxy);
        assert_eq!(id.subject, proxy_dn("/CN=proxy/CN=proxy"));
        assert_eq!(id.dn, DemoPki::USER_DN);

        let id = accepted(
            &legacy
                .proxy(ProxyKind::Rfc3820)
                .group("dirac_user")
                .issue()
                .unwrap(),
        );
        assert!(id.is_proxy);
        assert_eq!(id.dn, DemoPki::USER_DN);
        assert_eq!(id.group_extension.as_deref(), Some("dirac_user"));
    }

    #[test]
    fn proxy_with_group_extension() {
        let id = accepted(
            &shared()
                .user
                .proxy(ProxyKind::Rfc3820)
                .group("dirac_admin")
                .issue()
                .unwrap(),
        );
        assert!(id.is_proxy);
        assert_eq!(id.group_extension.as_deref(), Some("dirac_admin"));
    }

    #[test]
    fn expired_user_certificate_is_refused() {
        let expired = shared()
            .ca
            .issue_user("/C=ch/O=DIRAC/CN=expired", Validity::expired())
            .unwrap();
        assert_eq!(refused(&expired), openssl_sys::X509_V_ERR_CERT_HAS_EXPIRED);
    }

    #[test]
    fn expired_proxy_is_refused() {
        let proxy = shared()
            .user
            .proxy(ProxyKind::Rfc3820)
            .validity(Validity::expired())
            .issue()
            .unwrap();
        assert_eq!(refused(&proxy), openssl_sys::X509_V_ERR_CERT_HAS_EXPIRED);
    }

    #[test]
    fn untrusted_ca_is_refused() {
        let other = Ca::new("/C=ch/O=Elsewhere/CN=Other CA", Validity::from_now(HOUR)).unwrap();
        let user = other
            .issue_user(DemoPki::USER_DN, Validity::from_now(HOUR))
            .unwrap();
        assert_eq!(
            refused(&user),
            openssl_sys::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        );
    }

    #[test]
    fn forged_proxy_is_refused() {
        let pki = shared();
        let forged = pki
            .user
            .proxy(ProxyKind::Rfc3820)
            .signed_by(&pki.host.key)
            .issue()
            .unwrap();
        assert_eq!(
            refused(&forged),
            openssl_sys::X509_V_ERR_CERT_SIGNATURE_FAILURE
        );
        let forged = pki
            .user
            .proxy(ProxyKind::Legacy)
            .signed_by(&pki.host.key)
            .issue()
            .unwrap();
        assert_eq!(
            refused(&forged),
            openssl_sys::X509_V_ERR_CERT_SIGNATURE_FAILURE
        );
    }

    #[test]
    fn misnamed_rfc3820_proxy_is_refused() {
        let proxy = shared().user.proxy(ProxyKind::Rfc3820);
        let misnamed = proxy
            .subject_override("/C=ch/O=DIRAC/OU=DIRAC demo/CN=admin/CN=1234567890")
            .issue()
            .unwrap();
        // X509_V_ERR_PROXY_SUBJECT_NAME_VIOLATION, not in openssl-sys.
        assert_eq!(refused(&misnamed), 72);
    }

    #[test]
    fn misnamed_legacy_proxy_is_refused() {
        let proxy = shared().user.proxy(ProxyKind::Legacy);
        let misnamed = proxy
            .subject_override(&proxy_dn("/CN=proxy2"))
            .issue()
            .unwrap();
        assert_eq!(refused(&misnamed), openssl_sys::X509_V_ERR_INVALID_CA);
        let proxy = shared().user.proxy(ProxyKind::Legacy);
        let elsewhere = proxy
            .subject_override("/C=ch/O=DIRAC/OU=DIRAC demo/CN=admin/CN=proxy")
            .issue()
            .unwrap();
        assert_eq!(refused(&elsewhere), openssl_sys::X509_V_ERR_INVALID_CA);
    }

    #[test]
    fn path_length_is_only_forgiven_for_legacy_proxies() {
        // The test CA has pathlen:0, so an intermediate CA under it breaks the constraint, with
        // or without a legacy proxy on top.
        let sub = intermediate(&shared().ca, "/C=ch/O=DIRAC/CN=Intermediate CA");
        let mut user = sub
            .issue_user(
                "/C=ch/O=DIRAC/CN=below intermediate",
                Validity::from_now(HOUR),
            )
            .unwrap();
        user.chain.push(sub.cert().to_owned());
        assert_eq!(refused(&user), openssl_sys::X509_V_ERR_PATH_LENGTH_EXCEEDED);
        let legacy = user.proxy(ProxyKind::Legacy).issue().unwrap();
        assert_eq!(
            refused(&legacy),
            openssl_sys::X509_V_ERR_PATH_LENGTH_EXCEEDED
        );
    }

    #[test]
    fn legacy_proxies_face_the_purpose_check_of_rfc_proxies() {
        let server_only = server_only_certificate(&shared().ca, "/C=ch/O=DIRAC/CN=web server");
        let rfc = server_only.proxy(ProxyKind::Rfc3820).issue().unwrap();
        assert_eq!(refused(&rfc), openssl_sys::X509_V_ERR_INVALID_PURPOSE);
        let legacy = server_only.proxy(ProxyKind::Legacy).issue().unwrap();
        assert_eq!(refused(&legacy), openssl_sys::X509_V_ERR_INVALID_PURPOSE);
    }

    #[test]
    fn no_client_certificate_when_requested() {
        assert_eq!(handshake(ClientCertMode::Requested, None), Ok(None));
    }

    #[test]
    fn no_client_certificate_when_required_is_refused() {
        assert!(handshake(ClientCertMode::Required, None).is_err());
    }

    #[test]
    fn requested_mode_still_verifies_a_presented_certificate() {
        let expired = shared()
            .ca
            .issue_user("/C=ch/O=DIRAC/CN=expired", Validity::expired())
            .unwrap();
        let outcome = handshake(ClientCertMode::Requested, Some(&expired));
        assert_eq!(
            outcome.unwrap_err().as_raw(),
            openssl_sys::X509_V_ERR_CERT_HAS_EXPIRED
        );
    }

    #[test]
    fn resumed_sessions_keep_the_proxy_chain() {
        let proxy = shared()
            .user
            .proxy(ProxyKind::Rfc3820)
            .group("dirac_user")
            .issue()
            .unwrap();
        for version in [SslVersion::TLS1_3, SslVersion::TLS1_2] {
            let (addr, server) = serve(ClientCertMode::Required, 2);
            let connector = connector(Some(&proxy), Some(version));
            let (reused, session) = connect(&connector, addr, None).unwrap();
            assert!(!reused);
            let (reused, _) = connect(&connector, addr, Some(&session)).unwrap();
            assert!(
                reused,
                "{version:?}: the second handshake resumes the session"
            );
            let seen = server.join().unwrap();
            let first = seen[0].clone().unwrap().unwrap();
            assert!(first.is_proxy && first.group_extension.as_deref() == Some("dirac_user"));
            let second = seen[1].clone().unwrap().unwrap();
            assert_eq!(
                (second.dn, second.is_proxy),
                (first.dn, first.is_proxy),
                "{version:?}"
            );
        }
    }

    #[test]
    fn configuration_errors() {
        let (_dir, good) = settings(ClientCertMode::Required);
        let missing = TlsSettings {
            cert_file: good.ca_dir.join("nope.pem"),
            ..good.clone()
        };
        assert!(matches!(
            acceptor(&missing),
            Err(TlsError::File {
                what: "host certificate",
                ..
            })
        ));
        let not_a_dir = TlsSettings {
            ca_dir: good.cert_file.clone(),
            ..good.clone()
        };
        assert!(matches!(
            acceptor(&not_a_dir),
            Err(TlsError::File {
                what: "CA directory",
                ..
            })
        ));
        let (_other_dir, other) = settings(ClientCertMode::Required);
        let user_key = other.key_file.with_file_name("userkey.pem");
        let mismatch = TlsSettings {
            key_file: user_key,
            ..good.clone()
        };
        assert!(matches!(
            acceptor(&mismatch),
            Err(TlsError::File {
                what: "host key",
                ..
            })
        ));
        let encrypted_key = good.key_file.with_file_name("encrypted.pem");
        let cipher = openssl::symm::Cipher::aes_256_cbc();
        let pem = shared()
            .host
            .key
            .private_key_to_pem_pkcs8_passphrase(cipher, b"secret");
        fs::write(&encrypted_key, pem.unwrap()).unwrap();
        let encrypted = TlsSettings {
            key_file: encrypted_key,
            ..good.clone()
        };
        assert!(matches!(
            acceptor(&encrypted),
            Err(TlsError::File {
                what: "host key",
                ..
            })
        ));
        let empty = TlsSettings {
            session_id_context: String::new(),
            ..good.clone()
        };
        assert!(matches!(
            acceptor(&empty),
            Err(TlsError::EmptySessionIdContext)
        ));
        let long = TlsSettings {
            session_id_context: format!("DIRAC-{}-9181", "h".repeat(64)),
            ..good
        };
        assert!(acceptor(&long).is_ok());
    }
}
