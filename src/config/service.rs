//! The service section (`<root>/Services/TokenManager`): each option declared once, with the
//! text config/README.md shows for it, and its resolution into [`ServiceSettings`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use super::cfg::{Entry, Section, split_list};
use super::options::{
    Address, Bytes, Count, EntryKind, FilePath, Flag, LogFormat, LogFormats, Optional, Port,
    Reader, Seconds, ServicePaths, Setting, SubSection, Text, Zero, declare_options, render_table,
};
use super::secrets::env_value;
use super::{ConfigError, ENV_ENCRYPTION_KEY_FILE};

/// Service section names, in order of preference.
const SERVICE_NAMES: [&str; 2] = ["TokenManager", "TornadoTokenManager"];

/// Without a Tornado port, nor `HTTPSPort`.
const FALLBACK_HTTPS_PORT: u16 = 8443;

declare_options! {
    /// Every entry of the service section this service reads. Add new options here: anything
    /// else but [`DIRAC_OPTIONS`] draws a warning, and config/README.md's table is checked
    /// against these declarations by a test.
    pub static SERVICE_OPTIONS;

    /// DISET (`dips://`) port; 0 picks a free port
    pub const PORT: Setting<Port> = "Port", Port, 9181;
    /// HTTPS port; 0 picks a free port
    pub const HTTPS_PORT: Optional<Port> = "HTTPSPort", Port, "Tornado port (above), else 8443";
    /// address the DISET, HTTPS and metrics listeners bind to
    pub const LISTEN_ADDRESS: Setting<Address> =
        "ListenAddress", Address("0.0.0.0 or ::"), IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    /// Prometheus metrics port; 0 picks a free port
    pub const METRICS_PORT: Setting<Port> = "MetricsPort", Port, 9182;
    // Scrapers and health checks may live on another network than DIRAC's clients.
    /// address the metrics listener (`/metrics`, `/healthz`, `/readyz`) binds to, e.g.
    /// `127.0.0.1` or an internal network's address when the scraper should be the only one to
    /// reach it
    pub const METRICS_LISTEN_ADDRESS: Optional<Address> =
        "MetricsListenAddress", Address("127.0.0.1 or ::1"), "`ListenAddress`";
    /// keyring that encrypts the stored tokens, see below
    pub const ENCRYPTION_KEY_FILE: Optional<FilePath> =
        "EncryptionKeyFile", FilePath, "required (or `TOKENMANAGER_ENCRYPTION_KEY_FILE`)";
    /// create a missing keyring and demo PKI (CA, host and user certificates, a user proxy) at
    /// start instead of refusing to start; meant for the shipped example configuration only,
    /// never for production
    pub const GENERATE_DEMO_CREDENTIALS: Setting<Flag> = "GenerateDemoCredentials", Flag, false;
    /// database connections per process; the DB actor runs one thread per connection
    pub const DATABASE_POOL_SIZE: Setting<Count> =
        "DatabasePoolSize", Count(Zero::Refused), 8;
    // A healthy database answers in milliseconds; a caller should learn of a hung one well
    // before a DIRAC client's own timeout (its RPC timeout is 120 s, an HTTP probe's a few
    // seconds).
    /// a call waits at most this long for each database operation, then fails (code
    /// `internal`; DIRAC protocols: `S_ERROR`). An operation whose caller gave up is dropped
    /// before it runs, except the writes that keep a grant (a rotated refresh token, a mark that
    /// a refresh token must not be used again), which run to their end whenever the database
    /// answers. Covers a hung server, a stalled network and a locked SQLite file alike
    pub const DATABASE_DEADLINE: Setting<Seconds> =
        "DatabaseDeadline", Seconds(Zero::Refused), 3;
    // Long enough to ride out a database failover or a stalled network, short enough that a
    // token revoked through another replica meanwhile is not served for long.
    /// How stale a replica's token cache may be. Every change of a credential or shared client
    /// token — through any replica, `import-dirac-tokendb`, an older release during a rolling
    /// upgrade, an operator's SQL — is announced by the database (triggers: PostgreSQL
    /// `NOTIFY`, a change log on MariaDB and SQLite) and applied by every `serve` within ~0.1 s;
    /// a replica serves cached user tokens without asking the database only while its last
    /// confirmed sync with that feed is at most this old. Beyond it (feed broken or behind:
    /// *fallback*, `tokenmanager_change_feed_fallback` = 1) each user-token hit asks the
    /// database for the credential's version, and while the database does not answer either,
    /// hits are refused once its last answer is older than this. The same number decides both
    /// cases because a replica cannot tell them apart: through a hung database nobody commits a
    /// deletion, but a replica cut off from a working one may miss one — for `MaxStaleness` at
    /// most. Raise it to keep serving cached tokens through longer database outages, at the
    /// price of a cut-off replica serving a deleted credential's cached token that much longer.
    /// 0: every user-token hit asks the database
    pub const MAX_STALENESS: Setting<Seconds> = "MaxStaleness", Seconds(Zero::Allowed), 1;
    // actix-web's default: more than any getToken, whose IdP exchange is bounded by its timeout.
    /// after SIGTERM, calls in progress (and refreshes awaiting their IdP) get this long to
    /// finish; a refresh still at its IdP when it ends keeps its lease, so no other process
    /// presents the same refresh token while that request may still be processed
    pub const SHUTDOWN_GRACE_PERIOD: Setting<Seconds> =
        "ShutdownGracePeriod", Seconds(Zero::Refused), 30;
    /// refresh the access token of a user credential or client-token key that callers asked
    /// for lately in the background, before it runs out, so that they never wait on the IdP;
    /// a key nobody asked for within the last half of its token's lifetime is left to expire
    /// (no IdP load for idle users). Same single flight and leases as a caller's refresh
    pub const REFRESH_AHEAD: Setting<Flag> = "RefreshAhead", Flag, true;
    // 10 %: an hour-long token is refreshed with 6 minutes left, a minute-long one as soon as
    // the callers' requiredTimeLeft says.
    /// a background refresh starts when this share (percent) of the token's lifetime is left,
    /// or when the longest `requiredTimeLeft` its callers asked for plus 1 s is, whichever is
    /// more, but never before half its lifetime; each token comes up to 2 % of its lifetime (at
    /// most 5 s) earlier at random, so that tokens minted together are not refreshed together.
    /// A failed one leaves the token in service and is tried again after 2 s, doubling up to
    /// 60 s, while the token lives
    pub const REFRESH_AHEAD_PERCENT: Setting<Count> =
        "RefreshAheadPercent", Count(Zero::Allowed), 10;
    /// record every getToken and every change of a stored credential in the audit trail
    /// (`getTokenAudit`, `tokenmanager audit`; docs/OPERATIONS.md#the-audit-trail)
    pub const AUDIT: Setting<Flag> = "Audit", Flag, true;
    // Cache hits come by the ten thousand per second: one row each would make the trail the
    // service's main write load.
    /// getToken calls of one caller for one subject and token key, by one protocol, with the
    /// same origin and outcome, within this window are one audit record (first and last time,
    /// count, up to 8 distinct client addresses); the window's records are written in batches
    /// when it ends, off the request path
    pub const AUDIT_WINDOW: Setting<Seconds> = "AuditWindow", Seconds(Zero::Refused), 5;
    /// audit records older than this many days are deleted, hourly, 1,000 rows per statement;
    /// 0 keeps them forever
    pub const AUDIT_RETENTION_DAYS: Setting<Count> =
        "AuditRetentionDays", Count(Zero::Allowed), 365;
    /// the log's format: `text` (lines for people) or `json` (one JSON object per event, for a
    /// log shipper); read from the local configuration files at start
    pub const LOG_FORMAT: Setting<LogFormats> = "LogFormat", LogFormats, LogFormat::Text;
    /// token-info replies (`getTokensByUserID`, `getUserTokensInfo`, `getUsersTokensInfo`,
    /// `updateToken`) include `access_token` and `refresh_token` — to callers with
    /// `ProxyManagement` only; without it token values never leave the service in these replies
    pub const EXPOSE_TOKEN_VALUES: Setting<Flag> = "ExposeTokenValues", Flag, false;
    /// a refresh actor (one per stored credential or client-token key) stops after this long
    /// without requests; the next request starts a new one
    pub const REFRESH_ACTOR_IDLE_TIME: Setting<Seconds> =
        "RefreshActorIdleTime", Seconds(Zero::Allowed), 300;
    /// largest request body of an HTTPS caller with a client certificate or bearer token (JSON
    /// API and DIRAC's HTTPS protocol) and of DISET arguments; larger ones get HTTP 413
    pub const MAX_BODY_BYTES: Setting<Bytes> = "MaxBodyBytes", Bytes, 1024 * 1024;
    /// DIRAC's protocol of the service (`dips` or `https`)
    pub const PROTOCOL: Optional<Text> = "Protocol", Text("string"), "unset";
    // DIRAC's routes of the service on its HTTPS port: the section names a DIRAC client may use.
    /// URL paths on `HTTPSPort` that speak DIRAC's HTTPS protocol (`POST /<System>/<Service>`);
    /// each must be `/<System>/<Service>`; read at start
    pub const HTTPS_PATHS: Setting<ServicePaths> = "HTTPSPaths", ServicePaths,
        &["/Framework/TokenManager", "/Framework/TornadoTokenManager"];
    /// DISET calls served at once (DIRAC's default: 15 threads); a further caller (its
    /// certificate verified) waits up to `QueueTimeout` for a slot. Ours are tasks, not
    /// threads, so the limit bounds memory only; 0 means the default
    pub const MAX_THREADS: Setting<Count> = "MaxThreads", Count(Zero::MeansDefault), 1024;
    /// a DISET call that found no `MaxThreads` slot within this time is answered `S_ERROR`
    /// "Service busy" and closed
    pub const QUEUE_TIMEOUT: Setting<Seconds> = "QueueTimeout", Seconds(Zero::Refused), 10;
    /// `ThreadLimit/RPC/<method> = <n>`: DISET calls of `<method>` served at once (DIRAC: 15
    /// each); the others wait; unlimited when unset
    pub const THREAD_LIMIT: SubSection = "ThreadLimit", "unset";
    /// HTTPS and DISET: a connection must finish its TLS handshake within this time of being
    /// accepted (the wait for a handshake slot included), else it is closed (DIRAC's connection
    /// timeout)
    pub const HANDSHAKE_TIMEOUT: Setting<Seconds> =
        "HandshakeTimeout", Seconds(Zero::Refused), 10;
    /// a DISET peer must send each message (proposal, arguments) and take each reply within
    /// this time, else the connection is dropped; keep-alive frames do not extend it, and more
    /// than 4 of them in place of a message drop the peer
    pub const PACKET_TIMEOUT: Setting<Seconds> = "PacketTimeout", Seconds(Zero::Refused), 60;
    /// all listeners: a connection that sends nothing within this time of being accepted is
    /// closed (a real client sends its ClientHello or request at once)
    pub const FIRST_BYTE_TIMEOUT: Setting<Seconds> =
        "FirstByteTimeout", Seconds(Zero::Refused), 3;
    /// TLS handshakes running at once on each of the HTTPS and DISET listeners; further clients
    /// wait for a slot within `HandshakeTimeout`. Handshakes are CPU work: this bounds their
    /// memory without slowing a burst down. Addresses that presented a verified client
    /// certificate within the last hour (up to 65,536 of them) have as many slots again of
    /// their own, so that a flood of handshakes without certificates cannot hold up the hosts
    /// the service already serves; a host's first connection waits with everyone
    pub const MAX_CONCURRENT_HANDSHAKES: Setting<Count> =
        "MaxConcurrentHandshakes", Count(Zero::Refused), 64;
    /// connections of one listener that have sent bytes without presenting a verified client
    /// certificate (in their handshake, or TLS without a certificate, and every metrics
    /// connection): what costs TLS state and buffers; one more sheds the oldest of them, those
    /// without a certificate first. Idle sockets (no byte yet) are bounded by the descriptor
    /// budget alone, where the oldest goes first: a lower cap would leave an attacker's surplus
    /// in the kernel's accept queue, ahead of real clients
    pub const MAX_UNIDENTIFIED_CONNECTIONS: Setting<Count> =
        "MaxUnidentifiedConnections", Count(Zero::Refused), 4096;
    /// TLS connections without a client certificate (and metrics connections) from one IP
    /// address, all listeners together; more are refused at accept. Idle sockets and
    /// connections in their handshake do not count, so a burst of real clients behind one NAT
    /// is not refused (silent sockets go at `FirstByteTimeout` or are shed); 0: no cap
    pub const MAX_UNIDENTIFIED_PER_ADDRESS: Setting<Count> =
        "MaxUnidentifiedPerAddress", Count(Zero::Allowed), 256;
    /// file descriptors kept back from client connections for the database pool, IdP and
    /// Configuration Server requests, logs and CA reloads. The service raises its soft
    /// open-file limit to the hard limit at start; clients get the rest (at least 64), and when
    /// it is spent a new connection sheds the oldest unidentified one (as above) or, if every
    /// connection is identified, is refused. `tokenmanager_connection_budget` shows the figure
    pub const DESCRIPTOR_RESERVE: Setting<Count> =
        "DescriptorReserve", Count(Zero::Allowed), 512;
    /// HTTPS and metrics: an HTTP keep-alive connection idle this long is closed
    pub const KEEP_ALIVE_TIMEOUT: Setting<Seconds> =
        "KeepAliveTimeout", Seconds(Zero::Refused), 5;
    /// HTTPS and metrics: a request head (request line and headers) must arrive within this time
    pub const REQUEST_HEAD_TIMEOUT: Setting<Seconds> =
        "RequestHeadTimeout", Seconds(Zero::Refused), 5;
    /// HTTPS: a caller with a client certificate or a bearer token must send its whole request
    /// body within this time, else HTTP 408
    pub const BODY_TIMEOUT: Setting<Seconds> = "BodyTimeout", Seconds(Zero::Refused), 30;
    // Enough for every call ping or whoami is, in either HTTPS protocol.
    /// HTTPS: largest request body of a caller with neither a client certificate nor an
    /// `Authorization: Bearer` header (DIRAC's HTTPS protocol carries `method` in the body, so
    /// the body is read before the call is refused); larger ones get HTTP 413
    pub const ANONYMOUS_MAX_BODY_BYTES: Setting<Bytes> = "AnonymousMaxBodyBytes", Bytes, 4096;
    /// HTTPS: the same callers must send their whole body within this time, else HTTP 408
    pub const ANONYMOUS_BODY_TIMEOUT: Setting<Seconds> =
        "AnonymousBodyTimeout", Seconds(Zero::Refused), 2;
    /// `Authorization/<method>`: a list of authorization rules of `<method>`: `all`, `any`,
    /// `authenticated`, a property, `group:<g>`, `vo:<vo>`; `Default` applies to methods
    /// without a rule
    pub const AUTHORIZATION: SubSection = "Authorization", "see below";
}

