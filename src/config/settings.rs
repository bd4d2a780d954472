//! Typed settings resolved from the merged CS.

use std::path::PathBuf;

use super::DatabaseUrl;
use super::cfg::{CfgError, Entry, Section};
use super::idp::{self, IdProvider};
use super::registry::registry_from_cfg;
use super::secrets::env_value;
use super::service::{ServiceSettings, resolve_service};
use super::{ConfigError, ENV_DB_PASSWORD, ENV_DB_URL, Loaded};
use crate::domain::registry::Registry;

/// DIRAC's default port of a MySQL database.
const DEFAULT_MYSQL_PORT: u16 = 3306;

/// Options whose values are opaque, so ` #` inside them is not suspicious.
const OPAQUE_OPTIONS: [&str; 2] = ["Password", "client_secret"];

#[derive(Clone, Debug)]
pub struct Settings {
    /// `/DIRAC/Setup`, when set.
    pub setup: Option<String>,
    /// The Framework system section, e.g. `/Systems/Framework/Production`, or
    /// `/Systems/Framework` in the instance-less layout.
    pub framework_root: String,
    pub service: ServiceSettings,
    /// From `TOKENMANAGER_DB_URL`, else `<framework_root>/Databases/TokenDB`.
    pub database: DatabaseUrl,
    pub security: SecuritySettings,
    pub registry: Registry,
    /// `/Resources/IdProviders/*` in CS order.
    pub idps: Vec<IdProvider>,
}

impl Settings {
    pub fn idp(&self, name: &str) -> Option<&IdProvider> {
        self.idps.iter().find(|idp| idp.name() == name)
    }
}

/// `/DIRAC/Security`; relative paths resolved against the file that set them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecuritySettings {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_location: Option<PathBuf>,
}

