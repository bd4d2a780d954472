//! Scale benchmark: `bench/scale.sh` (`cargo bench --bench scale`; see bench/README.md, "Scale:
//! 10k to 1M stored credentials").
//!
//! For each backend of `SCALE_BACKENDS`, a fresh database is grown through the sizes of
//! `SCALE_SIZES`: synthetic credentials sealed by the crate's own keyring (as the service seals
//! them) inserted in multi-row statements, the rows of a generated DIRAC TokenDB imported by
//! `import-dirac-tokendb`, and `SCALE_REAL_USERS` real grants of the fixture IdP stored with
//! updateToken. At each size the release `serve` is started and measured from outside: start-up
//! to `/readyz` 200, `/metrics` scrapes, the background count's duration, getToken misses (a
//! refresh at the IdP each) and hits, getUsersTokensInfo for every real user, then `rotate-key`
//! while a paced getToken load (hits, and refreshes whose rotated tokens must be stored) runs.

#![expect(
    clippy::unwrap_used,
    reason = "a benchmark whose set-up fails stops there, with its location"
)]

#[expect(
    dead_code,
    reason = "shared with the gettoken bench; this bench uses part of it"
)]
#[path = "../gettoken/dbcalls.rs"]
mod dbcalls;
#[expect(
    dead_code,
    reason = "shared with the gettoken bench; this bench uses part of it"
)]
#[path = "../gettoken/fixture.rs"]
mod fixture;
#[expect(
    dead_code,
    reason = "shared with the gettoken bench; this bench uses part of it"
)]
#[path = "../gettoken/outcome.rs"]
mod outcome;
#[expect(
    dead_code,
    reason = "shared with the gettoken bench; this bench uses part of it"
)]
#[path = "../gettoken/report.rs"]
mod report;
#[path = "../gettoken/target.rs"]
mod target;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use diesel::Connection;
use diesel::connection::SimpleConnection;
use serde_json::{Value, json};
use tokenmanager::config::{Backend, DatabaseUrl};
use tokenmanager::crypto::{Keyring, KeyringFile, SealContext, TokenColumn};
use tokenmanager::domain::{Secret, unix_now};
use tokenmanager_loadtest::engine::{self, Expect, Load, Request, Schedule};

use fixture::{AUDIENCE, GRANT_SCOPE, Idp, PROVIDER, Pki, Server, Users, user_id};
use report::round;
use target::{Target, request, run_list, update_token_request};

/// Settings, from the environment (documented in bench/README.md).
struct Options {
    sizes: Vec<usize>,
    backends: Vec<Backend>,
    sqlite_max: usize,
    real_users: usize,
    misses: usize,
    hit_rounds: usize,
    import_rows: usize,
    load_rate: f64,
    rotate_batch: Option<u32>,
    scrapes: usize,
    binary: PathBuf,
    postgres_url: String,
    mysql_url: String,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} does not parse")),
        Err(_) => default,
    }
}

fn list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split([',', ' '])
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

impl Options {
    fn from_env() -> Options {
        let mut sizes: Vec<usize> = list("SCALE_SIZES", "10000,100000,1000000")
            .iter()
            .map(|s| s.replace('_', "").parse().expect("SCALE_SIZES: numbers"))
            .collect();
        sizes.sort_unstable();
        let backends = list("SCALE_BACKENDS", "postgres,mysql,sqlite")
            .iter()
            .map(|name| match name.as_str() {
                "postgres" | "postgresql" => Backend::Postgres,
                "mysql" | "mariadb" => Backend::Mysql,
                "sqlite" => Backend::Sqlite,
                other => panic!("SCALE_BACKENDS: unknown backend {other:?}"),
            })
            .collect();
        Options {
            sizes,
            backends,
            sqlite_max: env_or("SCALE_SQLITE_MAX", 100_000),
            real_users: env_or("SCALE_REAL_USERS", 1000),
            misses: env_or("SCALE_MISSES", 200),
            hit_rounds: env_or("SCALE_HIT_ROUNDS", 10),
            import_rows: env_or("SCALE_IMPORT_ROWS", 10_000),
            load_rate: env_or("SCALE_LOAD_RATE", 200.0),
            rotate_batch: std::env::var("SCALE_ROTATE_BATCH")
                .ok()
                .map(|b| b.parse().expect("SCALE_ROTATE_BATCH: a number")),
            scrapes: env_or("SCALE_SCRAPES", 20),
            binary: std::env::var_os("TOKENMANAGER_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tokenmanager"))),
            postgres_url: std::env::var("SCALE_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
            mysql_url: std::env::var("SCALE_MYSQL_URL")
                .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into()),
        }
    }

    fn admin_url(&self, backend: Backend) -> &str {
        match backend {
            Backend::Postgres => &self.postgres_url,
            Backend::Mysql => &self.mysql_url,
            Backend::Sqlite => unreachable!("SQLite has no server"),
        }
    }
}

