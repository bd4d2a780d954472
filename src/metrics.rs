//! Every metric of the service, declared once. Names follow Prometheus conventions (`_total`,
//! `_seconds`, base units); all live in one registry that `/metrics` renders.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    REGISTRY
        .register(Box::new(collector.clone()))
        .expect("each metric is registered once");
    collector
}

/// Latency buckets from 100 µs (a cache hit) to 10 s (an IdP timeout).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Requests handled, by method, protocol (`json`, `https`, `dips`) and outcome (`ok` or the
/// stable error code).
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "tokenmanager_requests_total",
                "Requests handled, by method, protocol and outcome",
            ),
            &["method", "protocol", "outcome"],
        )
        .expect("valid metric"),
    )
});

/// Time from a decoded request to its encoded reply, by method and protocol.
pub static REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "tokenmanager_request_duration_seconds",
                "Time to answer a request, by method and protocol",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method", "protocol"],
        )
        .expect("valid metric"),
    )
});

/// Open database connections of this process's pool.
pub static DB_POOL_CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "tokenmanager_db_pool_connections",
            "Open database connections in the pool",
        )
        .expect("valid metric"),
    )
});

/// Idle database connections of this process's pool.
pub static DB_POOL_IDLE: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "tokenmanager_db_pool_idle_connections",
            "Idle database connections in the pool",
        )
        .expect("valid metric"),
    )
});

/// Time a database operation waited for a pooled connection.
pub static DB_POOL_WAIT: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "tokenmanager_db_pool_wait_seconds",
                "Time waited for a pooled database connection",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric"),
    )
});

/// Stored credentials by provider and state (`active`, `needs_redelegation`), counted at scrape.
pub static STORED_CREDENTIALS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "tokenmanager_stored_credentials",
                "Stored credentials by provider and state",
            ),
            &["provider", "state"],
        )
        .expect("valid metric"),
    )
});

/// Configuration reloads (SIGHUP, refreshConfiguration) by outcome (`ok`, `rejected`).
pub static CONFIG_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "tokenmanager_config_reloads_total",
                "Configuration reloads by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric"),
    )
});

/// Always 1; its labels say what is running.
pub static BUILD_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "tokenmanager_build_info",
                "Version of the running tokenmanager",
            ),
            &["version"],
        )
        .expect("valid metric"),
    )
});

/// Registers every metric and sets the ones known at start, so that error counters exist at 0.
pub fn init() {
    BUILD_INFO
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    for outcome in ["ok", "rejected"] {
        CONFIG_RELOADS.with_label_values(&[outcome]);
    }
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_DURATION);
    LazyLock::force(&DB_POOL_CONNECTIONS);
    LazyLock::force(&DB_POOL_IDLE);
    LazyLock::force(&DB_POOL_WAIT);
    LazyLock::force(&STORED_CREDENTIALS);
}

/// The registry in Prometheus text format.
pub fn render() -> String {
    let mut buffer = Vec::new();
    TextEncoder::new()
        .encode(&REGISTRY.gather(), &mut buffer)
        .expect("text encoding into memory cannot fail");
    String::from_utf8(buffer).expect("the text format is UTF-8")
}