struct Layout {
    setup: Option<String>,
    framework_root: String,
    tornado_port: String,
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

fn resolve_layout(root: &Section) -> Result<Layout, ConfigError> {
    let setup = non_empty(root.get("/DIRAC/Setup"));
    if let Some(setup) = setup {
        let instance_of =
            |system: &str| non_empty(root.get(&format!("/DIRAC/Setups/{setup}/{system}")));
        if let Some(framework) = instance_of("Framework") {
            let tornado = instance_of("Tornado").unwrap_or(framework);
            return Ok(Layout {
                setup: Some(setup.to_owned()),
                framework_root: format!("/Systems/Framework/{framework}"),
                tornado_port: format!("/Systems/Tornado/{tornado}/Port"),
            });
        }
    }
    if root.section("/Systems/Framework/Services").is_some() {
        return Ok(Layout {
            setup: setup.map(str::to_owned),
            framework_root: "/Systems/Framework".to_owned(),
            tornado_port: "/Systems/Tornado/Port".to_owned(),
        });
    }
    Err(ConfigError::NoFramework(match setup {
        None => "/DIRAC/Setup is not set and /Systems/Framework/Services does not exist".to_owned(),
        Some(setup) => format!(
            "/DIRAC/Setups/{setup}/Framework is not set and /Systems/Framework/Services does not exist"
        ),
    }))
}

fn env_error(var: &str, error: impl ToString) -> ConfigError {
    ConfigError::Env {
        var: var.to_owned(),
        reason: error.to_string(),
    }
}

fn resolve_database(
    root: &Section,
    framework_root: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<DatabaseUrl, ConfigError> {
    let password = env_value(env, ENV_DB_PASSWORD)?;
    let with_password = |url: DatabaseUrl| match &password {
        Some(found) => url
            .with_password(&found.value)
            .map_err(|e| env_error(&found.var, e)),
        None => Ok(url),
    };
    if let Some(found) = env_value(env, ENV_DB_URL)? {
        return with_password(
            DatabaseUrl::parse(&found.value).map_err(|e| env_error(&found.var, e))?,
        );
    }

    let db = format!("{framework_root}/Databases/TokenDB");
    let Some((_, section_origin)) = root.section_with_origin(&db) else {
        return Err(ConfigError::MissingSection {
            path: db,
            hint: format!(
                "set URL, or DIRAC's Host, User, Password and DBName there, or {ENV_DB_URL}"
            ),
        });
    };
    let url_path = format!("{db}/URL");
    if let Some((value, origin)) = root.get_with_origin(&url_path) {
        let url = DatabaseUrl::parse(value).map_err(|e| CfgError::BadValue {
            origin: origin.clone(),
            path: url_path,
            reason: e.to_string(),
        })?;
        return with_password(url.resolve_sqlite(|path| origin.resolve(path)));
    }

    // DIRAC's getDBParameters.
    let missing = |name: &str, fallback: bool| ConfigError::MissingOption {
        section: section_origin.clone(),
        path: format!("{db}/{name}"),
        hint: if fallback {
            format!(" (nor /Systems/Databases/{name})")
        } else {
            String::new()
        },
    };
    let with_fallback = |name: &str| {
        non_empty(root.get(&format!("{db}/{name}")))
            .or_else(|| non_empty(root.get(&format!("/Systems/Databases/{name}"))))
            .ok_or_else(|| missing(name, true))
    };
    let host = with_fallback("Host")?;
    let user = with_fallback("User")?;
    let password = match &password {
        Some(found) => found.value.as_str(),
        None => root
            .get(&format!("{db}/Password"))
            .or_else(|| root.get("/Systems/Databases/Password"))
            .ok_or_else(|| missing("Password", true))?,
    };
    let db_name =
        non_empty(root.get(&format!("{db}/DBName"))).ok_or_else(|| missing("DBName", false))?;
    let port = match root.get_u16(&format!("{db}/Port"))? {
        Some(port) => port,
        None => root
            .get_u16("/Systems/Databases/Port")?
            .unwrap_or(DEFAULT_MYSQL_PORT),
    };
    Ok(DatabaseUrl::mysql(user, password, host, port, db_name))
}

/// `/DIRAC/Security`: the host certificate, its key and the CA directory, each resolved against the
/// file that set it.
pub fn resolve_security(root: &Section) -> SecuritySettings {
    let path = |name: &str| {
        root.get_with_origin(&format!("/DIRAC/Security/{name}"))
            .filter(|(value, _)| !value.is_empty())
            .map(|(value, origin)| origin.resolve(value))
    };
    SecuritySettings {
        cert_file: path("CertFile"),
        key_file: path("KeyFile"),
        ca_location: path("CALocation"),
    }
}

/// CFG has no inline comments: `Properties = NormalUser # admin` silently yields the property
/// `NormalUser # admin`, and DIRAC's own dirac.cfg template has such lines.
fn warn_inline_comments(section: &Section, path: &str, warnings: &mut Vec<String>) {
    for (name, entry) in section.entries() {
        let child = format!("{path}/{name}");
        match entry {
            Entry::Option { value, origin } => {
                let suspicious = value
                    .as_bytes()
                    .windows(2)
                    .any(|w| w[1] == b'#' && w[0].is_ascii_whitespace());
                if suspicious && !OPAQUE_OPTIONS.contains(&name) {
                    warnings.push(format!(
                        "{origin}: the value of {child} contains ' #': CFG has no inline comments, \
                         so the text after '#' is part of the value"
                    ));
                }
            }
            Entry::Section(section, _) => warn_inline_comments(section, &child, warnings),
        }
    }
}

pub(super) fn resolve(
    root: &Section,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    let layout = resolve_layout(root)?;
    let service = resolve_service(
        root,
        &layout.framework_root,
        &layout.tornado_port,
        env,
        &mut warnings,
    )?;
    let database = resolve_database(root, &layout.framework_root, env)?;
    let idps = idp::from_cfg(root, env)?;
    for path in [
        service.path.as_str(),
        &format!("{}/Databases/TokenDB", layout.framework_root),
        "/Systems/Databases",
        "/DIRAC/Security",
        "/Registry",
        "/Resources/IdProviders",
    ] {
        if let Some(section) = root.section(path) {
            warn_inline_comments(section, path, &mut warnings);
        }
    }
    Ok(Loaded {
        settings: Settings {
            setup: layout.setup,
            framework_root: layout.framework_root,
            service,
            database,
            security: resolve_security(root),
            registry: registry_from_cfg(root),
            idps,
        },
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{ENV_ENCRYPTION_KEY_FILE, load, load_with_env};
    use super::*;
    use crate::config::Backend as DbBackend;
    use crate::domain::Secret;
    use std::collections::BTreeMap;
    use std::net::IpAddr;
    use std::path::Path;

    const BASE: &str = "\
DIRAC
{
  Setup = Production
  Setups
  {
    Production
    {
      Framework = Prod
      Tornado = TornadoProd
    }
  }
}
Systems
{
  Tornado
  {
    TornadoProd
    {
      Port = 8444
    }
  }
  Framework
  {
    Prod
    {
      Services
      {
        TokenManager
        {
          EncryptionKeyFile = keys/keyring
        }
      }
      Databases
      {
        TokenDB
        {
          URL = sqlite://db/tm.sqlite
        }
      }
    }
  }
}
";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Section {
        Section::parse(text, Path::new("/etc/tm/main.cfg")).unwrap()
    }

    fn with(extra: &str) -> Section {
        let mut root = parse(BASE);
        root.merge(&Section::parse(extra, Path::new("/etc/tm/extra.cfg")).unwrap())
            .unwrap();
        root
    }

    fn resolve_ok(root: &Section, env: &dyn Fn(&str) -> Option<String>) -> Loaded {
        resolve(root, env).unwrap_or_else(|e| panic!("{e}"))
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cfg")
            .join(name)
    }

    const SERVICE: &str = "/Systems/Framework/Prod/Services/TokenManager";

    #[test]
    fn defaults_and_instance_layout() {
        let loaded = resolve_ok(&parse(BASE), &no_env);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let s = loaded.settings;
        assert_eq!(s.setup.as_deref(), Some("Production"));
        assert_eq!(s.framework_root, "/Systems/Framework/Prod");
        assert_eq!(s.service.name, "Framework/TokenManager");
        assert_eq!(s.service.path, SERVICE);
        assert_eq!(s.service.port, 9181);
        assert_eq!(s.service.https_port, 8444, "from the Tornado instance");
        assert_eq!(s.service.metrics_port, 9182);
        let any = IpAddr::from([0, 0, 0, 0]);
        assert_eq!(s.service.listen_address, any);
        assert_eq!(s.service.metrics_listen_address, any);
        assert_eq!(
            s.service.encryption_key_file,
            Path::new("/etc/tm/keys/keyring")
        );
        assert!(s.service.authorization.is_empty());
        assert_eq!(s.service.protocol, None);
        assert_eq!(s.database.expose(), "sqlite:///etc/tm/db/tm.sqlite");
        assert_eq!(s.database.backend(), DbBackend::Sqlite);
        assert_eq!(s.security, SecuritySettings::default());
        assert!(s.idps.is_empty());
        assert_eq!(s.registry.default_group(), ["user"]);
    }

    #[test]
    fn service_options() {
        let root = with(
            "Systems\n{\nFramework\n{\nProd\n{\nServices\n{\nTokenManager\n{\n\
             Port = 0\nHTTPSPort = 9443\nListenAddress = ::1\nMetricsListenAddress = 127.0.0.1\nMetricsPort = 0\nProtocol = https\n\
             Authorization\n{\nDefault = authenticated\ngetUsersTokensInfo = ProxyManagement, group:dteam_admin\n}\n}\n}\n}\n}\n}",
        );
        let s = resolve_ok(&root, &no_env).settings.service;
        assert_eq!((s.port, s.https_port, s.metrics_port), (0, 9443, 0));
        assert_eq!(s.listen_address, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(s.metrics_listen_address, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(s.protocol.as_deref(), Some("https"));
        assert_eq!(
            s.authorization,
            BTreeMap::from([
                ("Default".to_owned(), vec!["authenticated".to_owned()]),
                (
                    "getUsersTokensInfo".to_owned(),
                    vec!["ProxyManagement".to_owned(), "group:dteam_admin".to_owned()]
                ),
            ])
        );
    }

    #[test]
    fn tornado_instance_falls_back_to_the_framework_one_then_8443() {
        let root = parse(
            &BASE
                .replace("Tornado = TornadoProd", "")
                .replace("TornadoProd", "Prod"),
        );
        assert_eq!(resolve_ok(&root, &no_env).settings.service.https_port, 8444);
        let root = parse(&BASE.replace("Port = 8444", ""));
        assert_eq!(resolve_ok(&root, &no_env).settings.service.https_port, 8443);
    }

    #[test]
    fn instance_less_layout() {
        let text = BASE
            .replace("Setup = Production", "")
            .replace("    Prod\n    {\n      Services", "    Services")
            .replace(
                "TornadoProd\n    {\n      Port = 8444\n    }",
                "Port = 8445",
            );
        let text = text.replacen("      }\n    }\n  }\n}\n", "      }\n  }\n}\n", 1);
        let root = parse(&text);
        let s = resolve_ok(&root, &no_env).settings;
        assert_eq!(s.setup, None);
        assert_eq!(s.framework_root, "/Systems/Framework");
        assert_eq!(s.service.path, "/Systems/Framework/Services/TokenManager");
        assert_eq!(s.service.https_port, 8445);
    }

    #[test]
    fn unresolvable_instance_is_an_error() {
        let err = resolve(&parse("DIRAC\n{\n}"), &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/DIRAC/Setup is not set"), "{err}");
        let err = resolve(&parse("DIRAC\n{\nSetup = X\n}"), &no_env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/DIRAC/Setups/X/Framework is not set"),
            "{err}"
        );
    }

    #[test]
    fn tornado_service_section_is_used_when_alone() {
        let root = parse(&BASE.replace("TokenManager\n", "TornadoTokenManager\n"));
        let s = resolve_ok(&root, &no_env).settings.service;
        assert_eq!(s.name, "Framework/TornadoTokenManager");
        assert_eq!(
            s.path,
            "/Systems/Framework/Prod/Services/TornadoTokenManager"
        );

        let root = parse(&BASE.replace("TokenManager\n", "Other\n"));
        let err = resolve(&root, &no_env).unwrap_err().to_string();
        assert_eq!(
            err,
            "section /Systems/Framework/Prod/Services/TokenManager not found: \
             nor /Systems/Framework/Prod/Services/TornadoTokenManager"
        );
    }

    #[test]
    fn unknown_options_are_warnings_naming_file_line_and_path() {
        let root = with(
            "Systems\n{\nFramework\n{\nProd\n{\nServices\n{\nTokenManager\n{\n\
             MaxThreads = 20\nPrt = 9181\nThreadLimit\n{\n}\nAuthorization = x\nOdd\n{\n}\n}\n}\n}\n}\n}",
        );
        let warnings = resolve_ok(&root, &no_env).warnings;
        assert_eq!(
            warnings,
            [
                format!(
                    "/etc/tm/extra.cfg:12: unknown option {SERVICE}/Prt in the service section (ignored)"
                ),
                format!(
                    "/etc/tm/extra.cfg:16: {SERVICE}/Authorization must be a section, not an option (ignored)"
                ),
                format!(
                    "/etc/tm/extra.cfg:18: unknown section {SERVICE}/Odd in the service section (ignored)"
                ),
            ]
        );
    }

    #[test]
    fn bad_values_name_file_line_and_path() {
        let root = with(
            "Systems\n{\nFramework\n{\nProd\n{\nServices\n{\nTokenManager\n{\nPort = 91810\n}\n}\n}\n}\n}",
        );
        assert_eq!(
            resolve(&root, &no_env).unwrap_err().to_string(),
            format!(
                "/etc/tm/extra.cfg:11: {SERVICE}/Port: invalid value, expected an integer from 0 to 65535"
            )
        );
        let root = with(
            "Systems\n{\nFramework\n{\nProd\n{\nServices\n{\nTokenManager\n{\nListenAddress = localhost\n}\n}\n}\n}\n}",
        );
        let err = resolve(&root, &no_env).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("/etc/tm/extra.cfg:11: {SERVICE}/ListenAddress: ")),
            "{err}"
        );
        let root = with("Systems\n{\nTornado\n{\nTornadoProd\n{\nPort = x\n}\n}\n}");
        let err = resolve(&root, &no_env).unwrap_err().to_string();
        assert!(
            err.contains("extra.cfg:7: /Systems/Tornado/TornadoProd/Port"),
            "{err}"
        );
    }

    #[test]
    fn encryption_key_file_is_required_unless_in_the_environment() {
        let root = parse(&BASE.replace("EncryptionKeyFile = keys/keyring", ""));
        let err = resolve(&root, &no_env).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "/etc/tm/main.cfg:29: required option {SERVICE}/EncryptionKeyFile is not set \
                 (nor TOKENMANAGER_ENCRYPTION_KEY_FILE)"
            )
        );
        let env = |name: &str| (name == ENV_ENCRYPTION_KEY_FILE).then(|| "rel/key".to_owned());
        assert_eq!(
            resolve_ok(&parse(BASE), &env)
                .settings
                .service
                .encryption_key_file,
            Path::new("rel/key")
        );
    }

    fn db_section(body: &str) -> Section {
        parse(&BASE.replace("URL = sqlite://db/tm.sqlite", body))
    }

    #[test]
    fn database_from_dirac_keys_with_fallbacks() {
        let root = db_section(
            "DBName = TokenDB\nHost = db.example.org\nUser = Dirac\nPassword = p@ss word",
        );
        let url = resolve_ok(&root, &no_env).settings.database;
        assert_eq!(
            url.expose(),
            "mysql://Dirac:p%40ss%20word@db.example.org:3306/TokenDB"
        );
        assert_eq!(
            url.masked(),
            "mysql://Dirac:***@db.example.org:3306/TokenDB"
        );

        let mut root = db_section("DBName = TokenDB\nPort = 3307\nUser = tm");
        root.merge(&parse(
            "Systems\n{\nDatabases\n{\nHost = shared.example.org\nUser = Dirac\nPassword = x\nPort = 3310\n}\n}",
        ))
        .unwrap();
        assert_eq!(
            resolve_ok(&root, &no_env).settings.database.expose(),
            "mysql://tm:x@shared.example.org:3307/TokenDB"
        );
        let env = |name: &str| (name == ENV_DB_PASSWORD).then(|| "from env".to_owned());
        assert_eq!(
            resolve_ok(&root, &env).settings.database.expose(),
            "mysql://tm:from%20env@shared.example.org:3307/TokenDB"
        );
    }

    #[test]
    #[cfg(all(feature = "postgres", feature = "mysql"))]
    fn database_errors() {
        let root = db_section("Host = h\nUser = u\nPassword = secret-value");
        let err = resolve(&root, &no_env).unwrap_err().to_string();
        assert_eq!(
            err,
            "/etc/tm/main.cfg:36: required option /Systems/Framework/Prod/Databases/TokenDB/DBName is not set"
        );
        let root = db_section("DBName = d\nUser = u\nPassword = secret-value");
        let err = resolve(&root, &no_env).unwrap_err().to_string();
        assert!(
            err.ends_with("TokenDB/Host is not set (nor /Systems/Databases/Host)"),
            "{err}"
        );
        let root = db_section("DBName = d\nUser = u\nHost = h");
        let err = resolve(&root, &no_env).unwrap_err().to_string();
        assert!(err.contains("Password"), "{err}");

        let root = db_section("URL = oracle://u:secret-value@h/db");
        let err = resolve(&root, &no_env).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "/etc/tm/main.cfg:37: /Systems/Framework/Prod/Databases/TokenDB/URL: unsupported"
            ),
            "{err}"
        );
        assert!(!err.contains("secret-value"), "{err}");

        let root = parse(&BASE.replace("TokenDB", "OtherDB"));
        let err = resolve(&root, &no_env).unwrap_err().to_string();
        assert!(
            err.starts_with("section /Systems/Framework/Prod/Databases/TokenDB not found"),
            "{err}"
        );
        let env = |name: &str| (name == ENV_DB_URL).then(|| "postgres://u:p@h/db".to_owned());
        assert_eq!(
            resolve_ok(&root, &env).settings.database.expose(),
            "postgres://u:p@h/db"
        );
    }

