//! `/Registry` and the helpers of DIRAC's `ConfigurationSystem/Client/Helpers/Registry.py`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::cfg::Section;

/// Prefix of the DN that wraps an IdP user ID (`wrapIDAsDN`).
pub const ID_DN_PREFIX: &str = "/O=DIRAC/CN=";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// X.509 DNs and IdP IDs wrapped as `/O=DIRAC/CN=<id>`.
    pub dns: Vec<String>,
    pub default_group: Vec<String>,
    /// VOs for which the user is suspended.
    pub suspended: Vec<String>,
    pub email: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub users: Vec<String>,
    pub properties: Vec<String>,
    pub vo: Option<String>,
    pub idp_role: Option<String>,
    pub voms_role: Option<String>,
    /// Every other option of the group section.
    pub other: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub dns: Vec<String>,
    pub properties: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vo {
    pub name: String,
    pub id_provider: Option<String>,
    pub vo_admin: Option<String>,
    pub vo_admin_group: Option<String>,
    pub voms_name: Option<String>,
    /// Every other option of the VO section.
    pub other: BTreeMap<String, String>,
}

/// The registry, in CS order, with DIRAC's lookup helpers.
#[derive(Clone, Default)]
pub struct Registry {
    users: Vec<User>,
    groups: Vec<Group>,
    hosts: Vec<Host>,
    vos: Vec<Vo>,
    default_group: Vec<String>,
    /// Entries that are not IP addresses are dropped with a warning at load.
    banned_ips: Vec<std::net::IpAddr>,
    virtual_organization: Option<String>,
    // Looked up on every request; first definition in CS order wins, as in DIRAC's scans.
    user_by_name: HashMap<String, usize>,
    user_by_dn: HashMap<String, usize>,
    group_by_name: HashMap<String, usize>,
    host_by_name: HashMap<String, usize>,
    host_by_dn: HashMap<String, usize>,
    vo_by_name: HashMap<String, usize>,
    /// The groups whose `Users` list each user: a membership check must not scan a VO's
    /// thousands of members on every call.
    groups_by_user: HashMap<String, Vec<usize>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("users", &self.users)
            .field("groups", &self.groups)
            .field("hosts", &self.hosts)
            .field("vos", &self.vos)
            .field("default_group", &self.default_group)
            .field("banned_ips", &self.banned_ips)
            .field("virtual_organization", &self.virtual_organization)
            .finish_non_exhaustive()
    }
}

fn text(section: &Section, option: &str) -> Option<String> {
    section
        .get(option)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn list(section: &Section, option: &str) -> Vec<String> {
    section.get_list(option).unwrap_or_default()
}

fn others(section: &Section, known: &[&str]) -> BTreeMap<String, String> {
    section
        .options()
        .filter(|(name, _, _)| !known.contains(name))
        .map(|(name, value, _)| (name.to_owned(), value.to_owned()))
        .collect()
}

fn subsections<'a, T>(
    root: &'a Section,
    path: &str,
    build: impl Fn(&'a str, &'a Section) -> T,
) -> Vec<T> {
    root.section(path)
        .map(|s| s.sections().map(|(name, sec)| build(name, sec)).collect())
        .unwrap_or_default()
}

fn index_by<T>(items: &[T], keys: impl Fn(&T) -> Vec<&str>) -> HashMap<String, usize> {
    let mut index = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        for key in keys(item) {
            index.entry(key.to_owned()).or_insert(i);
        }
    }
    index
}

fn groups_by_user(groups: &[Group]) -> HashMap<String, Vec<usize>> {
    let mut index: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, group) in groups.iter().enumerate() {
        for user in &group.users {
            let listed_in = index.entry(user.clone()).or_default();
            if listed_in.last() != Some(&i) {
                listed_in.push(i);
            }
        }
    }
    index
}

