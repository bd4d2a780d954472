//! OAuth2 scopes as normalised sets, and the scopes a DIRAC group implies
//! (docs/DIRAC.md#group-scopes).

use std::collections::BTreeSet;
use std::fmt;

/// A set of scopes: order and duplicates never matter, so equal requests share cache entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeSet(BTreeSet<String>);

impl ScopeSet {
    /// From a space-separated string (how OAuth2 writes scopes).
    pub fn parse(text: &str) -> Self {
        Self(text.split_whitespace().map(str::to_owned).collect())
    }

    pub fn from_items<I: IntoIterator<Item = S>, S: AsRef<str>>(items: I) -> Self {
        Self(
            items
                .into_iter()
                .flat_map(|s| {
                    s.as_ref()
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect(),
        )
    }

    pub fn union(&self, other: &ScopeSet) -> ScopeSet {
        Self(self.0.union(&other.0).cloned().collect())
    }

    /// The scopes of `self` that `other` lacks.
    pub fn difference(&self, other: &ScopeSet) -> ScopeSet {
        Self(self.0.difference(&other.0).cloned().collect())
    }

    pub fn contains(&self, scope: &str) -> bool {
        self.0.contains(scope)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

impl fmt::Display for ScopeSet {
    /// Space-separated, sorted: DIRAC's `" ".join(sorted(scope))`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for scope in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(scope)?;
            first = false;
        }
        Ok(())
    }
}

/// What kind of IdP a `/Resources/IdProviders` section describes (`ProviderType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderType {
    OAuth2,
    Iam,
    CheckIn,
}

impl ProviderType {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "OAuth2" => Some(Self::OAuth2),
            "IAM" => Some(Self::Iam),
            "CheckIn" => Some(Self::CheckIn),
            _ => None,
        }
    }
}

/// DIRAC's `getGroupScopes`: the group's `IdPRole`, else for IAM and CheckIn a scope derived from
/// a `<vo>_<role>` group name.
pub fn group_scopes(
    provider: ProviderType,
    group: &str,
    idp_role: Option<&str>,
    vo: Option<&str>,
) -> ScopeSet {
    if let Some(role) = idp_role.filter(|r| !r.trim().is_empty()) {
        return ScopeSet::parse(role);
    }
    let derived = vo.filter(|vo| !vo.is_empty()).zip(group.split('_').nth(1));
    match (provider, derived) {
        (ProviderType::Iam, Some((vo, role))) => {
            ScopeSet::parse(&format!("wlcg.groups:/{vo}/{role}"))
        }
        (ProviderType::CheckIn, Some((vo, role))) => ScopeSet::parse(&format!(
            "eduperson_entitlement?value=urn:mace:egi.eu:group:{vo}:role={role}#aai.egi.eu"
        )),
        _ => ScopeSet::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_sets_ignore_order_and_duplicates() {
        let a = ScopeSet::from_items(["permission:2", "permission:1", "permission:2"]);
        assert_eq!(a.to_string(), "permission:1 permission:2");
        assert_eq!(a, ScopeSet::parse("permission:2 permission:1"));
        let union = a.union(&ScopeSet::parse("openid"));
        assert_eq!(union.to_string(), "openid permission:1 permission:2");
        assert_eq!(union.difference(&a).to_string(), "openid");
        assert!(a.difference(&union).is_empty());
        assert!(ScopeSet::from_items(Vec::<String>::new()).is_empty());
    }

    /// DIRAC's Test_IdProvider::test_getGroupScopes truth table.
    #[test]
    fn group_scopes_follow_diracs_table() {
        use ProviderType::*;
        let cases = [
            (OAuth2, "dteam_user", Some("a b"), Some("dteam"), "a b"),
            (OAuth2, "dteam_user", None, Some("dteam"), ""),
            (
                Iam,
                "dteam_pilot",
                None,
                Some("dteam"),
                "wlcg.groups:/dteam/pilot",
            ),
            (
                Iam,
                "lhcb_prod_x",
                None,
                Some("lhcb"),
                "wlcg.groups:/lhcb/prod",
            ),
            (
                Iam,
                "test_user",
                None,
                Some("anotherVO"),
                "wlcg.groups:/anotherVO/user",
            ),
            (Iam, "testUser", None, Some("anotherVO"), ""),
            (Iam, "dteam_user", Some("custom"), Some("dteam"), "custom"),
            (
                CheckIn,
                "dteam_user",
                None,
                Some("dteam"),
                "eduperson_entitlement?value=urn:mace:egi.eu:group:dteam:role=user#aai.egi.eu",
            ),
            (Iam, "dteam_user", None, None, ""),
        ];
        for (provider, group, role, vo, expected) in cases {
            assert_eq!(
                group_scopes(provider, group, role, vo).to_string(),
                expected,
                "{provider:?} {group}"
            );
        }
    }
}