    #[test]
    #[cfg(all(feature = "postgres", feature = "mysql"))]
    fn database_url_overrides() {
        let root = db_section("URL = postgresql://tm@db:5432/tokens");
        let env = |name: &str| (name == ENV_DB_PASSWORD).then(|| "pw".to_owned());
        assert_eq!(
            resolve_ok(&root, &env).settings.database.expose(),
            "postgresql://tm:pw@db:5432/tokens"
        );
        let env = |name: &str| match name {
            ENV_DB_URL => Some("mysql://a:b@h/db".to_owned()),
            _ => None,
        };
        assert_eq!(
            resolve_ok(&root, &env).settings.database.expose(),
            "mysql://a:b@h/db"
        );
        let env = |name: &str| (name == ENV_DB_URL).then(|| "sqlite://rel.sqlite".to_owned());
        assert_eq!(
            resolve_ok(&root, &env).settings.database.expose(),
            "sqlite://rel.sqlite",
            "relative to the working directory"
        );
        let env = |name: &str| (name == ENV_DB_URL).then(|| "file.sqlite".to_owned());
        let err = resolve(&root, &env).unwrap_err().to_string();
        assert!(
            err.starts_with("environment variable TOKENMANAGER_DB_URL: unsupported"),
            "{err}"
        );
        let env = |name: &str| (name == ENV_DB_PASSWORD).then(|| "pw".to_owned());
        let err = resolve(&parse(BASE), &env).unwrap_err().to_string();
        assert!(
            err.starts_with("environment variable TOKENMANAGER_DB_PASSWORD: "),
            "{err}"
        );
    }

