//! Configuration: DIRAC CFG files merged into one tree ([`cfg`]), resolved into typed
//! [`Settings`].
//!
//! Files are merged in the order given, later files winning (DIRAC's rule for command-line
//! `.cfg` files). Every relative file path in a file (`EncryptionKeyFile`, `sqlite://` URLs,
//! `/DIRAC/Security/*`) is resolved against the directory of the file that set it.
//!
//! # Secrets from the environment
//!
//! Each variable `X` below may instead be given as `X_FILE`, the path of a file whose content
//! (one trailing newline stripped) is the value; setting both `X` and `X_FILE` is an error, and
//! so is an unreadable file.
//!
//! | variable | overrides | notes |
//! |---|---|---|
//! | `TOKENMANAGER_DB_URL` | the whole database URL (`<framework_root>/Databases/TokenDB`) | `sqlite://`, `postgres://`, `postgresql://` or `mysql://`; a relative SQLite path is relative to the working directory; the TokenDB section is then not needed |
//! | `TOKENMANAGER_DB_PASSWORD` | the database password | replaces DIRAC's `Password` (and `/Systems/Databases/Password`), or the password of the user in a `URL` / `TOKENMANAGER_DB_URL`; an error for SQLite or a URL without user |
//! | `TOKENMANAGER_ENCRYPTION_KEY_FILE` | the service's `EncryptionKeyFile` | already a path: there is no `_FILE_FILE` form; relative to the working directory |
//! | `TOKENMANAGER_IDP_<NAME>_CLIENT_SECRET` | `client_secret` of `/Resources/IdProviders/<name>` | `<NAME>`: section name upper-cased, every character but ASCII letters and digits replaced by `_` (`IAM-dteam` → `IAM_DTEAM`); an error if it fits several IdPs |

pub mod cfg;
mod database_url;
mod idp;
mod options;
mod registry;
mod secrets;
mod service;
mod settings;

use std::path::PathBuf;

pub use cfg::{CfgError, Origin, Section};
pub use database_url::{Backend, DatabaseUrl, UrlError};
pub use idp::options as idp_options;
pub use idp::{IdProvider, client_secret_var};
pub use options::LogFormat;
pub use service::{
    AuditSettings, ConnectionSettings, SERVICE_OPTIONS, ServiceSettings, service_options_doc,
};
pub use settings::{SecuritySettings, Settings, resolve_security};

pub const ENV_DB_URL: &str = "TOKENMANAGER_DB_URL";
pub const ENV_DB_PASSWORD: &str = "TOKENMANAGER_DB_PASSWORD";
pub const ENV_ENCRYPTION_KEY_FILE: &str = "TOKENMANAGER_ENCRYPTION_KEY_FILE";

/// Settings and the warnings met while resolving them, for the caller to log.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub settings: Settings,
    pub warnings: Vec<String>,
}

/// No variant carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Cfg(#[from] CfgError),
    #[error("no configuration file given (pass --config FILE, repeatable)")]
    NoFiles,
    #[error("cannot locate the Framework system section: {0}")]
    NoFramework(String),
    #[error("section {path} not found: {hint}")]
    MissingSection { path: String, hint: String },
    /// `section` is where the section holding the option is defined.
    #[error("{section}: required option {path} is not set{hint}")]
    MissingOption {
        section: Origin,
        path: String,
        hint: String,
    },
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
}

/// Loads with secrets from the process environment.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, ConfigError> {
    load_with_env(paths, &process_env)
}

/// The local files merged over `remote` (a Configuration Server's CFG): local options win.
pub fn load_over(paths: &[PathBuf], remote: Option<&Section>) -> Result<Loaded, ConfigError> {
    let Some(remote) = remote else {
        return load(paths);
    };
    if paths.is_empty() {
        return Err(ConfigError::NoFiles);
    }
    let mut root = remote.clone();
    root.merge(&Section::load_files(paths)?)?;
    resolve(&root, &process_env)
}

/// `env` returns the value of an environment variable, so tests need not touch the process
/// environment.
pub fn load_with_env(
    paths: &[PathBuf],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    if paths.is_empty() {
        return Err(ConfigError::NoFiles);
    }
    tracing::debug!(files = ?paths, "loading configuration");
    let root = Section::load_files(paths)?;
    let loaded = resolve(&root, env)?;
    tracing::debug!(
        framework_root = %loaded.settings.framework_root,
        service = %loaded.settings.service.path,
        database = %loaded.settings.database.masked(),
        "configuration resolved"
    );
    Ok(loaded)
}

/// Resolves settings from an already merged tree.
pub fn resolve(
    root: &Section,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    settings::resolve(root, env)
}

/// The process environment. A value that is not valid Unicode is passed on lossily, so that a
/// bad path is reported with the variable's name instead of being silently ignored.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}
