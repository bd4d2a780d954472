//! Every metric of the service, declared once. Names follow Prometheus conventions (`_total`,
//! `_seconds`, base units). They live in a [`Metrics`] registered in the registry its owner gives
//! it, and `/metrics` renders that registry: each application counts its own.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets from 100 µs (a cache hit) to 10 s (an IdP timeout).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    /// Requests handled, by method, protocol (`json`, `https`, `dips`) and outcome (`ok` or the
    /// stable error code).
    pub requests: IntCounterVec,
    /// Time from a decoded request to its encoded reply, by method, protocol and result (`ok` or
    /// `error`: the error codes are in `tokenmanager_requests_total`, to keep this family small).
    pub request_duration: HistogramVec,
    /// Requests to identity providers, by IdP, grant (`refresh_token`, `client_credentials`,
    /// `token_exchange`, `revocation`, `discovery`) and outcome (`ok`, `invalid_grant`, `refused`, `unavailable`,
    /// `reply_lost`).
    pub idp_requests: IntCounterVec,
    /// Time of each IdP request, by IdP and grant, whatever the outcome.
    pub idp_request_duration: HistogramVec,
    /// Calls failed fast, without a request, while an IdP was being backed off from, by IdP.
    pub idp_backoff_refusals: IntCounterVec,
    /// The interval callers of an IdP fail fast for now, by IdP: 0 while it answers; grows with
    /// each failed probe up to 60 s.
    pub idp_backoff_seconds: GaugeVec,
    /// getToken lookups in the access-token cache, by kind (`user`, `client`) and result (`hit`:
    /// served from the cache; `miss`: sent to the credential's refresh actor).
    pub token_cache_lookups: IntCounterVec,
    /// Cache misses answered by a refresh another caller started (queued behind the same refresh
    /// actor, or waiting for another replica's lease), by kind: IdP calls saved.
    pub coalesced_callers: IntCounterVec,
    /// Background refreshes (`RefreshAhead`), by kind (`user`, `client`) and outcome: `ok`
    /// (a fresh token cached before callers needed one), `failed` (the IdP or the database
    /// failed; the current token stays in service, tried again with back-off), `cold` (nobody
    /// asked for the key lately: left to expire), `superseded` (the token was replaced or
    /// dropped before its refresh was due).
    pub background_refreshes: IntCounterVec,
    /// Refresh actors alive now, by kind (one per stored credential or client-token key in use).
    pub refresh_actors: IntGaugeVec,
    /// Refresh tokens the IdP issued that could not be stored (the call failed closed). Any
    /// increase needs an operator: that user's delegation is probably lost.
    pub refresh_token_persist_failures: IntCounter,
    /// Audit records written to the database, by kind (`handout`, `update`, `delete`, `import`,
    /// `rotate`, `needs_redelegation`, `key_rotation`, `revoke`, `export`); a handout record
    /// aggregates the calls of one window.
    pub audit_records: IntCounterVec,
    /// Audit records never written, by reason: `overflow` (more than 100,000 waiting while the
    /// database did not take them), `shutdown` (the database did not take them within the stop's
    /// grace period). Any increase is a gap in the trail.
    pub audit_records_lost: IntCounterVec,
    /// Writes of the audit trail the database refused or did not answer in time; their records
    /// are tried again at the next window.
    pub audit_write_failures: IntCounter,
    /// Audit records waiting to be written (this window's aggregates and queued changes). Set
    /// at scrape.
    pub audit_pending: IntGauge,
    /// Audit records deleted for being older than `AuditRetentionDays`.
    pub audit_purged: IntCounter,
    /// Open database connections of this process's pool.
    pub db_pool_connections: IntGauge,
    /// Idle database connections of this process's pool.
    pub db_pool_idle: IntGauge,
    /// Time a database operation waited for a pooled connection.
    pub db_pool_wait: Histogram,
    /// Database operations, by operation (a [`DbOperation`]) and outcome (one of
    /// [`DB_OUTCOMES`]).
    pub db_operations: IntCounterVec,
    /// Time of each database operation, by operation, whatever the outcome: from the DB actor
    /// taking it up, the wait for a pooled connection included, to its result.
    pub db_operation_duration: HistogramVec,
    /// 1 while this replica holds its liveness lock (PostgreSQL, MariaDB): without it, other
    /// replicas take over the refresh leases it holds.
    pub liveness_lock_held: IntGauge,
    /// Refresh leases of a replica that was gone (its liveness lock lost) taken over, by kind.
    pub lease_takeovers: IntCounterVec,
    /// Seconds since the database last answered an operation (a background probe asks every
    /// few seconds, so this stays small while it answers).
    pub db_last_answer_age: Gauge,
    /// User-token cache hits served without confirming their credential, while the change
    /// feed was behind and the database did not answer (within `MaxStaleness` of its last
    /// answer).
    pub token_cache_unconfirmed_hits: IntCounter,
    /// Changes of credentials and shared client tokens announced by the database and applied to
    /// this replica's cache, whoever made them, by kind (`user`, `client`).
    pub changes_applied: IntCounterVec,
    /// Gaps in the change feed (a new PostgreSQL session, a change log read too late): every
    /// cached user token is confirmed with the database once before it is trusted again.
    pub change_feed_gaps: IntCounter,
    /// Seconds since the last confirmed sync with the change feed: every change committed
    /// before that has been applied. Set at scrape; -1 before the first.
    pub change_sync_age: Gauge,
    /// 1 while the last confirmed sync is older than `MaxStaleness`: cache hits of user tokens
    /// ask the database for their credential's version (the fallback). Set at scrape.
    pub change_feed_fallback: IntGauge,
    /// Stored credentials by provider and state (`active`, `needs_redelegation`), counted in
    /// the background (see `db_gauges_age`).
    pub stored_credentials: IntGaugeVec,
    /// Seconds since `stored_credentials` and `expiring_credentials` were last counted: a scrape
    /// never waits for the database, so a hung one shows here.
    pub db_gauges_age: Gauge,
    /// Usable stored credentials whose refresh token expires within `window` (`24h`, `7d`), by
    /// provider, counted with `stored_credentials`: their users must delegate again soon.
    pub expiring_credentials: IntGaugeVec,
    /// Configuration reloads (SIGHUP, refreshConfiguration) by outcome (`ok`, `rejected`).
    pub config_reloads: IntCounterVec,
    /// When the service's certificates expire, in seconds since the epoch, by certificate
    /// (`host`; `ca`: the earliest of the CA directory), read every few minutes.
    pub certificate_expiry: IntGaugeVec,
    /// Always 1; its labels say what is running.
    pub build_info: IntGaugeVec,
    /// Client connections open now, by listener (`https`, `dips`, `metrics`) and state (`idle`:
    /// no byte yet; `handshake`: waiting for or in its TLS handshake — the handshakes in
    /// progress; `unidentified`: no verified certificate; `identified`).
    pub connections: IntGaugeVec,
    /// Connections closed or refused by admission, by listener and reason (`descriptors`,
    /// `unidentified_limit`, `address_limit`, `idle_timeout`, `handshake_timeout`,
    /// `queue_timeout`, `shutdown`).
    pub connections_shed: IntCounterVec,
    /// Client connections the descriptor limit leaves room for (the soft open-file limit less
    /// `DescriptorReserve`); compare with the sum of `tokenmanager_connections`.
    pub connection_budget: IntGauge,
}

