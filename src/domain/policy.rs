//! DIRAC's authorization (`AuthManager.authQuery`, docs/DIRAC.md#authorization), one rule set for
//! every protocol. Differences from DIRAC, on purpose: with no rule anywhere a method needs
//! `authenticated` (DIRAC: anyone), banned IPs are refused for every method, and a limited proxy
//! is accepted only by methods open to all (DIRAC leaves that to each method).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::registry::Registry;

/// The group DIRAC gives hosts, and the name and group of unknown callers let in by `all`/`any`.
pub const HOSTS_GROUP: &str = "hosts";
pub const ANONYMOUS: &str = "anonymous";
pub const VISITOR_GROUP: &str = "visitor";

/// What a client said about itself beyond its certificate (DIRAC's `extraCredentials`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ExtraCredentials {
    #[default]
    None,
    /// `"hosts"`: the certificate is a host's.
    Hosts,
    /// `[DN, group]`: a trusted host acting for a user.
    Forwarded { dn: String, group: String },
    /// Any other string: DIRAC takes it as the group (a legacy client habit).
    Group(String),
    /// Anything else DIRAC would refuse.
    Invalid,
}

/// The caller as the transport saw it.
#[derive(Clone, Debug, Default)]
pub struct Peer<'a> {
    /// The identity DN (the end-entity certificate's subject for a proxy); None without a
    /// certificate.
    pub dn: Option<&'a str>,
    /// The DIRAC group carried by a proxy (OID 1.2.42.42).
    pub group: Option<&'a str>,
    pub extra: ExtraCredentials,
    pub ip: Option<IpAddr>,
    pub limited_proxy: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallerKind {
    User,
    Host,
    /// Unknown to the Registry, let in by an `all`/`any` rule as anonymous@visitor.
    Anonymous,
}

/// Who the caller is once authorized: DIRAC's credDict after `authQuery`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorized {
    pub kind: CallerKind,
    pub dn: Option<String>,
    pub username: String,
    pub group: String,
    /// DIRAC's rewrite: all the group's (or host's) properties when the rule was
    /// `all`/`any`/`authenticated`, only the matched ones when the rule named properties.
    pub properties: Vec<String>,
    /// The host that forwarded these credentials, if any.
    pub forwarded_by: Option<String>,
}

impl Authorized {
    pub fn has_property(&self, property: &str) -> bool {
        self.properties
            .iter()
            .any(|p| p.eq_ignore_ascii_case(property))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    BannedIp(IpAddr),
    /// No certificate, and the rule is not open to all.
    NoCredentials,
    LimitedProxy,
    /// `extraCredentials` DIRAC would not accept (a forward from a non-trusted host...).
    BadExtraCredentials,
    UnknownHost,
    /// Unknown DN, not a member of the group, or suspended for the group's VO.
    InvalidUser,
    WrongGroup,
    MissingProperty,
}

/// The rules that apply to `method`: the `Authorization/<method>` option, else the hard-coded
/// rule, else `Authorization/Default`, else `authenticated`. An empty list counts as unset, as
/// in DIRAC.
pub fn rules_for<'a>(
    method: &str,
    hardcoded: Option<&'a [&'a str]>,
    configured: &'a BTreeMap<String, Vec<String>>,
) -> Vec<&'a str> {
    let configured_rule = |name: &str| configured.get(name).filter(|rules| !rules.is_empty());
    if let Some(rules) = configured_rule(method) {
        return rules.iter().map(String::as_str).collect();
    }
    if let Some(rules) = hardcoded.filter(|rules| !rules.is_empty()) {
        return rules.to_vec();
    }
    if let Some(rules) = configured_rule("Default") {
        return rules.iter().map(String::as_str).collect();
    }
    vec!["authenticated"]
}