    #[test]
    fn security_paths_resolve_against_their_file() {
        let root = with(
            "DIRAC\n{\nSecurity\n{\nCertFile = certs/hostcert.pem\nKeyFile = /abs/hostkey.pem\nCALocation =\n}\n}",
        );
        let security = resolve_ok(&root, &no_env).settings.security;
        assert_eq!(
            security.cert_file.as_deref(),
            Some(Path::new("/etc/tm/certs/hostcert.pem"))
        );
        assert_eq!(
            security.key_file.as_deref(),
            Some(Path::new("/abs/hostkey.pem"))
        );
        assert_eq!(security.ca_location, None);
    }

    #[test]
    fn inline_comment_lookalikes_are_warned_about() {
        let root = with(
            "Registry\n{\nGroups\n{\ng\n{\nProperties = NormalUser # admins\nVO = a#b\n}\n}\n}\n\
             Resources\n{\nIdProviders\n{\ni\n{\nclient_secret = a #b\n}\n}\n}",
        );
        assert_eq!(
            resolve_ok(&root, &no_env).warnings,
            [
                "/etc/tm/extra.cfg:7: the value of /Registry/Groups/g/Properties contains ' #': \
              CFG has no inline comments, so the text after '#' is part of the value"
            ]
        );
    }

    #[test]
    fn settings_debug_redacts_secrets() {
        let root = with("Resources\n{\nIdProviders\n{\ni\n{\nclient_secret = idp-secret\n}\n}\n}");
        let root = {
            let mut r = root;
            r.merge(&db_section(
                "DBName = d\nHost = h\nUser = u\nPassword = db-secret",
            ))
            .unwrap();
            r
        };
        let settings = resolve_ok(&root, &no_env).settings;
        assert_eq!(
            settings
                .idp("i")
                .and_then(|i| i.client_secret())
                .map(Secret::expose),
            Some("idp-secret")
        );
        let debug = format!("{settings:?}");
        assert!(
            !debug.contains("idp-secret") && !debug.contains("db-secret"),
            "{debug}"
        );
    }