/// Protocols of `tokenmanager_requests_total`.
pub const PROTOCOLS: [&str; 3] = ["json", "https", "dips"];
/// Kinds of token of the token-path metrics.
pub const TOKEN_KINDS: [&str; 2] = ["user", "client"];
/// Grants (and other requests) of `tokenmanager_idp_requests_total`.
pub const IDP_GRANTS: [&str; 5] = [
    "refresh_token",
    "client_credentials",
    "token_exchange",
    "revocation",
    "discovery",
];
/// Outcomes of `tokenmanager_idp_requests_total`.
pub const IDP_OUTCOMES: [&str; 5] = [
    "ok",
    "invalid_grant",
    "refused",
    "unavailable",
    "reply_lost",
];
/// What the DB actor runs: the `operation` label of the database metrics, each named after the
/// store method it calls. A closed set, so that every series exists at 0 from the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbOperation {
    Migrate,
    Ping,
    UpdateToken,
    ImportToken,
    Credential,
    CredentialVersion,
    TokensByUserId,
    RemoveTokens,
    PurgeExpired,
    StoreRefreshed,
    MarkNeedsRedelegation,
    TakeLease,
    ReleaseLease,
    VoidLeases,
    DeadLeaseHolder,
    ClientToken,
    TakeClientLease,
    ReleaseClientLease,
    StoreClientToken,
    CountCredentials,
    RowsUnderOldKeys,
    ReencryptPass,
    AuditAppend,
    AuditRead,
    AuditPurge,
    ListCredentials,
    CredentialRecord,
    DeleteCredential,
    VerifyCredentials,
    VerifyClientTokens,
}

