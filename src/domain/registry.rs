//! DIRAC's registry (users, groups, hosts, VOs) and the lookups of its
//! `ConfigurationSystem/Client/Helpers/Registry.py`, indexed for the request path. Reading it from
//! the CS is `config`'s job.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

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

/// What a registry is made of, in CS order.
#[derive(Clone, Debug, Default)]
pub struct RegistryParts {
    pub users: Vec<User>,
    pub groups: Vec<Group>,
    pub hosts: Vec<Host>,
    pub vos: Vec<Vo>,
    /// `/Registry/DefaultGroup`.
    pub default_group: Vec<String>,
    /// `/Registry/BannedIPs`.
    pub banned_ips: Vec<std::net::IpAddr>,
    /// `/DIRAC/VirtualOrganization`.
    pub virtual_organization: Option<String>,
}

impl Registry {
    /// Indexes `parts` for the lookups.
    pub fn new(parts: RegistryParts) -> Registry {
        let RegistryParts {
            users,
            groups,
            hosts,
            vos,
            default_group,
            banned_ips,
            virtual_organization,
        } = parts;
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
            default_group,
            banned_ips,
            virtual_organization,
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
