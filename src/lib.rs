//! tokenmanager: DIRAC's TokenManager service, re-implemented.
//!
//! Layers, from the inside out: `domain` (pure types and rules), `crypto` (encryption at rest),
//! `db` (diesel over three backends), `actors` (the DB actor owning the pool), `config` (DIRAC's
//! CFG format and the settings read from it), `cli` (the subcommands).

pub mod actors;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod http;
pub mod idp;
pub mod loadtest;
pub mod metrics;
pub mod protocol;
pub mod service;
pub mod x509;