impl DbOperation {
    /// Whether the operation runs to its end even when its caller stops waiting: the writes
    /// that keep a user's grant (a rotated refresh token, a refresh token that must never be
    /// presented again), lease releases (else the credential waits for the lease's expiry),
    /// and the work of start-up and of the command line, which have no caller to answer.
    pub fn outlives_its_caller(self) -> bool {
        self.keeps_a_grant()
            || matches!(
                self,
                Self::ReleaseLease
                    | Self::ReleaseClientLease
                    | Self::Migrate
                    | Self::VoidLeases
                    | Self::ImportToken
                    | Self::RowsUnderOldKeys
                    | Self::ReencryptPass
            )
    }

    /// Whether losing the operation could cost a user's grant: the write of a rotated refresh
    /// token, and the mark that a refresh token must not be presented again.
    pub fn keeps_a_grant(self) -> bool {
        matches!(self, Self::StoreRefreshed | Self::MarkNeedsRedelegation)
    }

    pub const ALL: [Self; 30] = [
        Self::Migrate,
        Self::Ping,
        Self::UpdateToken,
        Self::ImportToken,
        Self::Credential,
        Self::CredentialVersion,
        Self::TokensByUserId,
        Self::RemoveTokens,
        Self::PurgeExpired,
        Self::StoreRefreshed,
        Self::MarkNeedsRedelegation,
        Self::TakeLease,
        Self::ReleaseLease,
        Self::VoidLeases,
        Self::DeadLeaseHolder,
        Self::ClientToken,
        Self::TakeClientLease,
        Self::ReleaseClientLease,
        Self::StoreClientToken,
        Self::CountCredentials,
        Self::RowsUnderOldKeys,
        Self::ReencryptPass,
        Self::AuditAppend,
        Self::AuditRead,
        Self::AuditPurge,
        Self::ListCredentials,
        Self::CredentialRecord,
        Self::DeleteCredential,
        Self::VerifyCredentials,
        Self::VerifyClientTokens,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Migrate => "migrate",
            Self::Ping => "ping",
            Self::UpdateToken => "update_token",
            Self::ImportToken => "import_token",
            Self::Credential => "credential",
            Self::CredentialVersion => "credential_version",
            Self::TokensByUserId => "tokens_by_user_id",
            Self::RemoveTokens => "remove_tokens",
            Self::PurgeExpired => "purge_expired",
            Self::StoreRefreshed => "store_refreshed",
            Self::MarkNeedsRedelegation => "mark_needs_redelegation",
            Self::TakeLease => "take_lease",
            Self::ReleaseLease => "release_lease",
            Self::VoidLeases => "void_leases",
            Self::DeadLeaseHolder => "dead_lease_holder",
            Self::ClientToken => "client_token",
            Self::TakeClientLease => "take_client_lease",
            Self::ReleaseClientLease => "release_client_lease",
            Self::StoreClientToken => "store_client_token",
            Self::CountCredentials => "count_credentials",
            Self::RowsUnderOldKeys => "rows_under_old_keys",
            Self::ReencryptPass => "reencrypt_pass",
            Self::AuditAppend => "audit_append",
            Self::AuditRead => "audit_read",
            Self::AuditPurge => "audit_purge",
            Self::ListCredentials => "list_credentials",
            Self::CredentialRecord => "credential_record",
            Self::DeleteCredential => "delete_credential",
            Self::VerifyCredentials => "verify_credentials",
            Self::VerifyClientTokens => "verify_client_tokens",
        }
    }
}

