//! The service's configuration in the tests: a small typed builder of DIRAC CFG text
//! ([`Section`]), and [`TestConfig`], the tests' usual configuration built with it, which each
//! test adjusts (options, IdPs, users) instead of editing CFG text.

use std::fmt::{Display, Write as _};
use std::path::{Path, PathBuf};

use crate::pki::{HOST_DN, TestPki};
use crate::support::TestDb;

/// The TokenManager's own section, and its database's.
pub const SERVICE: &str = "Systems/Framework/Production/Services/TokenManager";
pub const DATABASE: &str = "Systems/Framework/Production/Databases/TokenDB";
/// The IdP every VO of the tests names.
pub const IDP: &str = "test-idp";

/// The DN of a test user, issued by the shared PKI's CA.
pub fn dn(name: &str) -> String {
    format!("/C=ch/O=DIRAC/OU=Test/CN={name}")
}

/// A CFG section: options and subsections, in the order they were first set.
#[derive(Clone, Debug, Default)]
pub struct Section {
    entries: Vec<(String, Entry)>,
}

#[derive(Clone, Debug)]
enum Entry {
    /// The first is written `name = value`, the others `name += value`.
    Values(Vec<String>),
    Section(Section),
}

impl Section {
    /// Sets option `name` to `value`, replacing any value it had (its place is kept).
    pub fn set(&mut self, name: &str, value: impl Display) -> &mut Self {
        let value = vec![value.to_string()];
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some((_, entry)) => *entry = Entry::Values(value),
            None => self.entries.push((name.to_owned(), Entry::Values(value))),
        }
        self
    }

    /// Adds `value` to option `name` as DIRAC's `name += value` (a second DN of a user), or
    /// sets it.
    pub fn add(&mut self, name: &str, value: impl Display) -> &mut Self {
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some((_, Entry::Values(values))) => values.push(value.to_string()),
            Some(_) => panic!("{name} is a section, not an option"),
            None => return self.set(name, value),
        }
        self
    }

    /// Appends `item` to the comma-separated list option `name` (a group's `Users`).
    pub fn push(&mut self, name: &str, item: &str) -> &mut Self {
        match self.value(name) {
            Some(list) if !list.is_empty() => self.set(name, format!("{list}, {item}")),
            _ => self.set(name, item),
        }
    }

    /// Removes option or subsection `name`.
    pub fn remove(&mut self, name: &str) -> &mut Self {
        self.entries.retain(|(n, _)| n != name);
        self
    }

    /// The value of option `name` (its first, without those added by [`Section::add`]).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.entries.iter().find_map(|(n, entry)| match entry {
            Entry::Values(values) if n == name => values.first().map(String::as_str),
            _ => None,
        })
    }

    /// The subsection at `path` (`A/B/C`), created empty (after the existing entries) if
    /// missing.
    pub fn section(&mut self, path: &str) -> &mut Section {
        path.split('/').fold(self, |section, name| {
            let index = match section.entries.iter().position(|(n, _)| n == name) {
                Some(index) => index,
                None => {
                    let entry = Entry::Section(Section::default());
                    section.entries.push((name.to_owned(), entry));
                    section.entries.len() - 1
                }
            };
            match &mut section.entries[index].1 {
                Entry::Section(child) => child,
                Entry::Values(_) => panic!("{name} is an option, not a section"),
            }
        })
    }

    /// The CFG text of this section's contents, indented by `depth` levels.
    fn render(&self, depth: usize, out: &mut String) {
        let indent = "  ".repeat(depth);
        for (name, entry) in &self.entries {
            match entry {
                Entry::Values(values) => {
                    for (i, value) in values.iter().enumerate() {
                        let operator = if i == 0 { "=" } else { "+=" };
                        let _ = writeln!(out, "{indent}{name} {operator} {value}");
                    }
                }
                Entry::Section(child) => {
                    let _ = writeln!(out, "{indent}{name}\n{indent}{{");
                    child.render(depth + 1, out);
                    let _ = writeln!(out, "{indent}}}");
                }
            }
        }
    }

    /// The CFG text of this section's contents, as the top level of a file.
    pub fn text(&self) -> String {
        let mut out = String::new();
        self.render(0, &mut out);
        out
    }
}

/// The users of the tests, one per kind of caller of the authorization matrix, and their group.
/// Every user has the ID `id-<name>` (a second DN `/O=DIRAC/CN=id-<name>`).
const USERS: [(&str, &str); 8] = [
    ("full", "g_full"),
    ("limited", "g_limited"),
    ("private", "g_private"),
    ("manager", "g_manager"),
    ("plain", "g_user"),
    ("suspended", "g_user"),
    ("admin", "g_admin"),
    ("victim", "g_user"),
];

/// The groups of the tests (all in VO dteam) and their properties.
const GROUPS: [(&str, &str); 6] = [
    ("g_user", "NormalUser"),
    ("g_full", "NormalUser, FullDelegation"),
    ("g_limited", "LimitedDelegation"),
    ("g_private", "PrivateLimitedDelegation"),
    ("g_manager", "ProxyManagement"),
    ("g_admin", "CSAdministrator"),
];

/// The tests' usual configuration, its files in the test's own temporary directory `dir`:
/// one service on 127.0.0.1 with every port 0 (free ports), the shared PKI's host certificate
/// and CA, the keyring `dir/keyring` (not created here), the users and groups of [`USERS`] and
/// [`GROUPS`], the host `localhost` (TrustedHost), 127.0.0.2 banned, and VO dteam whose IdP
/// [`IDP`] nothing answers (`https://127.0.0.1:1/`) until a test points it at the test IdP.
#[derive(Clone)]
pub struct TestConfig {
    dir: PathBuf,
    root: Section,
}