/// DIRAC's options accepted in the service section and ignored, so that an existing section
/// can be reused unchanged.
pub const DIRAC_OPTIONS: [&str; 14] = [
    "Module",
    "HandlerPath",
    "URL",
    "MinThreads",
    "MaxWaitingPetitions",
    "MaxMessagingConnections",
    "CloneProcesses",
    "ContextLifeTime",
    "LogLevel",
    "LogBackends",
    "MaskRequestParams",
    "EnableSecurityLogging",
    "EnableActivityMonitoring",
    "RegisterAlsoAs",
];

/// The part of config/README.md between its `service-options` markers.
pub fn service_options_doc() -> String {
    let dirac = DIRAC_OPTIONS.map(|name| format!("`{name}`")).join(", ");
    format!(
        "{}\nDIRAC options accepted in the service section and ignored, so that an existing \
         section works unchanged: {dirac}.\n",
        render_table(SERVICE_OPTIONS)
    )
}

#[derive(Clone, Debug)]
pub struct ServiceSettings {
    /// `Framework/TokenManager` or `Framework/TornadoTokenManager`.
    pub name: String,
    /// The service section, e.g. `/Systems/Framework/Production/Services/TokenManager`.
    pub path: String,
    pub port: u16,
    pub https_port: u16,
    pub listen_address: IpAddr,
    /// `ListenAddress` unless set.
    pub metrics_listen_address: IpAddr,
    pub metrics_port: u16,
    pub encryption_key_file: PathBuf,
    /// Create a missing keyring (and, later, demo certificates) instead of refusing to start:
    /// for the shipped example configuration only.
    pub generate_demo_credentials: bool,
    pub database_pool_size: u32,
    /// How long a call waits for a database operation before it fails.
    pub database_deadline: Duration,
    /// On a shared database, how long after its last answer a cached user token is still served
    /// without confirming that no other replica changed its credential.
    pub max_staleness: Duration,
    /// How long a graceful stop lets calls in progress finish.
    pub shutdown_grace: Duration,
    /// Token-info replies carry token values only with this set, and only to ProxyManagement.
    pub expose_token_values: bool,
    pub audit: AuditSettings,
    pub log_format: LogFormat,
    pub max_body_bytes: u64,
    pub refresh_actor_idle_time: Duration,
    /// Background refreshes of hot keys: the share of the lifetime left when they start
    /// (percent); none when off.
    pub refresh_ahead_percent: Option<u32>,
    pub protocol: Option<String>,
    /// `Authorization/<method>` → rules (list semantics); `Default` is an ordinary key.
    pub authorization: BTreeMap<String, Vec<String>>,
    /// Routes of DIRAC's HTTPS protocol, each `/<System>/<Service>`.
    pub https_paths: Vec<String>,
    pub diset: DisetSettings,
    pub connections: ConnectionSettings,
}

