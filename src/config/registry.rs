//! Reads `/Registry` (and `/DIRAC/VirtualOrganization`) from the merged CS into the domain's
//! [`Registry`].

use std::collections::BTreeMap;

use super::cfg::Section;
use crate::domain::registry::{Group, Host, Registry, RegistryParts, User, Vo};

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

/// The registry of the merged CS (`/Registry` and `/DIRAC/VirtualOrganization`).
pub fn registry_from_cfg(root: &Section) -> Registry {
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
    Registry::new(RegistryParts {
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
    })
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
        registry_from_cfg(&root)
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
        assert_eq!(registry_from_cfg(&root).default_group(), ["user"]);
        let root = Section::parse("Registry\n{\nDefaultGroup =\n}", Path::new("r.cfg")).unwrap();
        assert!(registry_from_cfg(&root).default_group().is_empty());
        assert!(registry_from_cfg(&Section::new()).users().is_empty());
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