fn with_database(url: &str, name: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a server URL names a database");
    format!("{base}/{name}")
}

/// A database of its own on a server, dropped at the end (also on a panic).
struct ServerDatabase {
    backend: Backend,
    admin: String,
    name: String,
    url: String,
}

impl ServerDatabase {
    fn create(backend: Backend, admin: &str, name: String) -> ServerDatabase {
        let db = ServerDatabase {
            backend,
            admin: admin.to_owned(),
            url: with_database(admin, &name),
            name,
        };
        db.admin_sql(&format!("DROP DATABASE IF EXISTS {}", db.name));
        db.admin_sql(&format!("CREATE DATABASE {}", db.name));
        db
    }

    fn admin_sql(&self, sql: &str) {
        let result = match self.backend {
            Backend::Postgres => {
                diesel::PgConnection::establish(&self.admin).map(|mut c| c.batch_execute(sql))
            }
            Backend::Mysql => {
                diesel::MysqlConnection::establish(&self.admin).map(|mut c| c.batch_execute(sql))
            }
            Backend::Sqlite => unreachable!(),
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{sql}: {e}"),
            Err(e) => panic!("{} unreachable at {}: {e}", self.backend.name(), self.admin),
        }
    }
}

impl Drop for ServerDatabase {
    fn drop(&mut self) {
        if std::env::var_os("SCALE_KEEP_DATABASES").is_some() {
            println!("kept database {}", self.url);
            return;
        }
        let sql = match self.backend {
            Backend::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            _ => format!("DROP DATABASE IF EXISTS {}", self.name),
        };
        self.admin_sql(&sql);
    }
}

/// `count` random characters of the base64url alphabet (a token's look and length).
fn random_token(count: usize) -> String {
    let mut bytes = vec![0; count * 3 / 4 + 3];
    openssl::rand::rand_bytes(&mut bytes).unwrap();
    let mut text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    text.truncate(count);
    text
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 15)] as char);
    }
    text
}

fn bytes_literal(backend: Backend, bytes: &[u8]) -> String {
    match backend {
        Backend::Postgres => format!("'\\x{}'", hex(bytes)),
        Backend::Mysql | Backend::Sqlite => format!("X'{}'", hex(bytes)),
    }
}

/// Lengths of the synthetic tokens: the fixture's opaque refresh tokens, and its JWT access
/// tokens (about 700 characters in the gettoken bench).
const REFRESH_TOKEN_LENGTH: usize = 43;
const ACCESS_TOKEN_LENGTH: usize = 700;
const ROWS_PER_INSERT: usize = 500;

/// One multi-row INSERT of synthetic credentials `range`, each sealed under the newest key of
/// `keyring` exactly as the service seals (both columns, bound to user, provider and column).
fn synthetic_insert(
    backend: Backend,
    keyring: &Keyring,
    range: std::ops::Range<usize>,
    now: i64,
) -> String {
    let mut sql = String::with_capacity(range.len() * 2000);
    sql.push_str(
        "INSERT INTO tokens (user_id, provider, state, generation, key_id, refresh_token, \
         rt_expires_at, access_token, expires_at, expires_in, token_type, scope, client_id, \
         issued_at, access_token_revoked_at, refresh_token_revoked_at, created_at, updated_at, \
         grant_scope) VALUES ",
    );
    for (n, i) in range.enumerate() {
        let user = format!("syn-{i:08}");
        let context = |column| SealContext {
            user_id: &user,
            provider: PROVIDER,
            column,
        };
        let (key_id, refresh) = keyring.seal(
            context(TokenColumn::RefreshToken),
            &Secret::new(random_token(REFRESH_TOKEN_LENGTH)),
        );
        let access = keyring
            .seal_with_key(
                &key_id,
                context(TokenColumn::AccessToken),
                &Secret::new(random_token(ACCESS_TOKEN_LENGTH)),
            )
            .unwrap();
        // Refresh tokens expiring over the next two weeks, as logins spread over time leave them.
        let rt_expires_at = now + 3600 + (i as i64 * 7919) % (14 * 86_400);
        if n > 0 {
            sql.push(',');
        }
        sql.push_str(&format!(
            "('{user}', '{PROVIDER}', 'active', 1, '{key_id}', {}, {rt_expires_at}, {}, {}, 3600, \
             'Bearer', '{GRANT_SCOPE}', 'tm-basic', {now}, 0, 0, {now}, {now}, '{GRANT_SCOPE}')",
            bytes_literal(backend, &refresh),
            bytes_literal(backend, &access),
            now + 3600,
        ));
    }
    sql
}