/// `authQuery`: is `peer` allowed by `rules`, and as whom.
pub fn authorize(
    rules: &[&str],
    peer: &Peer<'_>,
    registry: &Registry,
) -> Result<Authorized, Denied> {
    if let Some(ip) = peer.ip
        && registry.banned_ips().contains(&ip)
    {
        return Err(Denied::BannedIp(ip));
    }
    let (required, valid_groups) = split_group_rules(rules, registry);
    // Rules compare case-insensitively; no rule at all means any.
    let required = if required.is_empty() {
        vec!["any"]
    } else {
        required
    };
    let is = |rule: &str| required.iter().any(|r| r.eq_ignore_ascii_case(rule));
    let allow_all = is("any") || is("all");
    if peer.limited_proxy && !allow_all {
        return Err(Denied::LimitedProxy);
    }
    let Some(dn) = peer.dn else {
        return if allow_all && valid_groups.is_empty() {
            Ok(anonymous(None, None))
        } else {
            Err(Denied::NoCredentials)
        };
    };

    // A trusted host acting for a user: authorize the forwarded pair instead.
    let (dn, group_claim, forwarded_by) = match &peer.extra {
        ExtraCredentials::Forwarded { dn: user_dn, group } => {
            let trusted = registry.hostname_for_dn(dn).filter(|host| {
                registry
                    .properties_for_host(host)
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case("TrustedHost"))
            });
            match trusted {
                Some(host) => (
                    user_dn.as_str(),
                    Some(group.as_str()),
                    Some(host.to_owned()),
                ),
                None => return Err(Denied::BadExtraCredentials),
            }
        }
        ExtraCredentials::Invalid => return Err(Denied::BadExtraCredentials),
        ExtraCredentials::Hosts => (dn, Some(HOSTS_GROUP), None),
        ExtraCredentials::Group(group) => (dn, peer.group.or(Some(group.as_str())), None),
        ExtraCredentials::None => (dn, peer.group, None),
    };

    let group = match group_claim {
        Some(group) => group.to_owned(),
        None => match registry
            .username_for_dn(dn)
            .and_then(|user| registry.default_group_for_user(user))
        {
            Some(group) => group.to_owned(),
            None => return open_or(allow_all, Some(dn), Denied::InvalidUser, forwarded_by),
        },
    };

    let mut caller = if group == HOSTS_GROUP {
        match registry.hostname_for_dn(dn) {
            Some(host) => Authorized {
                kind: CallerKind::Host,
                dn: Some(dn.to_owned()),
                username: host.to_owned(),
                group,
                properties: registry.properties_for_host(host).to_vec(),
                forwarded_by,
            },
            None => return open_or(allow_all, Some(dn), Denied::UnknownHost, forwarded_by),
        }
    } else {
        match member_of_group(registry, dn, &group) {
            Some(username) if !suspended(registry, username, &group) => Authorized {
                kind: CallerKind::User,
                dn: Some(dn.to_owned()),
                username: username.to_owned(),
                properties: registry.properties_for_group(&group).to_vec(),
                group,
                forwarded_by,
            },
            _ => return open_or(allow_all, Some(dn), Denied::InvalidUser, forwarded_by),
        }
    };

    let allow_group = valid_groups.is_empty() || valid_groups.iter().any(|g| *g == caller.group);
    if (allow_all || is("authenticated")) && allow_group {
        return Ok(caller);
    }
    caller.properties.retain(|p| is(p));
    if caller.properties.is_empty() {
        Err(Denied::MissingProperty)
    } else if !allow_group {
        Err(Denied::WrongGroup)
    } else {
        Ok(caller)
    }
}

/// What a caller may receive from getToken (DIRAC's `__checkProperties`,
/// docs/DIRAC.md#the-delegation-check).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delegation {
    /// FullDelegation: any user's tokens.
    Full,
    /// LimitedDelegation, or PrivateLimitedDelegation for oneself: never a refresh token.
    Limited,
}

/// DIRAC's delegation check, with its messages. Fixed on purpose: PrivateLimitedDelegation
/// compares the requested user with the caller by username (DIRAC compares the caller's DN with
/// the user's `/O=DIRAC/CN=<id>` DN, which never matches an X.509 caller).
pub fn delegation(
    caller: &Authorized,
    requested_user: &str,
    requested_group: &str,
    registry: &Registry,
) -> Result<Delegation, &'static str> {
    if caller.has_property("FullDelegation") {
        return Ok(Delegation::Full);
    }
    if caller.has_property("LimitedDelegation") {
        return Ok(Delegation::Limited);
    }
    if caller.has_property("PrivateLimitedDelegation") {
        if caller.kind != CallerKind::User || caller.username != requested_user {
            return Err("You are not allowed to download any token");
        }
        let group_allows = registry
            .properties_for_group(requested_group)
            .iter()
            .any(|p| p == "PrivateLimitedDelegation");
        if !group_allows {
            return Err("You can't download tokens for that group");
        }
        return Ok(Delegation::Limited);
    }
    Err("You can't get tokens!")
}

