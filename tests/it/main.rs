//! The one integration-test binary. Database tests run on SQLite, PostgreSQL and MariaDB, each
//! in a fresh database; the servers are those of CONTRIBUTING.md, "The databases" (override with
//! TOKENMANAGER_TEST_POSTGRES_URL / TOKENMANAGER_TEST_MYSQL_URL). None is ever skipped: an
//! unreachable server fails the test. Each test keeps its files in a temp dir of its own under
//! $TMPDIR, which tests/run-all.sh points at target/test-tmp.

#![expect(
    clippy::unwrap_used,
    reason = "a failed unwrap is a failed test, with its location"
)]

mod app;
mod client;
mod pki;
mod process;
mod stall;
mod support;
mod test_config;

mod admission;
mod api;
mod audit;
mod cli;
mod configuration_server;
mod dirac;
mod dirac_client;
mod encryption;
mod export;
mod faults;
mod get_token;
mod idp;
mod import;
mod layers;
mod loadtest;
mod metrics;
mod multi_client;
mod prometheus;
mod refresh_ahead;
mod replicas;
mod storage;
mod token_exchange;
mod tokens;