/// Inserts synthetic credentials `range` into the store at `url`: the statements are made on
/// another thread while the database inserts the previous ones. Returns the time it took.
fn fill(backend: Backend, url: &str, keyring_path: &Path, range: std::ops::Range<usize>) -> f64 {
    let started = Instant::now();
    if range.is_empty() {
        return 0.0;
    }
    let keyring = Keyring::load(keyring_path).unwrap();
    let now = unix_now();
    let (tx, rx) = std::sync::mpsc::sync_channel::<String>(4);
    let producer = std::thread::spawn(move || {
        let mut start = range.start;
        while start < range.end {
            let end = (start + ROWS_PER_INSERT).min(range.end);
            if tx
                .send(synthetic_insert(backend, &keyring, start..end, now))
                .is_err()
            {
                return;
            }
            start = end;
        }
    });
    let mut conn = tokenmanager::db::establish(&DatabaseUrl::parse(url).unwrap()).unwrap();
    // A few statements per commit: SQLite and MariaDB commit far faster so, as a bulk load does.
    let mut statements = rx.iter().peekable();
    while statements.peek().is_some() {
        conn.transaction(|conn| {
            for sql in statements.by_ref().take(10) {
                conn.batch_execute(&sql)?;
            }
            Ok::<_, diesel::result::Error>(())
        })
        .unwrap();
    }
    producer.join().unwrap();
    started.elapsed().as_secs_f64()
}

/// DIRAC's `Token` table (docs/DIRAC.md#the-token-table), as tests/it/import.rs creates it.
const DIRAC_TOKEN_DDL: &str = "CREATE TABLE `Token` (
  id INTEGER NOT NULL AUTO_INCREMENT, kid VARCHAR(255), user_id VARCHAR(255),
  provider VARCHAR(255), expires_at INTEGER NOT NULL, access_token TEXT NOT NULL,
  refresh_token TEXT NOT NULL, rt_expires_at INTEGER NOT NULL, client_id VARCHAR(48),
  token_type VARCHAR(40), scope TEXT, issued_at INTEGER NOT NULL,
  access_token_revoked_at INTEGER NOT NULL, refresh_token_revoked_at INTEGER NOT NULL,
  expires_in INTEGER NOT NULL, PRIMARY KEY (id)
) ENGINE=InnoDB CHARSET=utf8";

/// A DIRAC TokenDB on MariaDB with `count` live plaintext credentials of users `prefix-<i>`.
fn dirac_tokendb(admin: &str, name: String, prefix: &str, count: usize) -> ServerDatabase {
    let db = ServerDatabase::create(Backend::Mysql, admin, name);
    let mut conn = diesel::MysqlConnection::establish(&db.url).unwrap();
    conn.batch_execute(DIRAC_TOKEN_DDL).unwrap();
    let now = unix_now();
    for chunk in (0..count).collect::<Vec<_>>().chunks(ROWS_PER_INSERT) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!(
                    "(NULL, '{prefix}-{i:07}', '{PROVIDER}', {}, '{}', '{}', {}, 'tm-basic', \
                     'Bearer', '{GRANT_SCOPE}', {now}, 0, 0, 3600)",
                    now + 3600,
                    random_token(ACCESS_TOKEN_LENGTH),
                    random_token(REFRESH_TOKEN_LENGTH),
                    now + 86_400 * 7,
                )
            })
            .collect();
        conn.batch_execute(&format!(
            "INSERT INTO `Token` (kid, user_id, provider, expires_at, access_token, refresh_token, \
             rt_expires_at, client_id, token_type, scope, issued_at, access_token_revoked_at, \
             refresh_token_revoked_at, expires_in) VALUES {}",
            rows.join(",")
        ))
        .unwrap();
    }
    db
}

/// Runs a `tokenmanager` command; its standard output, or a panic with its standard error.
fn command(binary: &Path, args: &[&str]) -> String {
    let output = Command::new(binary)
        .args(args)
        .env("TOKENMANAGER_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "tokenmanager {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A plain HTTP/1.0 GET on 127.0.0.1: status, body, time to the last byte.
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String, Duration)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&reply).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body, took))
}

const OK: &[u8] = br#"{"ok":true"#;

fn get_token(user: &str, required_time_left: i64) -> Vec<u8> {
    let body = json!({"username": user, "userGroup": "g_mass", "scope": ["compute.read"],
                      "audience": AUDIENCE, "requiredTimeLeft": required_time_left});
    request(
        "POST",
        "/api/v1/getToken",
        Some(body.to_string().as_bytes()),
    )
}

fn percentile(sorted_ms: &[f64], quantile: f64) -> f64 {
    if sorted_ms.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted_ms.len() as f64 * quantile).ceil() as usize).clamp(1, sorted_ms.len());
    sorted_ms[rank - 1]
}