/// Takes `group:<g>` and `vo:<vo>` out of the rules: they restrict the caller's group.
fn split_group_rules<'r>(
    rules: &[&'r str],
    registry: &'r Registry,
) -> (Vec<&'r str>, Vec<&'r str>) {
    let mut required = Vec::new();
    let mut groups = Vec::new();
    for rule in rules {
        let rule = rule.trim();
        if let Some(group) = rule.strip_prefix("group:") {
            groups.push(group.trim());
        } else if let Some(vo) = rule.strip_prefix("vo:") {
            let vo = vo.trim();
            groups.extend(
                registry
                    .groups()
                    .iter()
                    .filter(|g| registry.vo_for_group(&g.name) == Some(vo))
                    .map(|g| g.name.as_str()),
            );
        } else if !rule.is_empty() {
            required.push(rule);
        }
    }
    (required, groups)
}

/// `getUsername`: the member of `group` who owns `dn`. The DN index answers at once in the usual
/// case; a DN shared by several users falls back to DIRAC's scan of the group.
fn member_of_group<'r>(registry: &'r Registry, dn: &str, group: &str) -> Option<&'r str> {
    if let Some(user) = registry.username_for_dn(dn)
        && registry.is_member(group, user)
    {
        return Some(user);
    }
    registry
        .group(group)?
        .users
        .iter()
        .filter_map(|user| registry.user(user))
        .find(|user| user.dns.iter().any(|d| d.trim() == dn.trim()))
        .map(|user| user.name.as_str())
}

/// `isUserSuspended`: the user is suspended for the group's VO.
fn suspended(registry: &Registry, username: &str, group: &str) -> bool {
    let Some(vo) = registry.vo_for_group(group) else {
        return false;
    };
    registry
        .user(username)
        .is_some_and(|user| user.suspended.iter().any(|s| s == vo))
}

fn anonymous(dn: Option<&str>, forwarded_by: Option<String>) -> Authorized {
    Authorized {
        kind: CallerKind::Anonymous,
        dn: dn.map(str::to_owned),
        username: ANONYMOUS.to_owned(),
        group: VISITOR_GROUP.to_owned(),
        properties: Vec::new(),
        forwarded_by,
    }
}