    #[test]
    fn loads_the_reference_layout_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("keyring");
        let key_path = key.display().to_string();
        let env = |name: &str| (name == ENV_ENCRYPTION_KEY_FILE).then(|| key_path.clone());
        let loaded = load_with_env(&[fixture("dirac-layout.cfg")], &env).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let s = loaded.settings;
        assert_eq!(s.framework_root, "/Systems/Framework/Production");
        assert_eq!(s.service.https_port, 8443);
        assert_eq!(s.service.protocol.as_deref(), Some("https"));
        assert_eq!(s.service.encryption_key_file, key);
        assert_eq!(
            s.database.masked(),
            "mysql://Dirac:***@db.example.org:3306/TokenDB"
        );
        assert_eq!(s.registry.virtual_organization(), Some("dteam"));
        assert_eq!(s.registry.idp_for_group("dteam_pilot"), Some("IAM-dteam"));
        assert_eq!(s.idp("IAM-dteam").unwrap().provider_type(), "IAM");

        // A later file wins, and its relative paths resolve against its own directory.
        let local = dir.path().join("local.cfg");
        std::fs::write(
            &local,
            "Systems\n{\nFramework\n{\nProduction\n{\nServices\n{\nTokenManager\n{\n\
             EncryptionKeyFile = keyring\nPort = 9999\n}\n}\n}\n}\n}\n",
        )
        .unwrap();
        let s = load_with_env(&[fixture("dirac-layout.cfg"), local], &no_env)
            .unwrap()
            .settings;
        assert_eq!(s.service.port, 9999);
        assert_eq!(s.service.encryption_key_file, key);
    }

    #[test]
    fn load_needs_files() {
        assert!(matches!(load(&[]), Err(ConfigError::NoFiles)));
    }

    #[test]
    fn example_config_loads_without_warnings() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tokenmanager.example.cfg");
        let loaded = load_with_env(std::slice::from_ref(&example), &no_env)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let s = loaded.settings;
        let config_dir = example.parent().unwrap();
        assert_eq!(
            s.service.listen_address,
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            (s.service.port, s.service.https_port, s.service.metrics_port),
            (9181, 8443, 9182)
        );
        assert_eq!(
            s.service.encryption_key_file,
            config_dir.join("../var/keyring")
        );
        assert_eq!(
            s.database.sqlite_path().map(PathBuf::from),
            Some(config_dir.join("../var/tokenmanager.sqlite"))
        );
        assert_eq!(s.registry.id_dns_for_user("alice").len(), 1);
        assert_eq!(
            s.registry
                .groups()
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>(),
            ["dteam_user", "dteam_pilot", "dteam_admin"]
        );
        let idp = s
            .idp(s.registry.idp_for_group("dteam_user").unwrap())
            .unwrap();
        assert!(idp.issuer().is_some() && idp.client_id().is_some());
        assert!(!s.registry.hosts().is_empty());
    }

    #[test]
    fn readme_tables_match_the_declarations() {
        let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/README.md");
        let readme = std::fs::read_to_string(readme).unwrap();
        let (begin, end) = (
            "<!-- service-options:begin -->\n",
            "<!-- service-options:end -->",
        );
        let documented = readme
            .split_once(begin)
            .and_then(|(_, rest)| rest.split_once(end))
            .map(|(section, _)| section.trim_matches('\n'))
            .expect("config/README.md has the service-options markers");
        let expected = super::super::service::service_options_doc();
        assert!(
            documented == expected.trim_matches('\n'),
            "config/README.md's service options differ from the declarations in \
             src/config/service.rs; between the markers it should read:\n{expected}"
        );
        for var in [ENV_DB_URL, ENV_DB_PASSWORD, ENV_ENCRYPTION_KEY_FILE] {
            assert!(readme.contains(var), "{var} missing");
        }
    }
}