/// Latencies (ms, sorted) of `requests` sent one after the other on one kept-alive connection;
/// panics on any failed reply.
fn timed(target: &Target, requests: Vec<Vec<u8>>, what: &str) -> Vec<f64> {
    let (replies, _) = engine::send_all_timed(target, 1, requests)
        .unwrap_or_else(|e| panic!("{what}: sending failed: {e}"));
    let mut ms = Vec::with_capacity(replies.len());
    for (reply, took) in replies {
        assert!(
            reply.status == 200 && reply.body.starts_with(OK),
            "{what}: HTTP {} {}",
            reply.status,
            reply.text()
        );
        ms.push(took.as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    ms
}

/// The fixture's control endpoints.
struct Control {
    target: Target,
}

impl Control {
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = body.to_string();
        let (replies, _) = run_list(
            &self.target,
            1,
            vec![request(method, path, Some(body.as_bytes()))],
        );
        assert_eq!(replies[0].status, 200, "{path}: {}", replies[0].text());
        replies[0].json()
    }

    fn stats(&self) -> Value {
        let (replies, _) = run_list(&self.target, 1, vec![request("GET", "/test/stats", None)]);
        replies[0].json()
    }
}

/// What the load offered during `rotate-key` gave.
#[derive(Default)]
struct LoadOutcome {
    ok: u64,
    failed: u64,
    first_error: Option<String>,
    latency_ms: Vec<f64>,
    seconds: f64,
}

impl LoadOutcome {
    fn add(&mut self, ok: u64, failed: u64, error: Option<String>, latency_ms: Vec<f64>) {
        self.ok += ok;
        self.failed += failed;
        if self.first_error.is_none() {
            self.first_error = error;
        }
        self.latency_ms.extend(latency_ms);
    }
}

/// Cache hits for `user`, paced: `callers` callers each sending one getToken every `interval`,
/// in rounds of 5 s (new connections each round) until `stop` is set.
fn hit_load(target: Target, user: String, rate: f64, stop: Arc<AtomicBool>) -> LoadOutcome {
    let callers = ((rate / 10.0).ceil() as usize).max(1);
    let interval = Duration::from_secs_f64(callers as f64 / rate);
    let mut outcome = LoadOutcome::default();
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let load = Load {
            connector: target.clone(),
            callers,
            threads: 1,
            connect_first: true,
            progress: None,
        };
        let scenario = engine::Scenario {
            request: Request::Http {
                request: get_token(&user, 0),
                expect: Expect::BodyPrefix(OK.to_vec()),
                keep_alive: true,
            },
            schedule: Schedule::Paced(interval),
            warmup: Duration::ZERO,
            measure: Some(Duration::from_secs(5)),
            requests: None,
            timeout: Some(Duration::from_secs(10)),
        };
        let run = engine::run(&load, vec![scenario], || {}).expect("the load generator runs");
        let stats = &run.scenarios[0].stats;
        let latency = &stats.latency;
        // The histogram's quantiles, as a sample of 1,000 values per round.
        let sample = if stats.ok == 0 {
            Vec::new()
        } else {
            (1..=1000)
                .map(|i| latency.value_at_quantile(f64::from(i) / 1000.0) as f64 / 1000.0)
                .collect()
        };
        outcome.add(
            stats.ok,
            stats.errors.total + run.connect_failures,
            stats.samples.first().cloned().or(run.connect_error),
            sample,
        );
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    outcome
}

/// Refreshes: every second, `per_second` getToken for the next users of `users` in turn, sent one
/// after the other on one connection; with the IdP's access tokens living less than a round over
/// all users, each is a refresh whose rotated refresh token the service must store.
fn refresh_load(
    target: Target,
    users: Vec<String>,
    per_second: usize,
    stop: Arc<AtomicBool>,
) -> LoadOutcome {
    let mut outcome = LoadOutcome::default();
    let started = Instant::now();
    let mut next = 0;
    while !stop.load(Ordering::Relaxed) {
        let second = Instant::now();
        let requests = (0..per_second)
            .map(|_| {
                next = (next + 1) % users.len();
                get_token(&users[next], 0)
            })
            .collect();
        match engine::send_all_timed(&target, 1, requests) {
            Ok((replies, _)) => {
                let mut latency = Vec::new();
                let (mut ok, mut failed, mut error) = (0, 0, None);
                for (reply, took) in replies {
                    if reply.status == 200 && reply.body.starts_with(OK) {
                        ok += 1;
                        latency.push(took.as_secs_f64() * 1000.0);
                    } else {
                        failed += 1;
                        error.get_or_insert_with(|| {
                            format!("HTTP {} {}", reply.status, reply.text())
                        });
                    }
                }
                outcome.add(ok, failed, error, latency);
            }
            Err(e) => outcome.add(0, per_second as u64, Some(e.to_string()), Vec::new()),
        }
        if let Some(rest) = Duration::from_secs(1).checked_sub(second.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    outcome
}

/// Starts `serve`; the time from the process's start to its first `/readyz` 200.
fn start_server(binary: &Path, config: &Path) -> (Server, f64) {
    let started = Instant::now();
    let mut server = Server::spawn(binary, config);
    loop {
        if let Ok((200, _, _)) = http_get(server.metrics, "/readyz") {
            break;
        }
        server.assert_alive();
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "/readyz not 200 within 120 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    (server, started.elapsed().as_secs_f64())
}

/// The `URL = ...` of the configuration's TokenDB section.
fn config_database_url(config: &Path) -> String {
    std::fs::read_to_string(config)
        .unwrap()
        .lines()
        .find_map(|line| line.trim().strip_prefix("URL = ").map(str::to_owned))
        .expect("the configuration names its database")
}

/// What the service's own store queries that read many rows cost, on a connection of their own
/// (median of 5): the background count (`count_credentials`, as src/service/credential_gauges.rs
/// runs it) and start-up's `lease_owners`.
fn time_store_queries(url: &str, config: &Path) -> Value {
    let keyring = config.with_file_name("keyring");
    let store = tokenmanager::db::TokenStore::new(Arc::new(
        tokenmanager::crypto::SharedKeyring::load(keyring).unwrap(),
    ));
    let mut conn = tokenmanager::db::establish(&DatabaseUrl::parse(url).unwrap()).unwrap();
    let mut median = |work: &mut dyn FnMut(&mut tokenmanager::db::DbConn)| -> f64 {
        let mut ms: Vec<f64> = (0..5)
            .map(|_| {
                let started = Instant::now();
                work(&mut conn);
                started.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        ms[2]
    };
    let now = unix_now();
    let count = median(&mut |conn| {
        store
            .count_credentials(conn, now, [now + 86_400, now + 7 * 86_400])
            .unwrap();
    });
    let lease_owners = median(&mut |conn| {
        store.lease_owners(conn).unwrap();
    });
    json!({
        "count_ms": round(count, 1),
        "lease_owners_ms": round(lease_owners, 2),
    })
}

/// The figures of one (backend, size).
struct Measured {
    json: Value,
    row: Vec<String>,
}

struct Bench<'a> {
    options: &'a Options,
    pki: &'a Pki,
    control: Control,
    full: tokenmanager::x509::pki::CertifiedKey,
    manager: tokenmanager::x509::pki::CertifiedKey,
    real: Vec<String>,
}

fn main() {
    // `cargo test --all-targets` runs bench targets too, without --bench: not a place for this.
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale: a benchmark; run it with bench/scale.sh (skipped)");
        return;
    }
    let options = Options::from_env();
    let started = Instant::now();
    assert!(
        options.binary.is_file(),
        "no server binary at {}",
        options.binary.display()
    );
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench");
    std::fs::create_dir_all(&target_dir).unwrap();
    // Keyrings and certificates live here, not under /tmp, and go with it.
    let dir = tempfile::Builder::new()
        .prefix("scale-")
        .tempdir_in(&target_dir)
        .unwrap();
    let git = git_revision();
    println!(
        "tokenmanager scale benchmark (git {git}), sizes {:?}, backends {:?}",
        options.sizes,
        options
            .backends
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
    );
    let pki = Pki::create(dir.path());
    let idp = Idp::spawn();
    let real: Vec<String> = (0..options.real_users)
        .map(|i| format!("r{i:05}"))
        .collect();
    let bench = Bench {
        options: &options,
        pki: &pki,
        control: Control {
            target: target::plain(idp.port),
        },
        full: pki.proxy("full", "g_full"),
        manager: pki.proxy("manager", "g_manager"),
        real,
    };
    let mut results = Vec::new();
    let mut rows = Vec::new();
    for &backend in &options.backends {
        for measured in bench.backend(backend, dir.path(), &idp) {
            rows.push(measured.row);
            results.push(measured.json);
        }
    }
    let header = [
        "backend",
        "credentials",
        "fill rows/s",
        "start-up s",
        "scrape ms p50/max",
        "count ms",
        "lease_owners ms",
        "hit ms p50/p99",
        "miss ms p50/p99",
        "usersInfo(N) s",
        "import rows/s",
        "rotate rows/s",
        "longest txn ms",
        "load ok/failed",
        "load p99 ms",
    ];
    let mut text = format!("| {} |\n|", header.join(" | "));
    text.push_str(&"---|".repeat(header.len()));
    text.push('\n');
    for row in &rows {
        text.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    let json_path = target_dir.join("scale.json");
    report::write_json(
        &json_path,
        &json!({"git": git, "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
                "results": results, "total_seconds": round(started.elapsed().as_secs_f64(), 1)}),
    );
    println!("\n=== results (git {git}) ===\n{text}");
    println!(
        "(JSON: {}; {:.0} s in all)",
        json_path.display(),
        started.elapsed().as_secs_f64()
    );
    drop(idp);
}

fn git_revision() -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

impl Bench<'_> {
    /// Grows one backend's store through the sizes, measuring at each.
    fn backend(&self, backend: Backend, root: &Path, idp: &Idp) -> Vec<Measured> {
        let options = self.options;
        let sizes: Vec<usize> = options
            .sizes
            .iter()
            .copied()
            .filter(|&n| backend != Backend::Sqlite || n <= options.sqlite_max)
            .collect();
        if sizes.is_empty() {
            return Vec::new();
        }
        let dir = root.join(backend.name());
        std::fs::create_dir_all(&dir).unwrap();
        let pid = std::process::id();
        let server_db = (backend != Backend::Sqlite).then(|| {
            ServerDatabase::create(
                backend,
                options.admin_url(backend),
                format!("tm_scale_{pid}"),
            )
        });
        let url = match &server_db {
            Some(db) => db.url.clone(),
            None => format!("sqlite://{}", dir.join("tm.sqlite").display()),
        };
        let keyring_path = dir.join("keyring");
        KeyringFile::new(&keyring_path).create().unwrap();
        let config = fixture::write_config(
            &dir,
            self.pki,
            &idp.issuer(),
            &Users {
                small: &["bench"],
                mass: &self.real,
            },
            60,
            Some(&DatabaseUrl::parse(&url).expect("the bench's own URL")),
        );
        let config_arg = config.to_str().unwrap();
        command(&options.binary, &["migrate", "--config", config_arg]);

        println!(
            "\n[{}] storing {} real grants with updateToken ...",
            backend.name(),
            self.real.len()
        );
        let (server, _) = start_server(&options.binary, &config);
        self.store_real_grants(&server);
        drop(server);

        let mut present = self.real.len();
        let mut synthetic = 0;
        let mut measured = Vec::new();
        for (size_index, size) in sizes.into_iter().enumerate() {
            let import_rows = options.import_rows.min(size / 10);
            assert!(
                size >= present + import_rows,
                "size {size} is below the {present} credentials already stored"
            );
            let fill_rows = size - present - import_rows;
            println!(
                "\n[{} {size}] filling {fill_rows} synthetic credentials ...",
                backend.name()
            );
            let fill_seconds = fill(
                backend,
                &url,
                &keyring_path,
                synthetic..synthetic + fill_rows,
            );
            synthetic += fill_rows;
            println!(
                "[{} {size}] filled in {fill_seconds:.1} s; importing {import_rows} DIRAC rows ...",
                backend.name()
            );
            let source = dirac_tokendb(
                options.admin_url(Backend::Mysql),
                format!("tm_scale_dirac_{pid}"),
                &format!("dirac{size}"),
                import_rows,
            );
            let import_started = Instant::now();
            let out = command(
                &options.binary,
                &["import-dirac-tokendb", "--config", config_arg, &source.url],
            );
            let import_seconds = import_started.elapsed().as_secs_f64();
            drop(source);
            assert!(
                out.contains(&format!("imported={import_rows} ")),
                "import: {out}"
            );
            present = size;
            // What autovacuum and InnoDB's statistics do soon after a bulk load; until then
            // PostgreSQL plans the counts as scans of the whole table.
            let analyze = match backend {
                Backend::Postgres => Some("VACUUM ANALYZE tokens"),
                Backend::Mysql => Some("ANALYZE TABLE tokens"),
                Backend::Sqlite => None,
            };
            if let Some(sql) = analyze {
                let mut conn =
                    tokenmanager::db::establish(&DatabaseUrl::parse(&url).unwrap()).unwrap();
                conn.batch_execute(sql).unwrap();
            }
            measured.push(self.measure(
                backend,
                size,
                size_index,
                &config,
                fill_rows,
                fill_seconds,
                import_rows,
                import_seconds,
            ));
        }
        drop(server_db);
        measured
    }

    fn store_real_grants(&self, server: &Server) {
        let subs: Vec<String> = self.real.iter().map(|u| user_id(u)).collect();
        let grants: Vec<Vec<u8>> = subs
            .iter()
            .map(|sub| {
                let body = json!({"sub": sub, "scope": GRANT_SCOPE, "client_id": "tm-basic"});
                request("POST", "/test/grant", Some(body.to_string().as_bytes()))
            })
            .collect();
        let (grants, _) = run_list(&self.control.target, 8, grants);
        let admin = target::tls(server.https, self.pki.ca.cert(), &self.manager);
        let requests = self
            .real
            .iter()
            .zip(grants)
            .map(|(user, grant)| {
                assert_eq!(grant.status, 200, "/test/grant: {}", grant.text());
                update_token_request(user, &grant.json())
            })
            .collect();
        let (replies, _) = run_list(&admin, 8, requests);
        for reply in replies {
            assert!(
                reply.status == 200 && reply.body.starts_with(OK),
                "updateToken: HTTP {} {}",
                reply.status,
                reply.text()
            );
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one scenario's parameters, spelled out at the call sites"
    )]
    fn measure(
        &self,
        backend: Backend,
        size: usize,
        size_index: usize,
        config: &Path,
        fill_rows: usize,
        fill_seconds: f64,
        import_rows: usize,
        import_seconds: f64,
    ) -> Measured {
        let options = self.options;
        let name = backend.name();
        let (mut server, startup) = start_server(&options.binary, config);
        server.log_on_panic();
        println!("[{name} {size}] serve ready (/readyz 200) {startup:.3} s after its start");

        let mut scrapes: Vec<f64> = (0..options.scrapes)
            .map(|_| {
                let (status, _, took) = http_get(server.metrics, "/metrics").unwrap();
                assert_eq!(status, 200);
                took.as_secs_f64() * 1000.0
            })
            .collect();
        scrapes.sort_by(f64::total_cmp);

        let caller = target::tls(server.https, self.pki.ca.cert(), &self.full);
        let admin = target::tls(server.https, self.pki.ca.cert(), &self.manager);
        // Users not asked for before: a stored access token that still lives would answer a
        // user asked for at an earlier size without a refresh. The last 100 are the load's.
        let pool = self.real.len().saturating_sub(100).max(1);
        let misses = options.misses.clamp(1, pool);
        let start = if (size_index + 1) * misses <= pool {
            size_index * misses
        } else {
            0
        };
        let miss_users = &self.real[start..start + misses];
        self.control.call("POST", "/test/reset-stats", json!({}));
        let miss_ms = timed(
            &caller,
            miss_users.iter().map(|u| get_token(u, 0)).collect(),
            "getToken miss",
        );
        let refreshed = total(&self.control.stats()["token_requests"]["refresh_token"]);
        assert_eq!(
            refreshed, misses as u64,
            "every miss is one refresh (users asked for before? SCALE_REAL_USERS is too small)"
        );
        let hit_ms = timed(
            &caller,
            (0..options.hit_rounds)
                .flat_map(|_| miss_users.iter().map(|u| get_token(u, 0)))
                .collect(),
            "getToken hit",
        );
        let after_hits = total(&self.control.stats()["token_requests"]["refresh_token"]);
        assert_eq!(after_hits, refreshed, "hits reach no IdP");
        let users_info = json!({"users": self.real}).to_string();
        let info_ms = timed(
            &admin,
            (0..3)
                .map(|_| {
                    request(
                        "POST",
                        "/api/v1/getUsersTokensInfo",
                        Some(users_info.as_bytes()),
                    )
                })
                .collect(),
            "getUsersTokensInfo",
        );
        println!(
            "[{name} {size}] scrape p50 {:.1} ms; miss p50 {:.1} ms; hit p50 {:.2} ms; getUsersTokensInfo({}) {:.0} ms",
            percentile(&scrapes, 0.5),
            percentile(&miss_ms, 0.5),
            percentile(&hit_ms, 0.5),
            self.real.len(),
            percentile(&info_ms, 0.5),
        );

        let queries = time_store_queries(config_database_url(config).as_str(), config);
        let count_ms = queries["count_ms"].as_f64().unwrap_or(f64::NAN);

        let (rotation, hits, refreshes) = self.rotate_under_load(config, &caller, &miss_users[0]);
        server.assert_alive();
        let problems = server.problems();
        server.stop();

        let rotate_rate = rotation["rows_per_second"].as_f64().unwrap_or(0.0);
        let load_ok = hits.ok + refreshes.ok;
        let load_failed = hits.failed + refreshes.failed;
        let mut load_ms = hits.latency_ms.clone();
        load_ms.extend(&refreshes.latency_ms);
        load_ms.sort_by(f64::total_cmp);
        let mut refresh_ms = refreshes.latency_ms.clone();
        refresh_ms.sort_by(f64::total_cmp);
        let mut hit_load_ms = hits.latency_ms.clone();
        hit_load_ms.sort_by(f64::total_cmp);
        let row = vec![
            name.to_owned(),
            size.to_string(),
            format!("{:.0}", fill_rows as f64 / fill_seconds.max(1e-9)),
            format!("{startup:.2}"),
            format!(
                "{:.1} / {:.1}",
                percentile(&scrapes, 0.5),
                percentile(&scrapes, 1.0)
            ),
            format!("{count_ms:.0}"),
            format!(
                "{:.1}",
                queries["lease_owners_ms"].as_f64().unwrap_or(f64::NAN)
            ),
            format!(
                "{:.2} / {:.2}",
                percentile(&hit_ms, 0.5),
                percentile(&hit_ms, 0.99)
            ),
            format!(
                "{:.1} / {:.1}",
                percentile(&miss_ms, 0.5),
                percentile(&miss_ms, 0.99)
            ),
            format!("{:.2}", percentile(&info_ms, 0.5) / 1000.0),
            format!("{:.0}", import_rows as f64 / import_seconds),
            format!("{rotate_rate:.0}"),
            rotation["longest_transaction_ms"]
                .as_f64()
                .map_or("?".into(), |ms| format!("{ms:.0}")),
            format!("{load_ok} / {load_failed}"),
            format!(
                "hits {:.1}, refreshes {:.1}",
                percentile(&hit_load_ms, 0.99),
                percentile(&refresh_ms, 0.99)
            ),
        ];
        println!("[{name} {size}] {}", row.join(" | "));
        let json = json!({
            "backend": name,
            "credentials": size,
            "fill": {"rows": fill_rows, "seconds": round(fill_seconds, 2)},
            "startup_seconds": round(startup, 3),
            "scrape_ms": {"p50": round(percentile(&scrapes, 0.5), 2), "max": round(percentile(&scrapes, 1.0), 2), "n": scrapes.len()},
            "count_ms": round(count_ms, 1),
            "store_queries_ms": queries,
            "get_token_hit_ms": {"p50": round(percentile(&hit_ms, 0.5), 3), "p99": round(percentile(&hit_ms, 0.99), 3), "n": hit_ms.len()},
            "get_token_miss_ms": {"p50": round(percentile(&miss_ms, 0.5), 2), "p99": round(percentile(&miss_ms, 0.99), 2), "n": miss_ms.len()},
            "get_users_tokens_info_ms": {"users": self.real.len(), "p50": round(percentile(&info_ms, 0.5), 1), "max": round(percentile(&info_ms, 1.0), 1)},
            "import": {"rows": import_rows, "seconds": round(import_seconds, 2), "rows_per_second": round(import_rows as f64 / import_seconds, 0)},
            "rotate_key": rotation,
            "load_during_rotation": {
                "hits": {"ok": hits.ok, "failed": hits.failed, "first_error": hits.first_error, "seconds": round(hits.seconds, 1),
                         "p50_ms": round(percentile(&hit_load_ms, 0.5), 2), "p99_ms": round(percentile(&hit_load_ms, 0.99), 2)},
                "refreshes": {"ok": refreshes.ok, "failed": refreshes.failed, "first_error": refreshes.first_error, "seconds": round(refreshes.seconds, 1),
                              "p50_ms": round(percentile(&refresh_ms, 0.5), 2), "p99_ms": round(percentile(&refresh_ms, 0.99), 2)},
            },
            "server_warnings_and_errors": problems,
            "load_average_at_end": fixture::load_average(),
        });
        Measured { json, row }
    }

    /// `rotate-key` while the paced load runs: `load_rate` getToken/s in all, nine tenths cache
    /// hits of one user, one tenth refreshes of other users (the IdP's access tokens then live
    /// 4 s), whose rotated refresh tokens are stored while the rotation writes.
    fn rotate_under_load(
        &self,
        config: &Path,
        caller: &Target,
        hit_user: &str,
    ) -> (Value, LoadOutcome, LoadOutcome) {
        let options = self.options;
        let refresh_rate = (options.load_rate / 10.0).round().max(1.0) as usize;
        let hit_rate = options.load_rate - refresh_rate as f64;
        // Users not among the misses: their first call is a refresh as well.
        let refresh_users: Vec<String> =
            self.real[self.real.len() - 100.min(self.real.len())..].to_vec();
        self.control
            .call("POST", "/test/ttl", json!({"access_token": 4}));
        let stop = Arc::new(AtomicBool::new(false));
        let hits = {
            let (target, user, stop) = (caller.clone(), hit_user.to_owned(), stop.clone());
            std::thread::spawn(move || hit_load(target, user, hit_rate, stop))
        };
        let refreshes = {
            let (target, stop) = (caller.clone(), stop.clone());
            std::thread::spawn(move || refresh_load(target, refresh_users, refresh_rate, stop))
        };
        std::thread::sleep(Duration::from_secs(2));
        let mut args = vec!["rotate-key", "--config", config.to_str().unwrap()];
        let batch = options.rotate_batch.map(|b| b.to_string());
        if let Some(batch) = &batch {
            args.extend(["--batch", batch]);
        }
        let started = Instant::now();
        let out = command(&options.binary, &args);
        let seconds = started.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let hits = hits.join().unwrap();
        let refreshes = refreshes.join().unwrap();
        self.control
            .call("POST", "/test/ttl", json!({"access_token": 3600}));
        let last = out.lines().last().unwrap_or_default().to_owned();
        let number_after = |needle: &str| -> Option<f64> {
            last.split(needle)
                .nth(1)?
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()?
                .parse()
                .ok()
        };
        let rewritten = number_after("re-encrypted ").unwrap_or(0.0);
        let json = json!({
            "rewritten": rewritten,
            "seconds": round(seconds, 2),
            "rows_per_second": round(rewritten / seconds, 0),
            "longest_transaction_ms": number_after("longest transaction "),
            "batch": options.rotate_batch,
            "output": last,
        });
        println!("[rotate-key] {last}");
        (json, hits, refreshes)
    }
}

fn total(map: &Value) -> u64 {
    map.as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}