impl Registry {
    /// Builds the registry from the merged CS (`/Registry` and `/DIRAC/VirtualOrganization`).
    pub fn from_cfg(root: &Section) -> Registry {
        let users = subsections(root, "/Registry/Users", |name, s| User {
            name: name.to_owned(),
            dns: list(s, "DN"),
            default_group: list(s, "DefaultGroup"),
            suspended: list(s, "Suspended"),
            email: text(s, "Email"),
        });
        let groups = subsections(root, "/Registry/Groups", |name, s| Group {
            name: name.to_owned(),
            users: list(s, "Users"),
            properties: list(s, "Properties"),
            vo: text(s, "VO"),
            idp_role: text(s, "IdPRole"),
            voms_role: text(s, "VOMSRole"),
            other: others(s, &["Users", "Properties", "VO", "IdPRole", "VOMSRole"]),
        });
        let hosts = subsections(root, "/Registry/Hosts", |name, s| Host {
            name: name.to_owned(),
            dns: list(s, "DN"),
            properties: list(s, "Properties"),
        });
        let vos = subsections(root, "/Registry/VO", |name, s| Vo {
            name: name.to_owned(),
            id_provider: text(s, "IdProvider"),
            vo_admin: text(s, "VOAdmin"),
            vo_admin_group: text(s, "VOAdminGroup"),
            voms_name: text(s, "VOMSName"),
            other: others(s, &["IdProvider", "VOAdmin", "VOAdminGroup", "VOMSName"]),
        });
        Registry {
            user_by_name: index_by(&users, |u| vec![u.name.as_str()]),
            user_by_dn: index_by(&users, |u| u.dns.iter().map(String::as_str).collect()),
            group_by_name: index_by(&groups, |g| vec![g.name.as_str()]),
            host_by_name: index_by(&hosts, |h| vec![h.name.as_str()]),
            host_by_dn: index_by(&hosts, |h| h.dns.iter().map(String::as_str).collect()),
            vo_by_name: index_by(&vos, |v| vec![v.name.as_str()]),
            groups_by_user: groups_by_user(&groups),
            users,
            groups,
            hosts,
            vos,
            default_group: root
                .get_list("/Registry/DefaultGroup")
                .unwrap_or_else(|| vec!["user".to_owned()]),
            banned_ips: root
                .get_list("/Registry/BannedIPs")
                .unwrap_or_default()
                .iter()
                .filter_map(|entry| {
                    let parsed = entry.parse().ok();
                    if parsed.is_none() {
                        tracing::warn!(entry, "/Registry/BannedIPs: not an IP address (ignored)");
                    }
                    parsed
                })
                .collect(),
            virtual_organization: root
                .get("/DIRAC/VirtualOrganization")
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
        }
    }

    pub fn users(&self) -> &[User] {
        &self.users
    }

    /// Groups in CS order (`getAllGroups`).
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn vos(&self) -> &[Vo] {
        &self.vos
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.user_by_name.get(name).map(|&i| &self.users[i])
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.group_by_name.get(name).map(|&i| &self.groups[i])
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.host_by_name.get(name).map(|&i| &self.hosts[i])
    }

    pub fn vo(&self, name: &str) -> Option<&Vo> {
        self.vo_by_name.get(name).map(|&i| &self.vos[i])
    }

    /// `/Registry/DefaultGroup` (default `["user"]`).
    pub fn default_group(&self) -> &[String] {
        &self.default_group
    }

    pub fn banned_ips(&self) -> &[std::net::IpAddr] {
        &self.banned_ips
    }

    /// `/DIRAC/VirtualOrganization` of a single-VO installation.
    pub fn virtual_organization(&self) -> Option<&str> {
        self.virtual_organization.as_deref()
    }

    /// `getUsernameForDN`: the first user (CS order) listing `dn` (surrounding blanks ignored).
    pub fn username_for_dn(&self, dn: &str) -> Option<&str> {
        self.user_by_dn
            .get(dn.trim())
            .map(|&i| self.users[i].name.as_str())
    }

    /// `getHostnameForDN`.
    pub fn hostname_for_dn(&self, dn: &str) -> Option<&str> {
        self.host_by_dn
            .get(dn.trim())
            .map(|&i| self.hosts[i].name.as_str())
    }

    /// `getGroupsForUser`: groups whose `Users` list the user, sorted; empty if none.
    pub fn groups_for_user(&self, user: &str) -> Vec<&str> {
        let mut groups: Vec<&str> = self
            .groups_by_user
            .get(user)
            .into_iter()
            .flatten()
            .map(|&i| self.groups[i].name.as_str())
            .collect();
        groups.sort_unstable();
        groups.dedup();
        groups
    }

    /// Whether `group`'s `Users` list `user`.
    pub fn is_member(&self, group: &str, user: &str) -> bool {
        match (self.group_by_name.get(group), self.groups_by_user.get(user)) {
            (Some(group), Some(listed_in)) => listed_in.contains(group),
            _ => false,
        }
    }

    /// `findDefaultGroupForUser`: the first of the user's `DefaultGroup` then
    /// `/Registry/DefaultGroup` the user belongs to, else the user's first group in sorted order.
    pub fn default_group_for_user(&self, user: &str) -> Option<&str> {
        let groups = self.groups_for_user(user);
        let preferred = self
            .user(user)
            .map(|u| u.default_group.as_slice())
            .unwrap_or_default()
            .iter()
            .chain(&self.default_group);
        for wanted in preferred {
            if let Some(group) = groups.iter().find(|g| **g == wanted) {
                return Some(group);
            }
        }
        groups.first().copied()
    }

