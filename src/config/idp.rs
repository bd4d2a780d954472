//! Identity providers: the sections of `/Resources/IdProviders`.

use std::collections::HashMap;

use self::options::{CLIENT_ID, CLIENT_SECRET, ISSUER, PROVIDER_TYPE, SCOPE};
use super::ConfigError;
use super::cfg::{Entry, Origin, Section};
use super::options::{Kind, Optional, Setting};
use super::secrets::env_value;
use crate::domain::Secret;

const IDPS: &str = "/Resources/IdProviders";

/// The options of an IdP section that this service reads, each declared once. The section may
/// hold others (DIRAC's are kept whole) without a warning.
pub mod options {
    use crate::config::options::{
        List, Optional, PositiveCount, PositiveSeconds, Setting, Text, WholeSeconds,
        declare_options, render_table,
    };

    declare_options! {
        /// config/README.md's table of IdP options is checked against these by a test.
        pub static IDP_OPTIONS;

        /// `OAuth2`, `IAM` or `CheckIn`
        pub const PROVIDER_TYPE: Setting<Text> = "ProviderType", Text("string"), "OAuth2";
        /// OIDC issuer; discovery at `<issuer>/.well-known/openid-configuration`
        pub const ISSUER: Optional<Text> = "issuer", Text("URL"), "unset";
        /// our client at the IdP
        pub const CLIENT_ID: Optional<Text> = "client_id", Text("string"), "unset";
        /// its secret (or `TOKENMANAGER_IDP_<NAME>_CLIENT_SECRET`)
        pub const CLIENT_SECRET: Optional<Text> = "client_secret", Text("secret"), "unset";
        /// default scope (space-separated); not used by getToken, as in DIRAC
        pub const SCOPE: Optional<Text> = "scope", Text("string"), "unset";
        /// `client_secret_basic` (secret in the Authorization header) or `client_secret_post`
        /// (in the body); anything else refuses start-up
        pub const TOKEN_ENDPOINT_AUTH_METHOD: Setting<Text> =
            "token_endpoint_auth_method", Text("string"), "client_secret_basic";
        /// DIRAC's discovery override
        pub const SERVER_METADATA_URL: Optional<Text> =
            "server_metadata_url", Text("URL"), "`<issuer>/.well-known/openid-configuration`";
        /// how getToken's audience is sent: `audience=` (INDIGO IAM, DIRAC) or RFC 8707
        /// `resource=`
        pub const AUDIENCE_PARAMETER: Setting<Text> =
            "audience_parameter", Text("`audience` or `resource`"), "audience";
        /// the audiences getToken may ask for, user and client tokens alike; others are refused
        /// (`audience_not_allowed`) *before* the IdP is contacted: some IdPs rotate the refresh
        /// token and only then refuse an audience the grant does not cover, which burns the
        /// user's grant. Unset, a user token with an audience is refused (what each user
        /// delegated is not known here) unless `audience_narrowing = exchange`, and a client
        /// token (`client_credentials`, which consumes nothing) may ask for any; list the
        /// audiences your components use, e.g. the FTS and CE endpoints
        pub const ALLOWED_AUDIENCES: Optional<List> = "allowed_audiences", List,
            "unset: no audience for user tokens (any with `exchange` below), any for client tokens";
        /// how a user token gets the audience getToken asks for: `refresh` sends it with the
        /// refresh token (a rotating IdP that then refuses it has consumed the refresh token:
        /// hence `allowed_audiences`); `exchange` refreshes without audience and exchanges that
        /// access token at the IdP for one narrowed to the audience and scopes (RFC 8693 token
        /// exchange, which the IdP must allow for this client): the refresh token never travels
        /// with a caller's audience, and a refused exchange costs nothing but that call. With
        /// `exchange` and `allowed_audiences` unset, user tokens may ask for any audience, the IdP
        /// deciding. Client tokens ask for theirs with `client_credentials` either way
        pub const AUDIENCE_NARROWING: Setting<Text> =
            "audience_narrowing", Text("`refresh` or `exchange`"), "refresh";
        /// total time of one IdP request (discovery, token, revocation); getToken's callers get
        /// `idp_unavailable` "timed out" after `timeout` + 1 s
        pub const TIMEOUT: Setting<PositiveSeconds> = "timeout", PositiveSeconds, 10;
        /// how much longer a `refresh_token` request whose callers timed out keeps its
        /// connection open for the IdP's reply, which is then stored (see below)
        pub const LATE_REPLY_WAIT: Setting<PositiveSeconds> =
            "late_reply_wait", PositiveSeconds, 60;
        /// time to connect to the IdP
        pub const CONNECT_TIMEOUT: Setting<PositiveSeconds> =
            "connect_timeout", PositiveSeconds, 3;
        /// IdP requests in flight at once from one process; more wait
        pub const MAX_IN_FLIGHT: Setting<PositiveCount> = "max_in_flight", PositiveCount, 32;
        /// the audience an IdP-issued bearer token (HTTPS `Authorization: Bearer`) must carry to
        /// identify a caller, e.g. this service's URL; unset: bearer tokens from this IdP
        /// identify no one (401 naming the option), since any access token the IdP issued for a
        /// user — one this service handed to FTS, say — would otherwise authenticate as that
        /// user here
        pub const BEARER_AUDIENCE: Optional<Text> = "bearer_audience", Text("string"), "unset";
        /// clock skew tolerated on a bearer token's expiry
        pub const BEARER_LEEWAY: Setting<WholeSeconds> = "bearer_leeway", WholeSeconds, 60;
        /// age at which the cached discovery document is fetched again (also after a transport
        /// error; never per call); the document is the issuer's, shared by its sections
        /// (below), each judging its age by its own setting
        pub const DISCOVERY_REFRESH: Setting<PositiveSeconds> =
            "discovery_refresh", PositiveSeconds, 3600;
    }