fn open_or(
    allow_all: bool,
    dn: Option<&str>,
    denied: Denied,
    forwarded_by: Option<String>,
) -> Result<Authorized, Denied> {
    if allow_all {
        Ok(anonymous(dn, forwarded_by))
    } else {
        Err(denied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::registry::{Group, Host, RegistryParts, User};

    /// The Registry of DIRAC's `Test_AuthManager.py`, plus a banned IP and a trusted host.
    fn registry() -> Registry {
        let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect();
        let user = |name: &str, suspended: &[&str]| User {
            name: name.into(),
            dns: vec![format!("/User/test/DN/CN={name}")],
            default_group: Vec::new(),
            suspended: strings(suspended),
            email: None,
        };
        let group = |name: &str, users: &[&str], properties: &[&str], vo: &str| Group {
            name: name.into(),
            users: strings(users),
            properties: strings(properties),
            vo: Some(vo.into()),
            idp_role: None,
            voms_role: None,
            other: Default::default(),
        };
        let host = |name: &str, property: &str| Host {
            name: name.into(),
            dns: vec![format!("/User/test/DN/CN={name}")],
            properties: vec![property.into()],
        };
        Registry::new(RegistryParts {
            users: vec![
                user("userA", &[]),
                user("userB", &[]),
                user("userS", &["testVO"]),
            ],
            groups: vec![
                group("group_test", &["userA", "userS"], &["NormalUser"], "testVO"),
                group(
                    "group_test_other",
                    &["userA"],
                    &["NormalUser", "ProxyManagement"],
                    "testVOother",
                ),
                group("group_bad", &["userB"], &["NoProperties"], "testVOBad"),
            ],
            vos: Vec::new(),
            hosts: vec![
                host("test.hostOK.ch", "TrustedHost"),
                host("test.hostBad.ch", "NoTrustedHost"),
            ],
            // DIRAC's default when /Registry/DefaultGroup is unset.
            default_group: vec!["user".into()],
            banned_ips: vec!["192.0.2.66".parse().unwrap()],
            virtual_organization: None,
        })
    }

    fn rules(text: &str) -> Vec<&str> {
        text.split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .collect()
    }

    fn user(dn: &'static str, group: &'static str) -> Peer<'static> {
        Peer {
            dn: Some(dn),
            group: Some(group),
            ..Peer::default()
        }
    }

    fn host(dn: &'static str) -> Peer<'static> {
        Peer {
            dn: Some(dn),
            extra: ExtraCredentials::Hosts,
            ..Peer::default()
        }
    }

    const USER: &str = "/User/test/DN/CN=userA";
    const BAD_USER: &str = "/User/test/DN/CN=userB";
    const SUSPENDED: &str = "/User/test/DN/CN=userS";
    const HOST: &str = "/User/test/DN/CN=test.hostOK.ch";
    const BAD_HOST: &str = "/User/test/DN/CN=test.hostBad.ch";
    const UNKNOWN: &str = "/User/test/DN/CN=nobody";

    /// DIRAC's Test_AuthManager truth table, row by row.
    #[test]
    fn diracs_auth_manager_table() {
        let registry = registry();
        let cases: &[(&str, Peer<'static>, bool)] = &[
            ("Any", user(USER, "group_test"), true),
            ("Any", host(HOST), true),
            ("Any", user(UNKNOWN, "group_test"), true),
            ("Authenticated", user(USER, "group_test"), true),
            ("Authenticated", user(BAD_USER, "group_bad"), true),
            ("Authenticated", host(HOST), true),
            ("Authenticated", host(BAD_HOST), true),
            ("Authenticated", user(UNKNOWN, "group_test"), false),
            ("Authenticated", user(USER, "group_bad"), false),
            ("Authenticated", user(SUSPENDED, "group_test"), false),
            (
                "NormalUser,group:group_test",
                user(USER, "group_test"),
                true,
            ),
            (
                "NormalUser,group:group_test",
                user(USER, "group_test_other"),
                false,
            ),
            (
                "NormalUser,group:group_test",
                user(BAD_USER, "group_bad"),
                false,
            ),
            ("NormalUser,group:group_test", host(HOST), false),
            ("Authenticated,vo:testVO", user(USER, "group_test"), true),
            (
                "Authenticated,vo:testVO",
                user(USER, "group_test_other"),
                false,
            ),
            ("group:hosts", host(HOST), true),
            ("group:hosts", user(USER, "group_test"), false),
            ("TrustedHost,group:hosts", host(HOST), true),
            ("TrustedHost,group:hosts", host(BAD_HOST), false),
            ("TrustedHost", user(USER, "group_test"), false),
            ("ProxyManagement", user(USER, "group_test_other"), true),
            ("ProxyManagement", user(USER, "group_test"), false),
        ];
        for (rule, peer, expected) in cases {
            let result = authorize(&rules(rule), peer, &registry);
            assert_eq!(result.is_ok(), *expected, "{rule} for {peer:?}: {result:?}");
        }
    }

    #[test]
    fn rules_come_from_the_method_option_then_hardcoded_then_default_then_authenticated() {
        let mut configured = BTreeMap::new();
        assert_eq!(rules_for("echo", None, &configured), ["authenticated"]);
        configured.insert("Default".to_owned(), vec!["NormalUser".to_owned()]);
        assert_eq!(rules_for("echo", None, &configured), ["NormalUser"]);
        assert_eq!(rules_for("ping", Some(&["all"]), &configured), ["all"]);
        configured.insert("ping".to_owned(), vec!["CSAdministrator".to_owned()]);
        assert_eq!(
            rules_for("ping", Some(&["all"]), &configured),
            ["CSAdministrator"]
        );
        configured.insert("whoami".to_owned(), Vec::new());
        assert_eq!(
            rules_for("whoami", Some(&["all"]), &configured),
            ["all"],
            "empty = unset"
        );
    }

    #[test]
    fn the_caller_is_resolved_as_dirac_does() {
        let registry = registry();
        let caller = authorize(
            &rules("authenticated"),
            &user(USER, "group_test_other"),
            &registry,
        )
        .unwrap();
        assert_eq!(
            (caller.kind, caller.username.as_str()),
            (CallerKind::User, "userA")
        );
        assert_eq!(
            caller.properties,
            ["NormalUser", "ProxyManagement"],
            "all properties"
        );
        let caller = authorize(
            &rules("ProxyManagement"),
            &user(USER, "group_test_other"),
            &registry,
        )
        .unwrap();
        assert_eq!(
            caller.properties,
            ["ProxyManagement"],
            "only the matched ones"
        );

        let no_group = Peer {
            dn: Some(USER),
            ..Peer::default()
        };
        let caller = authorize(&rules("authenticated"), &no_group, &registry).unwrap();
        assert_eq!(caller.group, "group_test", "first group in sorted order");

        let caller = authorize(&rules("all"), &user(UNKNOWN, "group_test"), &registry).unwrap();
        assert_eq!(
            (caller.username.as_str(), caller.group.as_str()),
            (ANONYMOUS, VISITOR_GROUP)
        );
        let caller = authorize(&rules("authenticated"), &host(HOST), &registry).unwrap();
        assert_eq!(
            (caller.kind, caller.username.as_str()),
            (CallerKind::Host, "test.hostOK.ch")
        );
        assert_eq!(caller.group, HOSTS_GROUP);
    }

    #[test]
    fn only_trusted_hosts_may_forward_credentials() {
        let registry = registry();
        let forwarded = |dn| Peer {
            dn: Some(dn),
            extra: ExtraCredentials::Forwarded {
                dn: USER.into(),
                group: "group_test".into(),
            },
            ..Peer::default()
        };
        let caller = authorize(&rules("NormalUser"), &forwarded(HOST), &registry).unwrap();
        assert_eq!(caller.username, "userA");
        assert_eq!(caller.forwarded_by.as_deref(), Some("test.hostOK.ch"));
        for dn in [BAD_HOST, USER] {
            let result = authorize(&rules("all"), &forwarded(dn), &registry);
            assert_eq!(result, Err(Denied::BadExtraCredentials));
        }
        let invalid = Peer {
            dn: Some(USER),
            extra: ExtraCredentials::Invalid,
            ..Peer::default()
        };
        assert_eq!(
            authorize(&rules("all"), &invalid, &registry),
            Err(Denied::BadExtraCredentials)
        );
    }

    #[test]
    fn delegation_follows_diracs_properties_and_messages() {
        let registry = registry();
        let caller = |properties: &[&str], username: &str| Authorized {
            kind: CallerKind::User,
            dn: Some(USER.into()),
            username: username.into(),
            group: "group_test".into(),
            properties: properties.iter().map(|p| (*p).to_owned()).collect(),
            forwarded_by: None,
        };
        let check = |c: &Authorized, user: &str, group: &str| delegation(c, user, group, &registry);
        assert_eq!(
            check(&caller(&["FullDelegation"], "userA"), "userB", "group_bad"),
            Ok(Delegation::Full)
        );
        assert_eq!(
            check(
                &caller(&["LimitedDelegation"], "userA"),
                "userB",
                "group_bad"
            ),
            Ok(Delegation::Limited)
        );
        let private = caller(&["PrivateLimitedDelegation"], "userA");
        assert_eq!(
            check(&private, "userB", "group_test"),
            Err("You are not allowed to download any token")
        );
        assert_eq!(
            check(&private, "userA", "group_test"),
            Err("You can't download tokens for that group")
        );
        assert_eq!(
            check(&caller(&["NormalUser"], "userA"), "userA", "group_test"),
            Err("You can't get tokens!")
        );
    }

    #[test]
    fn banned_ips_limited_proxies_and_missing_certificates() {
        let registry = registry();
        let banned = Peer {
            ip: "192.0.2.66".parse().ok(),
            ..user(USER, "group_test")
        };
        assert!(matches!(
            authorize(&rules("all"), &banned, &registry),
            Err(Denied::BannedIp(_))
        ));
        let limited = Peer {
            limited_proxy: true,
            ..user(USER, "group_test")
        };
        assert_eq!(
            authorize(&rules("authenticated"), &limited, &registry),
            Err(Denied::LimitedProxy)
        );
        assert!(authorize(&rules("all"), &limited, &registry).is_ok());
        let nobody = Peer::default();
        assert_eq!(
            authorize(&rules("authenticated"), &nobody, &registry),
            Err(Denied::NoCredentials)
        );
        assert_eq!(
            authorize(&rules("all,group:group_test"), &nobody, &registry),
            Err(Denied::NoCredentials)
        );
        assert_eq!(
            authorize(&rules("all"), &nobody, &registry)
                .unwrap()
                .username,
            ANONYMOUS
        );
    }
}
