//! Identity providers: the sections of `/Resources/IdProviders`.

use std::collections::HashMap;

use super::ConfigError;
use super::cfg::{Entry, Origin, Section};
use super::secrets::env_value;
use crate::domain::Secret;

const IDPS: &str = "/Resources/IdProviders";
const CLIENT_SECRET: &str = "client_secret";

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

    /// `OAuth2` (DIRAC's default), `IAM`, `CheckIn` or an extension type.
    pub fn provider_type(&self) -> &str {
        self.option("ProviderType").unwrap_or("OAuth2")
    }

    pub fn issuer(&self) -> Option<&str> {
        self.option("issuer")
    }

    pub fn client_id(&self) -> Option<&str> {
        self.option("client_id")
    }

    /// From `TOKENMANAGER_IDP_<NAME>_CLIENT_SECRET[_FILE]` if set, else from the CS.
    pub fn client_secret(&self) -> Option<&Secret> {
        self.client_secret.as_ref()
    }

    /// The raw `scope` option; DIRAC splits scopes on whitespace only.
    pub fn scope(&self) -> Option<&str> {
        self.option("scope")
    }

    pub fn token_endpoint_auth_method(&self) -> Option<&str> {
        self.option("token_endpoint_auth_method")
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
                .get(CLIENT_SECRET)
                .filter(|v| !v.is_empty())
                .map(Secret::new),
        };
        idps.push(IdProvider {
            name: name.to_owned(),
            origin: origin.clone(),
            options: idp
                .options()
                .filter(|(k, _, _)| *k != CLIENT_SECRET)
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
        assert_eq!(iam.token_endpoint_auth_method(), Some("client_secret_post"));
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
}