    /// `getVOForGroup`: `/DIRAC/VirtualOrganization` if set, whatever the group, else the VO of
    /// the group.
    pub fn vo_for_group(&self, group: &str) -> Option<&str> {
        self.virtual_organization()
            .or_else(|| self.group(group)?.vo.as_deref())
    }

    /// `getIdPForGroup`: the `IdProvider` of the group's VO.
    pub fn idp_for_group(&self, group: &str) -> Option<&str> {
        self.vo(self.vo_for_group(group)?)?.id_provider.as_deref()
    }

    /// `getPropertiesForGroup`; empty for an unknown group.
    pub fn properties_for_group(&self, group: &str) -> &[String] {
        self.group(group)
            .map(|g| g.properties.as_slice())
            .unwrap_or_default()
    }

    /// `getPropertiesForHost`; empty for an unknown host.
    pub fn properties_for_host(&self, host: &str) -> &[String] {
        self.host(host)
            .map(|h| h.properties.as_slice())
            .unwrap_or_default()
    }

    /// The IdP user IDs of a user: its DNs starting with [`ID_DN_PREFIX`], without the prefix
    /// (`getIDFromDN`).
    pub fn id_dns_for_user(&self, user: &str) -> Vec<&str> {
        self.user(user)
            .map(|u| {
                u.dns
                    .iter()
                    .filter_map(|dn| dn.strip_prefix(ID_DN_PREFIX))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CS: &str = r#"
Registry
{
  DefaultGroup = dteam_user, other_user
  BannedIPs = 10.0.0.1, 10.0.0.2
  Users
  {
    alice
    {
      DN = /C=ch/O=Org/CN=Alice
      DN += /O=DIRAC/CN=8d3b2c1e-0000-4000-8000-123456789abc
      DefaultGroup = dteam_admin
      Suspended = lhcb
      Email = alice@example.org
    }
    bob
    {
      DN = /C=ch/O=Org/CN=Bob
      Email =
    }
    shadow
    {
      DN = /C=ch/O=Org/CN=Alice
    }
    carol
    {
      DN = /C=ch/O=Org/CN=Carol
    }
  }
  Groups
  {
    zz_user
    {
      Users = bob, alice
      Properties = NormalUser
      VO = zz
    }
    dteam_user
    {
      Users = alice, bob
      Properties = NormalUser
      VO = dteam
      IdPRole = wlcg.groups:/dteam/user
      VOMSRole = /dteam
      AutoUploadProxy = True
    }
    dteam_admin
    {
      Users = alice
      Properties = FullDelegation, ProxyManagement
      VO = dteam
    }
    novo
    {
      Users = carol
    }
  }
  Hosts
  {
    dirac.example.org
    {
      DN = /C=ch/O=Org/CN=dirac.example.org
      Properties = TrustedHost, FullDelegation
    }
  }
  VO
  {
    dteam
    {
      IdProvider = IAM-dteam
      VOAdmin = alice
      VOAdminGroup = dteam_admin
      VOMSName = dteam
      SubmitPools = x
    }
    zz
    {
      VOMSName = zz
    }
  }
}
"#;

    fn registry(extra: &str) -> Registry {
        let root = Section::parse(&format!("{CS}{extra}"), Path::new("r.cfg")).unwrap();
        Registry::from_cfg(&root)
    }

    #[test]
    fn reads_users_groups_hosts_and_vos() {
        let reg = registry("");
        let alice = reg.user("alice").unwrap();
        assert_eq!(alice.suspended, ["lhcb"]);
        assert_eq!(alice.email.as_deref(), Some("alice@example.org"));
        assert_eq!(reg.user("bob").unwrap().email, None);
        assert_eq!(
            reg.groups()
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>(),
            ["zz_user", "dteam_user", "dteam_admin", "novo"]
        );
        let g = reg.group("dteam_user").unwrap();
        assert_eq!(g.idp_role.as_deref(), Some("wlcg.groups:/dteam/user"));
        assert_eq!(g.voms_role.as_deref(), Some("/dteam"));
        assert_eq!(
            g.other,
            BTreeMap::from([("AutoUploadProxy".to_owned(), "True".to_owned())])
        );
        let vo = reg.vo("dteam").unwrap();
        assert_eq!(vo.vo_admin.as_deref(), Some("alice"));
        assert_eq!(vo.vo_admin_group.as_deref(), Some("dteam_admin"));
        assert_eq!(vo.voms_name.as_deref(), Some("dteam"));
        assert_eq!(vo.other.get("SubmitPools").map(String::as_str), Some("x"));
        assert_eq!(reg.default_group(), ["dteam_user", "other_user"]);
        assert_eq!(
            reg.banned_ips(),
            [
                "10.0.0.1".parse::<std::net::IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
        assert_eq!(reg.virtual_organization(), None);
        assert_eq!(
            reg.properties_for_host("dirac.example.org"),
            ["TrustedHost", "FullDelegation"]
        );
    }

    #[test]
    fn default_group_defaults_to_user_unless_set_even_empty() {
        let root = Section::parse("Registry\n{\n}", Path::new("r.cfg")).unwrap();
        assert_eq!(Registry::from_cfg(&root).default_group(), ["user"]);
        let root = Section::parse("Registry\n{\nDefaultGroup =\n}", Path::new("r.cfg")).unwrap();
        assert!(Registry::from_cfg(&root).default_group().is_empty());
        assert!(Registry::from_cfg(&Section::new()).users().is_empty());
    }

    #[test]
    fn dn_lookups_take_the_first_match_in_cs_order() {
        let reg = registry("");
        assert_eq!(reg.username_for_dn(" /C=ch/O=Org/CN=Alice "), Some("alice"));
        assert_eq!(
            reg.username_for_dn("/O=DIRAC/CN=8d3b2c1e-0000-4000-8000-123456789abc"),
            Some("alice")
        );
        assert_eq!(reg.username_for_dn("/C=ch/O=Org/CN=alice"), None);
        assert_eq!(
            reg.hostname_for_dn("/C=ch/O=Org/CN=dirac.example.org"),
            Some("dirac.example.org")
        );
        assert_eq!(reg.hostname_for_dn("/C=ch/O=Org/CN=Alice"), None);
    }

    #[test]
    fn groups_for_user_are_sorted() {
        let reg = registry("");
        assert_eq!(
            reg.groups_for_user("alice"),
            ["dteam_admin", "dteam_user", "zz_user"]
        );
        assert!(reg.groups_for_user("nobody").is_empty());
        for group in reg.groups() {
            for user in reg.users() {
                assert_eq!(
                    reg.is_member(&group.name, &user.name),
                    group.users.contains(&user.name),
                    "{} in {}",
                    user.name,
                    group.name
                );
            }
        }
        assert!(!reg.is_member("no-such-group", "alice"));
    }

    #[test]
    fn default_group_follows_find_default_group_for_user() {
        let reg = registry("");
        // The user's own DefaultGroup first.
        assert_eq!(reg.default_group_for_user("alice"), Some("dteam_admin"));
        // Then /Registry/DefaultGroup.
        assert_eq!(reg.default_group_for_user("bob"), Some("dteam_user"));
        // Then the first group in sorted order.
        assert_eq!(reg.default_group_for_user("carol"), Some("novo"));
        assert_eq!(reg.default_group_for_user("shadow"), None);
    }

    #[test]
    fn vo_and_idp_for_group() {
        let reg = registry("");
        assert_eq!(reg.vo_for_group("dteam_user"), Some("dteam"));
        assert_eq!(reg.vo_for_group("novo"), None);
        assert_eq!(reg.vo_for_group("unknown"), None);
        assert_eq!(reg.idp_for_group("dteam_admin"), Some("IAM-dteam"));
        assert_eq!(reg.idp_for_group("zz_user"), None);

        let single = registry("DIRAC\n{\nVirtualOrganization = dteam\n}");
        assert_eq!(single.virtual_organization(), Some("dteam"));
        assert_eq!(single.vo_for_group("zz_user"), Some("dteam"));
        assert_eq!(single.vo_for_group("unknown"), Some("dteam"));
        assert_eq!(single.idp_for_group("novo"), Some("IAM-dteam"));
    }

    #[test]
    fn properties_and_ids() {
        let reg = registry("");
        assert_eq!(
            reg.properties_for_group("dteam_admin"),
            ["FullDelegation", "ProxyManagement"]
        );
        assert!(reg.properties_for_group("unknown").is_empty());
        assert_eq!(
            reg.id_dns_for_user("alice"),
            ["8d3b2c1e-0000-4000-8000-123456789abc"]
        );
        assert!(reg.id_dns_for_user("bob").is_empty());
        assert!(reg.id_dns_for_user("unknown").is_empty());
    }

    #[test]
    fn debug_lists_data_not_indexes() {
        let debug = format!("{:?}", registry(""));
        assert!(debug.contains("alice@example.org"));
        assert!(!debug.contains("user_by_dn"));
    }
}