/// The audit trail's options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditSettings {
    pub enabled: bool,
    pub window: Duration,
    /// None: records are kept forever.
    pub retention: Option<Duration>,
}

/// Admission and read deadlines of the listeners (see `transport::admission`). The connection
/// bounds are read at start; the body limits at each request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionSettings {
    pub first_byte_timeout: Duration,
    /// From accept to a finished TLS handshake, the wait for a handshake slot included.
    pub handshake_timeout: Duration,
    pub max_handshakes: u32,
    pub max_unidentified: u32,
    /// 0: no cap.
    pub max_unidentified_per_address: u32,
    pub descriptor_reserve: u32,
    pub keep_alive: Duration,
    pub request_head_timeout: Duration,
    pub body_timeout: Duration,
    pub anonymous_max_body_bytes: u64,
    pub anonymous_body_timeout: Duration,
}

/// Limits of the DISET listener, under DIRAC's option names where DIRAC has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisetSettings {
    pub max_connections: u32,
    /// `ThreadLimit/RPC/<method>`: calls of one method served at once.
    pub method_limits: BTreeMap<String, u32>,
    pub packet_timeout: Duration,
    /// How long a call waits for one of the `max_connections` slots.
    pub queue_timeout: Duration,
}

/// Warns of every entry of the service section that is not declared, or is declared as the
/// other kind.
fn warn_undeclared(reader: &Reader<'_>, warnings: &mut Vec<String>) {
    for (name, entry) in reader.section.entries() {
        let kind = EntryKind::of(entry);
        let origin = entry.origin();
        let declared = SERVICE_OPTIONS
            .iter()
            .find(|option| option.name() == name)
            .map(|option| option.entry_kind())
            .or_else(|| DIRAC_OPTIONS.contains(&name).then_some(EntryKind::Option));
        match declared {
            None => warnings.push(format!(
                "{origin}: unknown {} {} in the service section (ignored)",
                kind.noun(),
                reader.path_of(name)
            )),
            Some(declared) if declared != kind => warnings.push(format!(
                "{origin}: {} must be {}, not {} (ignored)",
                reader.path_of(name),
                declared.with_article(),
                kind.with_article()
            )),
            Some(_) => {}
        }
    }
}