impl TestConfig {
    pub fn new(dir: &Path) -> Self {
        let mut root = Section::default();
        let dirac = root.section("DIRAC");
        dirac.set("Setup", "Test");
        dirac.section("Setups/Test").set("Framework", "Production");
        let files = crate::pki::PkiFiles::in_dir(dir);
        dirac
            .section("Security")
            .set("CertFile", files.cert.display())
            .set("KeyFile", files.key.display())
            .set("CALocation", files.ca_dir.display());
        root.section(SERVICE)
            .set("ListenAddress", "127.0.0.1")
            .set("Port", 0)
            .set("HTTPSPort", 0)
            .set("MetricsPort", 0)
            .set("EncryptionKeyFile", dir.join("keyring").display());
        root.section(DATABASE);
        let registry = root.section("Registry");
        registry
            .set("DefaultGroup", "g_user")
            .set("BannedIPs", "127.0.0.2");
        registry.section("Users");
        for (group, properties) in GROUPS {
            registry
                .section("Groups")
                .section(group)
                .set("Properties", properties)
                .set("VO", "dteam");
        }
        registry
            .section("Hosts/localhost")
            .set("DN", HOST_DN)
            .set("Properties", "TrustedHost");
        registry.section("VO/dteam").set("IdProvider", IDP);
        root.section("Resources/IdProviders")
            .section(IDP)
            .set("issuer", "https://127.0.0.1:1/")
            .set("client_id", "tm-test");
        let mut config = Self {
            dir: dir.to_owned(),
            root,
        };
        for (user, group) in USERS {
            config.user(user, group);
        }
        config
            .section("Registry/Users/suspended")
            .set("Suspended", "dteam");
        config
    }

    /// [`TestConfig::new`] in `db`'s directory, on `db`.
    pub fn on(db: &TestDb) -> Self {
        let mut config = Self::new(db.dir.path());
        config.database().set("URL", &db.url);
        config
    }

    /// The TokenManager's section ([`SERVICE`]).
    pub fn service(&mut self) -> &mut Section {
        self.root.section(SERVICE)
    }

    /// The TokenDB section ([`DATABASE`]).
    pub fn database(&mut self) -> &mut Section {
        self.root.section(DATABASE)
    }

    /// `/Resources/IdProviders/<name>`.
    pub fn idp(&mut self, name: &str) -> &mut Section {
        self.root.section("Resources/IdProviders").section(name)
    }

    /// Points [`IDP`] at the test IdP `issuer` as client `tm-basic` (audiences as the
    /// `resource` parameter), allowing the audiences `allowed`.
    pub fn test_idp(&mut self, issuer: &str, allowed: &str) -> &mut Section {
        self.idp(IDP)
            .set("issuer", issuer)
            .set("client_id", "tm-basic")
            .set("client_secret", crate::idp::client_secret("tm-basic"))
            .set("audience_parameter", "resource")
            .set("allowed_audiences", allowed)
    }

    /// The section at `path` from the top (`DIRAC/Configuration`, `Registry/Groups/g_full`).
    pub fn section(&mut self, path: &str) -> &mut Section {
        self.root.section(path)
    }

    /// Removes the top-level section `name`.
    pub fn remove(&mut self, name: &str) -> &mut Self {
        self.root.remove(name);
        self
    }

    /// Adds user `name` (DNs [`dn`]`(name)` and `/O=DIRAC/CN=id-<name>`) to `group`: its
    /// section.
    pub fn user(&mut self, name: &str, group: &str) -> &mut Section {
        self.section(&format!("Registry/Groups/{group}"))
            .push("Users", name);
        self.section(&format!("Registry/Users/{name}"))
            .set("DN", dn(name))
            .add("DN", format!("/O=DIRAC/CN=id-{name}"))
    }

    /// The CFG text.
    pub fn text(&self) -> String {
        self.root.text()
    }

    /// The configuration file's path if written as `name` (see [`TestConfig::write`]).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes the configuration as `name` in its directory, and the PKI's files there unless
    /// they already are: the file's path.
    pub fn write(&self, name: &str) -> PathBuf {
        TestPki::shared().write_files(&self.dir);
        let path = self.path(name);
        std::fs::write(&path, self.text()).unwrap();
        path
    }
}

#[test]
fn sections_render_as_dirac_cfg() {
    let mut root = Section::default();
    root.section("A/B").set("x", 1).add("x", 2).set("y", "v");
    root.section("A")
        .set("z", "w")
        .push("list", "a")
        .push("list", "b");
    root.section("A/B").set("y", "replaced");
    root.section("C");
    assert_eq!(
        root.text(),
        "A\n{\n  B\n  {\n    x = 1\n    x += 2\n    y = replaced\n  }\n  z = w\n  list = a, b\n}\nC\n{\n}\n"
    );
    root.section("A").remove("B");
    assert_eq!(root.section("A").value("list"), Some("a, b"));
    assert_eq!(root.text(), "A\n{\n  z = w\n  list = a, b\n}\nC\n{\n}\n");
}

#[test]
fn the_usual_configuration_is_what_the_service_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = TestConfig::new(dir.path());
    config.user("newcomer", "g_user");
    let path = config.write("tm.cfg");
    let cfg = tokenmanager::config::cfg::Section::load_file(&path).unwrap();
    let users = cfg.get("/Registry/Groups/g_user/Users").unwrap();
    assert_eq!(users, "plain, suspended, victim, newcomer");
    assert_eq!(
        cfg.get("/Registry/Users/suspended/Suspended"),
        Some("dteam")
    );
    assert!(Path::new(cfg.get("/DIRAC/Security/KeyFile").unwrap()).is_file());
}