    /// The part of config/README.md between its `idp-options` markers.
    pub fn idp_options_doc() -> String {
        render_table(IDP_OPTIONS)
    }
}

/// One `/Resources/IdProviders/<name>` section. Like DIRAC's `getOptionsDict`, only its options
/// count (all strings) and subsections are ignored.
#[derive(Clone, Debug)]
pub struct IdProvider {
    name: String,
    origin: Origin,
    // Without client_secret, which only lives in `client_secret` so it cannot leak via Debug.
    options: Vec<(String, String)>,
    client_secret: Option<Secret>,
}

impl IdProvider {
    /// The section name, which TokenDB stores as `provider`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the section was first defined.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Options in CS order, `client_secret` excluded.
    pub fn options(&self) -> impl Iterator<Item = (&str, &str)> {
        self.options.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// An option by name (`client_secret` excluded); empty values count as unset.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// A declared option's value, else its default. `Err` is the problem, naming the option
    /// and its text.
    pub fn get<K: Kind>(&self, setting: &Setting<K>) -> Result<K::Value, String> {
        Ok(setting.or_default(self.read(setting.name, &setting.kind)?))
    }

    pub fn optional<K: Kind>(&self, option: &Optional<K>) -> Result<Option<K::Value>, String> {
        self.read(option.name, &option.kind)
    }

    fn read<K: Kind>(&self, name: &str, kind: &K) -> Result<Option<K::Value>, String> {
        let Some(text) = self.option(name) else {
            return Ok(None);
        };
        kind.parse(text, &self.origin)
            .map_err(|reason| format!("{name} = {text} {reason}"))
    }

    /// `OAuth2` (DIRAC's default), `IAM`, `CheckIn` or an extension type.
    pub fn provider_type(&self) -> &str {
        self.option(PROVIDER_TYPE.name)
            .unwrap_or(PROVIDER_TYPE.default)
    }

    pub fn issuer(&self) -> Option<&str> {
        self.option(ISSUER.name)
    }

    pub fn client_id(&self) -> Option<&str> {
        self.option(CLIENT_ID.name)
    }

    /// From `TOKENMANAGER_IDP_<NAME>_CLIENT_SECRET[_FILE]` if set, else from the CS.
    pub fn client_secret(&self) -> Option<&Secret> {
        self.client_secret.as_ref()
    }

    /// The raw `scope` option; DIRAC splits scopes on whitespace only.
    pub fn scope(&self) -> Option<&str> {
        self.option(SCOPE.name)
    }
}

/// `TOKENMANAGER_IDP_<NAME>_CLIENT_SECRET` for an IdP section name: upper-cased, every character
/// other than an ASCII letter or digit replaced by `_` (`IAM-dteam` → `IAM_DTEAM`).
pub fn client_secret_var(idp_name: &str) -> String {
    let name: String = idp_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("TOKENMANAGER_IDP_{name}_CLIENT_SECRET")
}

pub(super) fn from_cfg(
    root: &Section,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<IdProvider>, ConfigError> {
    let Some(section) = root.section(IDPS) else {
        return Ok(Vec::new());
    };
    let mut names_by_var: HashMap<String, Vec<&str>> = HashMap::new();
    for name in section.section_names() {
        names_by_var
            .entry(client_secret_var(name))
            .or_default()
            .push(name);
    }
    let mut idps = Vec::new();
    for (name, entry) in section.entries() {
        let Entry::Section(idp, origin) = entry else {
            continue;
        };
        let var = client_secret_var(name);
        let from_env = env_value(env, &var)?;
        let sharing = &names_by_var[&var];
        if from_env.is_some() && sharing.len() > 1 {
            return Err(ConfigError::Env {
                var,
                reason: format!(
                    "applies to several identity providers ({}); rename all but one",
                    sharing.join(", ")
                ),
            });
        }
        let client_secret = match from_env {
            Some(found) => Some(Secret::new(found.value)),
            None => idp
                .get(CLIENT_SECRET.name)
                .filter(|v| !v.is_empty())
                .map(Secret::new),
        };
        idps.push(IdProvider {
            name: name.to_owned(),
            origin: origin.clone(),
            options: idp
                .options()
                .filter(|(k, _, _)| *k != CLIENT_SECRET.name)
                .map(|(k, v, _)| (k.to_owned(), v.to_owned()))
                .collect(),
            client_secret,
        });
    }
    Ok(idps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CS: &str = "
Resources
{
  IdProviders
  {
    IAM-dteam
    {
      ProviderType = IAM
      issuer = https://iam.example.org/
      client_id = 1234-abcd
      client_secret = s3cr3t
      scope = openid profile offline_access
      token_endpoint_auth_method = client_secret_post
      jwks =
      Extra
      {
        x = 1
      }
    }
    plain
    {
      issuer = https://plain.example.org
    }
  }
}
";

    fn idps(
        cs: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<IdProvider>, ConfigError> {
        from_cfg(&Section::parse(cs, Path::new("i.cfg")).unwrap(), env)
    }

    #[test]
    fn reads_options_and_typed_accessors() {
        let list = idps(CS, &|_| None).unwrap();
        assert_eq!(
            list.iter().map(IdProvider::name).collect::<Vec<_>>(),
            ["IAM-dteam", "plain"]
        );
        let iam = &list[0];
        assert_eq!(iam.provider_type(), "IAM");
        assert_eq!(iam.issuer(), Some("https://iam.example.org/"));
        assert_eq!(iam.client_id(), Some("1234-abcd"));
        assert_eq!(iam.client_secret().map(Secret::expose), Some("s3cr3t"));
        assert_eq!(iam.scope(), Some("openid profile offline_access"));
        assert_eq!(
            iam.option("token_endpoint_auth_method"),
            Some("client_secret_post")
        );
        assert_eq!(iam.option("jwks"), None);
        assert_eq!(iam.origin().line, 7);
        assert_eq!(
            iam.options().map(|(k, _)| k).collect::<Vec<_>>(),
            [
                "ProviderType",
                "issuer",
                "client_id",
                "scope",
                "token_endpoint_auth_method",
                "jwks"
            ]
        );
        let plain = &list[1];
        assert_eq!(plain.provider_type(), "OAuth2");
        assert!(plain.client_secret().is_none());
        assert!(!format!("{list:?}").contains("s3cr3t"));
        assert!(idps("", &|_| None).unwrap().is_empty());
    }

    #[test]
    fn env_var_names() {
        assert_eq!(
            client_secret_var("IAM-dteam"),
            "TOKENMANAGER_IDP_IAM_DTEAM_CLIENT_SECRET"
        );
        assert_eq!(
            client_secret_var("check.in é"),
            "TOKENMANAGER_IDP_CHECK_IN___CLIENT_SECRET"
        );
    }

    #[test]
    fn client_secret_from_env_overrides_the_cs() {
        let env = |name: &str| {
            (name == "TOKENMANAGER_IDP_PLAIN_CLIENT_SECRET").then(|| "from-env".to_owned())
        };
        let list = idps(CS, &env).unwrap();
        assert_eq!(
            list[1].client_secret().map(Secret::expose),
            Some("from-env")
        );
        assert_eq!(list[0].client_secret().map(Secret::expose), Some("s3cr3t"));
    }

    #[test]
    fn ambiguous_env_var_is_an_error_only_when_set() {
        let cs = "Resources\n{\nIdProviders\n{\nA-b\n{\n}\nA_b\n{\n}\n}\n}";
        assert_eq!(idps(cs, &|_| None).unwrap().len(), 2);
        let env =
            |name: &str| (name == "TOKENMANAGER_IDP_A_B_CLIENT_SECRET").then(|| "x".to_owned());
        let err = idps(cs, &env).unwrap_err().to_string();
        assert!(err.contains("A-b, A_b"), "{err}");
        assert!(!err.contains(": x"), "{err}");
    }

    #[test]
    fn declared_options_are_read_with_their_defaults_and_problems() {
        let cs = "Resources\n{\nIdProviders\n{\ni\n{\ntimeout = 2.5\nmax_in_flight =\n\
                  bearer_leeway = soon\n}\n}\n}";
        let list = idps(cs, &|_| None).unwrap();
        let i = &list[0];
        assert_eq!(
            i.get(&options::TIMEOUT),
            Ok(std::time::Duration::from_millis(2500))
        );
        assert_eq!(i.get(&options::MAX_IN_FLIGHT), Ok(32), "empty is unset");
        assert_eq!(
            i.get(&options::BEARER_LEEWAY),
            Err("bearer_leeway = soon is not a number of seconds".to_owned())
        );
        assert_eq!(
            i.get(&options::AUDIENCE_PARAMETER).as_deref(),
            Ok("audience")
        );
        assert_eq!(i.optional(&options::BEARER_AUDIENCE), Ok(None));
        assert_eq!(i.provider_type(), "OAuth2");
    }

    #[test]
    fn readme_table_matches_the_declarations() {
        let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/README.md");
        let readme = std::fs::read_to_string(readme).unwrap();
        let documented = readme
            .split_once("<!-- idp-options:begin -->\n")
            .and_then(|(_, rest)| rest.split_once("<!-- idp-options:end -->"))
            .map(|(section, _)| section)
            .expect("config/README.md has the idp-options markers");
        let expected = options::idp_options_doc();
        assert!(
            documented == expected,
            "config/README.md's IdP options differ from the declarations in \
             src/config/idp.rs; between the markers it should read:\n{expected}"
        );
    }
}