/// `framework_root` and `tornado_port` come from the layout of the CS.
pub(super) fn resolve_service(
    root: &Section,
    framework_root: &str,
    tornado_port: &str,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<ServiceSettings, ConfigError> {
    let services = format!("{framework_root}/Services");
    let Some((short_name, section, origin)) = SERVICE_NAMES.iter().find_map(|name| {
        root.section_with_origin(&format!("{services}/{name}"))
            .map(|(section, origin)| (*name, section, origin))
    }) else {
        return Err(ConfigError::MissingSection {
            path: format!("{services}/{}", SERVICE_NAMES[0]),
            hint: format!("nor {services}/{}", SERVICE_NAMES[1]),
        });
    };
    let path = format!("{services}/{short_name}");
    let options = Reader {
        section,
        path: &path,
    };
    warn_undeclared(&options, warnings);

    let listen_address = options.get(&LISTEN_ADDRESS)?;
    let encryption_key_file =
        match env_value(env, ENV_ENCRYPTION_KEY_FILE)? {
            Some(found) => PathBuf::from(found.value),
            None => options.optional(&ENCRYPTION_KEY_FILE)?.ok_or_else(|| {
                ConfigError::MissingOption {
                    section: origin.clone(),
                    path: options.path_of(ENCRYPTION_KEY_FILE.name),
                    hint: format!(" (nor {ENV_ENCRYPTION_KEY_FILE})"),
                }
            })?,
        };

    Ok(ServiceSettings {
        name: format!("Framework/{short_name}"),
        port: options.get(&PORT)?,
        https_port: match options.optional(&HTTPS_PORT)? {
            Some(port) => port,
            None => root.get_u16(tornado_port)?.unwrap_or(FALLBACK_HTTPS_PORT),
        },
        listen_address,
        metrics_listen_address: options
            .optional(&METRICS_LISTEN_ADDRESS)?
            .unwrap_or(listen_address),
        metrics_port: options.get(&METRICS_PORT)?,
        encryption_key_file,
        generate_demo_credentials: options.get(&GENERATE_DEMO_CREDENTIALS)?,
        database_pool_size: options.get(&DATABASE_POOL_SIZE)?,
        database_deadline: options.get(&DATABASE_DEADLINE)?,
        max_staleness: options.get(&MAX_STALENESS)?,
        shutdown_grace: options.get(&SHUTDOWN_GRACE_PERIOD)?,
        expose_token_values: options.get(&EXPOSE_TOKEN_VALUES)?,
        audit: AuditSettings {
            enabled: options.get(&AUDIT)?,
            window: options.get(&AUDIT_WINDOW)?,
            retention: match options.get(&AUDIT_RETENTION_DAYS)? {
                0 => None,
                days => Some(Duration::from_secs(u64::from(days) * 86_400)),
            },
        },
        log_format: options.get(&LOG_FORMAT)?,
        max_body_bytes: options.get(&MAX_BODY_BYTES)?,
        refresh_actor_idle_time: options.get(&REFRESH_ACTOR_IDLE_TIME)?,
        refresh_ahead_percent: options
            .get(&REFRESH_AHEAD)?
            .then(|| options.get(&REFRESH_AHEAD_PERCENT))
            .transpose()?,
        protocol: options.optional(&PROTOCOL)?,
        authorization: authorization(&options, warnings),
        https_paths: options.get(&HTTPS_PATHS)?,
        diset: DisetSettings {
            max_connections: options.get(&MAX_THREADS)?,
            method_limits: method_limits(
                root,
                &options.path_of(&format!("{}/RPC", THREAD_LIMIT.name)),
            )?,
            packet_timeout: options.get(&PACKET_TIMEOUT)?,
            queue_timeout: options.get(&QUEUE_TIMEOUT)?,
        },
        connections: ConnectionSettings {
            first_byte_timeout: options.get(&FIRST_BYTE_TIMEOUT)?,
            handshake_timeout: options.get(&HANDSHAKE_TIMEOUT)?,
            max_handshakes: options.get(&MAX_CONCURRENT_HANDSHAKES)?,
            max_unidentified: options.get(&MAX_UNIDENTIFIED_CONNECTIONS)?,
            max_unidentified_per_address: options.get(&MAX_UNIDENTIFIED_PER_ADDRESS)?,
            descriptor_reserve: options.get(&DESCRIPTOR_RESERVE)?,
            keep_alive: options.get(&KEEP_ALIVE_TIMEOUT)?,
            request_head_timeout: options.get(&REQUEST_HEAD_TIMEOUT)?,
            body_timeout: options.get(&BODY_TIMEOUT)?,
            anonymous_max_body_bytes: options.get(&ANONYMOUS_MAX_BODY_BYTES)?,
            anonymous_body_timeout: options.get(&ANONYMOUS_BODY_TIMEOUT)?,
        },
        path,
    })
}

/// `Authorization/<method>` → its rules; a section there is warned about.
fn authorization(
    options: &Reader<'_>,
    warnings: &mut Vec<String>,
) -> BTreeMap<String, Vec<String>> {
    let mut authorization = BTreeMap::new();
    let Some(auth) = options.section(&AUTHORIZATION) else {
        return authorization;
    };
    for (name, entry) in auth.entries() {
        match entry {
            Entry::Option { value, .. } => {
                authorization.insert(name.to_owned(), split_list(value));
            }
            Entry::Section(_, origin) => warnings.push(format!(
                "{origin}: unexpected section {} (ignored)",
                options.path_of(&format!("{}/{name}", AUTHORIZATION.name))
            )),
        }
    }
    authorization
}

fn method_limits(root: &Section, path: &str) -> Result<BTreeMap<String, u32>, ConfigError> {
    let mut limits = BTreeMap::new();
    if let Some(section) = root.section(path) {
        for (method, _, _) in section.options() {
            if let Some(limit) = root
                .get_u32(&format!("{path}/{method}"))?
                .filter(|l| *l > 0)
            {
                limits.insert(method.to_owned(), limit);
            }
        }
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::path::Path;

    const SERVICE: &str = "/F/Services/TokenManager";

    /// The service section `/F/Services/TokenManager` holding `options`, after a keyring.
    fn resolve_with(options: &str) -> Result<(ServiceSettings, Vec<String>), ConfigError> {
        let text = format!(
            "F\n{{\nServices\n{{\nTokenManager\n{{\nEncryptionKeyFile = k\n{options}\n}}\n}}\n}}\n"
        );
        let root = Section::parse(&text, Path::new("/etc/tm/s.cfg")).unwrap();
        let mut warnings = Vec::new();
        let settings = resolve_service(&root, "/F", "/T/Port", &|_| None, &mut warnings)?;
        Ok((settings, warnings))
    }

    fn error_of(options: &str) -> String {
        resolve_with(options).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_the_ones_of_before_the_declarations() {
        let (s, warnings) = resolve_with("").unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let any = IpAddr::from([0, 0, 0, 0]);
        let secs = Duration::from_secs;
        assert_eq!((s.port, s.https_port, s.metrics_port), (9181, 8443, 9182));
        assert_eq!((s.listen_address, s.metrics_listen_address), (any, any));
        assert_eq!(s.encryption_key_file, Path::new("/etc/tm/k"));
        assert!(!s.generate_demo_credentials && !s.expose_token_values);
        assert_eq!(s.database_pool_size, 8);
        assert_eq!(
            (s.database_deadline, s.max_staleness, s.shutdown_grace),
            (secs(3), secs(1), secs(30))
        );
        assert_eq!(
            (s.max_body_bytes, s.refresh_actor_idle_time),
            (1 << 20, secs(300))
        );
        assert_eq!(s.protocol, None);
        assert!(s.authorization.is_empty());
        assert_eq!(
            s.https_paths,
            ["/Framework/TokenManager", "/Framework/TornadoTokenManager"]
        );
        assert_eq!(
            s.diset,
            DisetSettings {
                max_connections: 1024,
                method_limits: BTreeMap::new(),
                packet_timeout: secs(60),
                queue_timeout: secs(10),
            }
        );
        assert_eq!(
            s.connections,
            ConnectionSettings {
                first_byte_timeout: secs(3),
                handshake_timeout: secs(10),
                max_handshakes: 64,
                max_unidentified: 4096,
                max_unidentified_per_address: 256,
                descriptor_reserve: 512,
                keep_alive: secs(5),
                request_head_timeout: secs(5),
                body_timeout: secs(30),
                anonymous_max_body_bytes: 4096,
                anonymous_body_timeout: secs(2),
            }
        );
    }

    #[test]
    fn every_option_is_read_into_its_setting() {
        let (s, warnings) = resolve_with(
            "Port = 1\nHTTPSPort = 2\nListenAddress = ::1\nMetricsPort = 3\n\
             MetricsListenAddress = 127.0.0.2\nGenerateDemoCredentials = yes\n\
             DatabasePoolSize = 4\nDatabaseDeadline = 5\nMaxStaleness = 0\n\
             ShutdownGracePeriod = 6\nExposeTokenValues = TRUE\nRefreshActorIdleTime = 7\n\
             MaxBodyBytes = 0\nProtocol = dips\nHTTPSPaths = /A/B\nMaxThreads = 0\n\
             QueueTimeout = 8\nThreadLimit\n{\nRPC\n{\ngetToken = 9\nping = 0\n}\n}\n\
             HandshakeTimeout = 10\nPacketTimeout = 11\nFirstByteTimeout = 12\n\
             MaxConcurrentHandshakes = 13\nMaxUnidentifiedConnections = 14\n\
             MaxUnidentifiedPerAddress = 0\nDescriptorReserve = 0\nKeepAliveTimeout = 15\n\
             RequestHeadTimeout = 16\nBodyTimeout = 17\nAnonymousMaxBodyBytes = 18\n\
             AnonymousBodyTimeout = 19\nAuthorization\n{\nping = all, ,any\n}\n\
             Module = x\nRegisterAlsoAs = y",
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let secs = Duration::from_secs;
        assert_eq!((s.port, s.https_port, s.metrics_port), (1, 2, 3));
        assert_eq!(s.listen_address, IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]));
        assert_eq!(s.metrics_listen_address, IpAddr::from([127, 0, 0, 2]));
        assert!(s.generate_demo_credentials && s.expose_token_values);
        assert_eq!(s.database_pool_size, 4);
        assert_eq!(
            (s.database_deadline, s.max_staleness, s.shutdown_grace),
            (secs(5), Duration::ZERO, secs(6))
        );
        assert_eq!((s.max_body_bytes, s.refresh_actor_idle_time), (0, secs(7)));
        assert_eq!(s.protocol.as_deref(), Some("dips"));
        assert_eq!(s.https_paths, ["/A/B"]);
        assert_eq!(
            s.authorization,
            BTreeMap::from([("ping".to_owned(), vec!["all".to_owned(), "any".to_owned()])])
        );
        assert_eq!(
            s.diset,
            DisetSettings {
                max_connections: 1024,
                method_limits: BTreeMap::from([("getToken".to_owned(), 9)]),
                packet_timeout: secs(11),
                queue_timeout: secs(8),
            }
        );
        assert_eq!(
            s.connections,
            ConnectionSettings {
                first_byte_timeout: secs(12),
                handshake_timeout: secs(10),
                max_handshakes: 13,
                max_unidentified: 14,
                max_unidentified_per_address: 0,
                descriptor_reserve: 0,
                keep_alive: secs(15),
                request_head_timeout: secs(16),
                body_timeout: secs(17),
                anonymous_max_body_bytes: 18,
                anonymous_body_timeout: secs(19),
            }
        );
    }

    #[test]
    fn bad_values_keep_their_messages() {
        for name in [
            "DatabasePoolSize",
            "DatabaseDeadline",
            "ShutdownGracePeriod",
            "QueueTimeout",
            "HandshakeTimeout",
            "PacketTimeout",
            "FirstByteTimeout",
            "MaxConcurrentHandshakes",
            "MaxUnidentifiedConnections",
            "KeepAliveTimeout",
            "RequestHeadTimeout",
            "BodyTimeout",
            "AnonymousBodyTimeout",
        ] {
            assert_eq!(
                error_of(&format!("{name} = 0")),
                format!("/etc/tm/s.cfg:8: {SERVICE}/{name}: must be at least 1")
            );
        }
        let expected = |kind: &str| format!("invalid value, expected {kind}");
        for (option, reason) in [
            ("Port = -1", expected("an integer from 0 to 65535")),
            ("HTTPSPort = 65536", expected("an integer from 0 to 65535")),
            (
                "ListenAddress = localhost",
                expected("an IP address such as 0.0.0.0 or ::"),
            ),
            (
                "MetricsListenAddress = 1.2.3",
                expected("an IP address such as 127.0.0.1 or ::1"),
            ),
            (
                "MaxThreads = 4294967296",
                expected("an integer from 0 to 4294967295"),
            ),
            (
                "DescriptorReserve = x",
                expected("an integer from 0 to 4294967295"),
            ),
            ("MaxStaleness = 1.5", expected("a non-negative integer")),
            ("MaxBodyBytes = 1k", expected("a non-negative integer")),
            ("DatabaseDeadline = ", expected("a non-negative integer")),
            (
                "HTTPSPaths = /A/B, /C",
                "'/C' is not of the form /<System>/<Service>".to_owned(),
            ),
            ("HTTPSPaths = ,", "must list at least one path".to_owned()),
        ] {
            let name = option.split(' ').next().unwrap();
            assert_eq!(
                error_of(option),
                format!("/etc/tm/s.cfg:8: {SERVICE}/{name}: {reason}"),
                "{option}"
            );
        }
        assert_eq!(
            error_of("ThreadLimit\n{\nRPC\n{\ngetToken = x\n}\n}"),
            format!(
                "/etc/tm/s.cfg:12: {SERVICE}/ThreadLimit/RPC/getToken: \
                 invalid value, expected an integer from 0 to 4294967295"
            )
        );
    }

    #[test]
    fn a_declared_name_of_the_other_kind_is_warned_about() {
        let (_, warnings) = resolve_with(
            "ThreadLimit = 3\nPort\n{\n}\nModule\n{\n}\nAuthorization\n{\nping\n{\n}\n}",
        )
        .unwrap();
        assert_eq!(
            warnings,
            [
                format!(
                    "/etc/tm/s.cfg:8: {SERVICE}/ThreadLimit must be a section, not an option (ignored)"
                ),
                format!(
                    "/etc/tm/s.cfg:10: {SERVICE}/Port must be an option, not a section (ignored)"
                ),
                format!(
                    "/etc/tm/s.cfg:13: {SERVICE}/Module must be an option, not a section (ignored)"
                ),
                format!(
                    "/etc/tm/s.cfg:18: unexpected section {SERVICE}/Authorization/ping (ignored)"
                ),
            ]
        );
    }

    #[test]
    fn each_name_is_declared_once() {
        let mut seen = HashSet::new();
        for name in SERVICE_OPTIONS
            .iter()
            .map(|option| option.name())
            .chain(DIRAC_OPTIONS)
        {
            assert!(seen.insert(name), "{name} declared twice");
        }
        assert_eq!(seen.len(), 38 + 14);
    }
}