/// Outcomes of database operations: answered (`ok`, `error`), given up on by their caller at
/// the database deadline (`timed_out`), dropped unrun because their caller had already given up
/// (`expired`).
pub const DB_OUTCOMES: [&str; 4] = ["ok", "error", "timed_out", "expired"];

impl Metrics {
    /// Registers every metric in `registry`, with the process family, and creates the label sets
    /// known at start (`methods`: the method names; `common_errors`: the error outcomes of
    /// requests every installation meets; `idps`: the configured IdPs), so that counters exist at
    /// 0 before their first event. Fails if `registry` already holds them.
    pub fn register(
        registry: Registry,
        methods: &[&str],
        common_errors: &[&str],
        idps: &[&str],
    ) -> Result<Self, prometheus::Error> {
        let r = &registry;
        let metrics = Self {
            requests: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tokenmanager_requests_total",
                        "Requests handled, by method, protocol and outcome",
                    ),
                    &["method", "protocol", "outcome"],
                )?,
            )?,
            request_duration: register(
                r,
                HistogramVec::new(
                    latency(
                        "tokenmanager_request_duration_seconds",
                        "Time to answer a request, by method, protocol and result",
                    ),
                    &["method", "protocol", "result"],
                )?,
            )?,
            idp_requests: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tokenmanager_idp_requests_total",
                        "Requests to identity providers, by IdP, grant and outcome",
                    ),
                    &["idp", "grant", "outcome"],
                )?,
            )?,
            idp_backoff_refusals: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tokenmanager_idp_backoff_refusals_total",
                        "Calls failed fast, without a request, while backing off from a failing IdP",
                    ),
                    &["idp"],
                )?,
            )?,
            idp_backoff_seconds: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "tokenmanager_idp_backoff_seconds",
                        "Interval callers of a failing IdP fail fast for now (0: the IdP answers)",
                    ),
                    &["idp"],
                )?,
            )?,
            idp_request_duration: register(
                r,
                HistogramVec::new(
                    latency(
                        "tokenmanager_idp_request_duration_seconds",
                        "Time of requests to identity providers, by IdP and grant",
                    ),
                    &["idp", "grant"],
                )?,
            )?,
            token_cache_lookups: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tokenmanager_token_cache_lookups_total",
                        "Access-token cache lookups, by kind and result",
                    ),
                    &["kind", "result"],
                )?,
            )?,
            coalesced_callers: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tokenmanager_coalesced_callers_total",
                        "Callers served by a refresh another caller started, by kind",
                    ),
                    &["kind"],
                )?,
            )?,
            refresh_actors: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tokenmanager_refresh_actors",
                        "Refresh actors alive, by kind",
                    ),
                    &["kind"],
                )?,
            )?,
            refresh_token_persist_failures: register(
                r,
                IntCounter::new(
                    "tokenmanager_refresh_token_persist_failures_total",
                    "Refreshed tokens the IdP issued that could not be stored",
                )?,
            )?,
            background_refreshes: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tokenmanager_background_refreshes_total",
                        "Background refreshes of hot keys, by kind and outcome",
                    ),
                    &["kind", "outcome"],
                )?,
            )?,
            audit_records: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tokenmanager_audit_records_total",
                        "Audit records written to the database, by kind",
                    ),
                    &["kind"],
                )?,
            )?,
            audit_records_lost: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tokenmanager_audit_records_lost_total",
                        "Audit records never written, by reason (overflow, shutdown)",
                    ),
                    &["reason"],
                )?,
            )?,
            audit_write_failures: register(
                r,
                IntCounter::new(
                    "tokenmanager_audit_write_failures_total",
                    "Audit trail writes that failed and are retried at the next window",
                )?,
            )?,
            audit_pending: register(
                r,
                IntGauge::new(
                    "tokenmanager_audit_pending_records",
                    "Audit records waiting to be written",
                )?,
            )?,
            audit_purged: register(
                r,
                IntCounter::new(
                    "tokenmanager_audit_purged_records_total",
                    "Audit records deleted for being older than the retention",
                )?,
            )?,
            liveness_lock_held: register(
                r,
                IntGauge::new(
                    "tokenmanager_liveness_lock_held",
                    "1 while this replica holds its liveness lock in the database",
                )?,
            )?,
            lease_takeovers: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tokenmanager_lease_takeovers_total",
                        "Refresh leases of replicas that were gone taken over, by kind",
                    ),
                    &["kind"],
                )?,
            )?,
            db_last_answer_age: register(
                r,
                Gauge::new(
                    "tokenmanager_db_last_answer_age_seconds",
                    "Seconds since the database last answered an operation",
                )?,
            )?,
            token_cache_unconfirmed_hits: register(
                r,
                IntCounter::new(
                    "tokenmanager_token_cache_unconfirmed_hits_total",
                    "User-token cache hits served unconfirmed while the shared database did not answer",
                )?,
            )?,
            changes_applied: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tokenmanager_changes_applied_total",
                        "Announced changes applied to the token cache, by kind",
                    ),
                    &["kind"],
                )?,
            )?,
            change_feed_gaps: register(
                r,
                IntCounter::new(
                    "tokenmanager_change_feed_gaps_total",
                    "Gaps in the change feed, after which cached user tokens are confirmed again",
                )?,
            )?,
            change_sync_age: register(
                r,
                Gauge::new(
                    "tokenmanager_change_sync_age_seconds",
                    "Seconds since the last confirmed sync with the change feed",
                )?,
            )?,
            change_feed_fallback: register(
                r,
                IntGauge::new(
                    "tokenmanager_change_feed_fallback",
                    "1 while cache hits ask the database because the change feed is behind",
                )?,
            )?,
            db_gauges_age: register(
                r,
                Gauge::new(
                    "tokenmanager_db_gauges_age_seconds",
                    "Seconds since the stored-credential gauges were last counted",
                )?,
            )?,
            db_pool_connections: register(
                r,
                IntGauge::new(
                    "tokenmanager_db_pool_connections",
                    "Open database connections in the pool",
                )?,
            )?,
            db_pool_idle: register(
                r,
                IntGauge::new(
                    "tokenmanager_db_pool_idle_connections",
                    "Idle database connections in the pool",
                )?,
            )?,
            db_pool_wait: register(
                r,
                Histogram::with_opts(latency(
                    "tokenmanager_db_pool_wait_seconds",
                    "Time waited for a pooled database connection",
                ))?,
            )?,
            db_operations: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tokenmanager_db_operations_total",
                        "Database operations, by operation and outcome",
                    ),
                    &["operation", "outcome"],
                )?,
            )?,
            db_operation_duration: register(
                r,
                HistogramVec::new(
                    latency(
                        "tokenmanager_db_operation_duration_seconds",
                        "Time of database operations, pool wait included, by operation",
                    ),
                    &["operation"],
                )?,
            )?,
            certificate_expiry: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tokenmanager_certificate_expiry_timestamp_seconds",
                        "When the host certificate and the earliest CA of CALocation expire",
                    ),
                    &["certificate"],
                )?,
            )?,
            stored_credentials: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tokenmanager_stored_credentials",
                        "Stored credentials by provider and state",
                    ),
                    &["provider", "state"],
                )?,
            )?,
            expiring_credentials: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tokenmanager_expiring_credentials",
                        "Stored credentials whose refresh token expires within the window, by provider",
                    ),
                    &["provider", "window"],
                )?,
            )?,
            config_reloads: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tokenmanager_config_reloads_total",
                        "Configuration reloads by outcome",
                    ),
                    &["outcome"],
                )?,
            )?,
            build_info: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tokenmanager_build_info",
                        "Version of the running tokenmanager",
                    ),
                    &["version"],
                )?,
            )?,
            connections: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tokenmanager_connections",
                        "Client connections open, by listener and state",
                    ),
                    &["listener", "state"],
                )?,
            )?,
            connections_shed: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tokenmanager_connections_shed_total",
                        "Connections closed or refused by admission, by listener and reason",
                    ),
                    &["listener", "reason"],
                )?,
            )?,
            connection_budget: register(
                r,
                IntGauge::new(
                    "tokenmanager_connection_budget",
                    "Client connections the open-file limit leaves room for",
                )?,
            )?,
            registry,
        };
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...: the
        // standard process family, which dashboards expect under these names.
        metrics.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        metrics.create_known_series(methods, common_errors, idps);
        Ok(metrics)
    }

    /// Metrics that nothing scrapes, for the commands that open the database outside `serve`.
    pub fn unexported() -> Self {
        Self::register(Registry::new(), &[], &[], &[])
            .expect("a new registry holds none of the service's metrics")
    }

    fn create_known_series(&self, methods: &[&str], common_errors: &[&str], idps: &[&str]) {
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for outcome in ["ok", "rejected"] {
            self.config_reloads.with_label_values(&[outcome]);
        }
        for method in methods {
            for protocol in PROTOCOLS {
                for outcome in std::iter::once("ok").chain(common_errors.iter().copied()) {
                    self.requests
                        .with_label_values(&[method, protocol, outcome]);
                }
                for result in ["ok", "error"] {
                    self.request_duration
                        .with_label_values(&[method, protocol, result]);
                }
            }
        }
        for idp in idps {
            self.idp_backoff_refusals.with_label_values(&[idp]);
            self.idp_backoff_seconds.with_label_values(&[idp]);
            for grant in IDP_GRANTS {
                for outcome in IDP_OUTCOMES {
                    self.idp_requests.with_label_values(&[idp, grant, outcome]);
                }
                self.idp_request_duration.with_label_values(&[idp, grant]);
            }
        }
        for kind in TOKEN_KINDS {
            for result in ["hit", "miss"] {
                self.token_cache_lookups.with_label_values(&[kind, result]);
            }
            self.coalesced_callers.with_label_values(&[kind]);
            self.changes_applied.with_label_values(&[kind]);
            self.lease_takeovers.with_label_values(&[kind]);
            self.refresh_actors.with_label_values(&[kind]);
            for outcome in ["ok", "failed", "cold", "superseded"] {
                self.background_refreshes
                    .with_label_values(&[kind, outcome]);
            }
        }
        for reason in ["overflow", "shutdown"] {
            self.audit_records_lost.with_label_values(&[reason]);
        }
        for operation in DbOperation::ALL {
            for outcome in DB_OUTCOMES {
                self.db_operations
                    .with_label_values(&[operation.name(), outcome]);
            }
            self.db_operation_duration
                .with_label_values(&[operation.name()]);
        }
    }

    /// Records one answered request.
    pub fn observe_request(
        &self,
        method: &str,
        protocol: &str,
        outcome: &str,
        started: std::time::Instant,
    ) {
        self.requests
            .with_label_values(&[method, protocol, outcome])
            .inc();
        let result = if outcome == "ok" { "ok" } else { "error" };
        self.request_duration
            .with_label_values(&[method, protocol, result])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Records one operation of the DB actor.
    pub fn observe_db_operation(
        &self,
        operation: DbOperation,
        ok: bool,
        started: std::time::Instant,
    ) {
        self.count_db_operation(operation, if ok { "ok" } else { "error" });
        self.db_operation_duration
            .with_label_values(&[operation.name()])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts one database operation under `outcome`, one of [`DB_OUTCOMES`].
    pub fn count_db_operation(&self, operation: DbOperation, outcome: &str) {
        self.db_operations
            .with_label_values(&[operation.name(), outcome])
            .inc();
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into memory cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> Result<C, prometheus::Error> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

fn latency(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())
}
