//! tokenmanager: DIRAC's TokenManager service, re-implemented.
//!
//! Layers, lowest first; a module uses only modules below it (tests/it/layers.rs enforces the
//! exact graph, docs/ARCHITECTURE.md draws it):
//!
//! - `domain` (tokens, scopes, DIRAC's registry and authorization policy), `metrics` (every
//!   metric, declared once) and `x509` (grid certificates and proxies): they use nothing else;
//! - `crypto` (encryption at rest) and `config` (DIRAC's CFG format, the settings read from it);
//! - `db` (diesel over three backends) and `idp` (the only code that calls out over HTTP);
//! - `actors` (the DB actor owning the pool, the token path's refresh actors) and
//!   `configuration_server` (DIRAC's CS as a configuration source);
//! - `service` (the protocol-free method table with authorization);
//! - `transport` (listening sockets, body limits, reloadable TLS), below `protocol` (the JSON API,
//!   DIRAC's HTTPS and DISET front-ends) and `http` (the HTTPS and metrics servers);
//! - `app` (the application root: builds and owns everything `serve` runs) and `cli` (the
//!   subcommands).

pub mod actors;
pub mod app;
pub mod cli;
pub mod config;
pub mod configuration_server;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod http;
pub mod idp;
pub mod metrics;
pub mod protocol;
pub mod service;
pub mod transport;
pub mod x509;
