//! Options declared once: a declaration's name, kind, default and description drive reading the
//! option into its typed value, the warnings about entries nobody declared, and the tables of
//! config/README.md (a test compares them with [`render_table`]).

use std::convert::Infallible;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::ConfigError;
use super::cfg::{CfgError, Entry, Origin, Section, parse_bool, split_list};

/// Declares options: each `///` comment is the option's description in the documentation,
/// `declare` takes the remaining arguments, and `$table` lists them all in declaration order.
macro_rules! declare_options {
    (
        $(#[$table_meta:meta])* $vis:vis static $table:ident;
        $(
            $(#[doc = $doc:literal])+
            $const_vis:vis const $const:ident: $ty:ty = $name:literal, $($arg:expr),+;
        )+
    ) => {
        $(
            $(#[doc = $doc])+
            $const_vis const $const: $ty = <$ty>::declare($name, $($arg),+, concat!($($doc),+));
        )+
        $(#[$table_meta])*
        $vis static $table: &[&dyn $crate::config::options::Declared] = &[$(&$const),+];
    };
}
pub(super) use declare_options;

/// Whether a declared name is an option or a section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Option,
    Section,
}

impl EntryKind {
    pub fn of(entry: &Entry) -> Self {
        match entry {
            Entry::Option { .. } => Self::Option,
            Entry::Section(..) => Self::Section,
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            Self::Option => "option",
            Self::Section => "section",
        }
    }

    pub fn with_article(self) -> &'static str {
        match self {
            Self::Option => "an option",
            Self::Section => "a section",
        }
    }
}

/// What every declaration tells the warnings and the documentation.
pub trait Declared: Sync {
    fn name(&self) -> &'static str;
    fn entry_kind(&self) -> EntryKind;
    /// The type column of the documentation.
    fn type_label(&self) -> &'static str;
    /// The default column of the documentation.
    fn default_doc(&self) -> String;
    fn description(&self) -> &'static str;
}

/// How an option's text becomes its value, and what the documentation calls it.
pub trait Kind: Sync {
    type Value;
    /// The default as declared, shown in the documentation as written.
    type Default: Sync;
    fn label(&self) -> &'static str;
    /// `Ok(None)`: as if the option were unset. `Err` is the reason of a [`CfgError::BadValue`].
    fn parse(&self, text: &str, origin: &Origin) -> Result<Option<Self::Value>, String>;
    fn value_of(&self, default: &Self::Default) -> Self::Value;
    fn show(&self, default: &Self::Default) -> String;
}

/// An option whose default is a value.
pub struct Setting<K: Kind> {
    pub name: &'static str,
    pub kind: K,
    pub default: K::Default,
    pub description: &'static str,
}

impl<K: Kind> Setting<K> {
    /// The value found, else the default.
    pub fn or_default(&self, found: Option<K::Value>) -> K::Value {
        found.unwrap_or_else(|| self.kind.value_of(&self.default))
    }

    pub const fn declare(
        name: &'static str,
        kind: K,
        default: K::Default,
        description: &'static str,
    ) -> Self {
        Self {
            name,
            kind,
            default,
            description,
        }
    }
}

/// An option without a default value: the reader decides what unset means, and `unset` says it
/// in the documentation.
pub struct Optional<K: Kind> {
    pub name: &'static str,
    pub kind: K,
    pub unset: &'static str,
    pub description: &'static str,
}

impl<K: Kind> Optional<K> {
    pub const fn declare(
        name: &'static str,
        kind: K,
        unset: &'static str,
        description: &'static str,
    ) -> Self {
        Self {
            name,
            kind,
            unset,
            description,
        }
    }
}

/// A section, read by code of its own.
pub struct SubSection {
    pub name: &'static str,
    pub unset: &'static str,
    pub description: &'static str,
}

impl SubSection {
    pub const fn declare(
        name: &'static str,
        unset: &'static str,
        description: &'static str,
    ) -> Self {
        Self {
            name,
            unset,
            description,
        }
    }
}

impl<K: Kind> Declared for Setting<K> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn entry_kind(&self) -> EntryKind {
        EntryKind::Option
    }
    fn type_label(&self) -> &'static str {
        self.kind.label()
    }
    fn default_doc(&self) -> String {
        self.kind.show(&self.default)
    }
    fn description(&self) -> &'static str {
        self.description
    }
}

impl<K: Kind> Declared for Optional<K> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn entry_kind(&self) -> EntryKind {
        EntryKind::Option
    }
    fn type_label(&self) -> &'static str {
        self.kind.label()
    }
    fn default_doc(&self) -> String {
        self.unset.to_owned()
    }
    fn description(&self) -> &'static str {
        self.description
    }
}

impl Declared for SubSection {
    fn name(&self) -> &'static str {
        self.name
    }
    fn entry_kind(&self) -> EntryKind {
        EntryKind::Section
    }
    fn type_label(&self) -> &'static str {
        "section"
    }
    fn default_doc(&self) -> String {
        self.unset.to_owned()
    }
    fn description(&self) -> &'static str {
        self.description
    }
}

/// The markdown table of `options`, as config/README.md shows it.
pub fn render_table(options: &[&dyn Declared]) -> String {
    let mut table = String::from("| option | type | default | meaning |\n|---|---|---|---|\n");
    for option in options {
        table.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            option.name(),
            option.type_label(),
            option.default_doc(),
            option.description().trim()
        ));
    }
    table
}

/// Reads declared options from one section; errors name the option by `path`/name.
pub struct Reader<'a> {
    pub section: &'a Section,
    pub path: &'a str,
}

impl Reader<'_> {
    pub fn path_of(&self, name: &str) -> String {
        format!("{}/{name}", self.path)
    }

    fn read<K: Kind>(&self, name: &str, kind: &K) -> Result<Option<K::Value>, ConfigError> {
        let Some((text, origin)) = self.section.get_with_origin(name) else {
            return Ok(None);
        };
        kind.parse(text, origin).map_err(|reason| {
            CfgError::BadValue {
                origin: origin.clone(),
                path: self.path_of(name),
                reason,
            }
            .into()
        })
    }

    /// The option's value, else its default.
    pub fn get<K: Kind>(&self, setting: &Setting<K>) -> Result<K::Value, ConfigError> {
        Ok(setting.or_default(self.read(setting.name, &setting.kind)?))
    }

    pub fn optional<K: Kind>(&self, option: &Optional<K>) -> Result<Option<K::Value>, ConfigError> {
        self.read(option.name, &option.kind)
    }

    pub fn section(&self, section: &SubSection) -> Option<&Section> {
        self.section.section(section.name)
    }
}

fn number<T: FromStr>(text: &str, expected: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("invalid value, expected {expected}"))
}

/// What a number 0 means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zero {
    Allowed,
    Refused,
    /// As if the option were unset.
    MeansDefault,
}

impl Zero {
    fn check<T: PartialEq + Default>(self, n: T) -> Result<Option<T>, String> {
        match self {
            Self::Refused if n == T::default() => Err("must be at least 1".into()),
            Self::MeansDefault if n == T::default() => Ok(None),
            _ => Ok(Some(n)),
        }
    }
}

pub struct Port;

impl Kind for Port {
    type Value = u16;
    type Default = u16;
    fn label(&self) -> &'static str {
        "port"
    }
    fn parse(&self, text: &str, _: &Origin) -> Result<Option<u16>, String> {
        number(text, "an integer from 0 to 65535").map(Some)
    }
    fn value_of(&self, default: &u16) -> u16 {
        *default
    }
    fn show(&self, default: &u16) -> String {
        default.to_string()
    }
}

/// An IP address; `example` completes "expected an IP address such as …".
pub struct Address(pub &'static str);

impl Kind for Address {
    type Value = IpAddr;
    type Default = IpAddr;
    fn label(&self) -> &'static str {
        "IP address"
    }
    fn parse(&self, text: &str, _: &Origin) -> Result<Option<IpAddr>, String> {
        number(text, &format!("an IP address such as {}", self.0)).map(Some)
    }
    fn value_of(&self, default: &IpAddr) -> IpAddr {
        *default
    }
    fn show(&self, default: &IpAddr) -> String {
        format!("`{default}`")
    }
}

/// A count (of connections, threads, descriptors).
pub struct Count(pub Zero);

impl Kind for Count {
    type Value = u32;
    type Default = u32;
    fn label(&self) -> &'static str {
        match self.0 {
            Zero::Refused => "integer ≥ 1",
            Zero::Allowed | Zero::MeansDefault => "integer",
        }
    }
    fn parse(&self, text: &str, _: &Origin) -> Result<Option<u32>, String> {
        self.0
            .check(number(text, "an integer from 0 to 4294967295")?)
    }
    fn value_of(&self, default: &u32) -> u32 {
        *default
    }
    fn show(&self, default: &u32) -> String {
        default.to_string()
    }
}

/// A size in bytes; 0 allowed.
pub struct Bytes;

impl Kind for Bytes {
    type Value = u64;
    type Default = u64;
    fn label(&self) -> &'static str {
        "integer"
    }
    fn parse(&self, text: &str, _: &Origin) -> Result<Option<u64>, String> {
        number(text, "a non-negative integer").map(Some)
    }
    fn value_of(&self, default: &u64) -> u64 {
        *default
    }
    fn show(&self, default: &u64) -> String {
        default.to_string()
    }
}

/// Whole seconds, declared as a number.
pub struct Seconds(pub Zero);

impl Kind for Seconds {
    type Value = Duration;
    type Default = u64;
    fn label(&self) -> &'static str {
        match self.0 {
            Zero::Refused => "seconds ≥ 1",
            Zero::Allowed | Zero::MeansDefault => "seconds",
        }
    }
    fn parse(&self, text: &str, _: &Origin) -> Result<Option<Duration>, String> {
        let seconds = self.0.check(number(text, "a non-negative integer")?)?;
        Ok(seconds.map(Duration::from_secs))
    }
    fn value_of(&self, default: &u64) -> Duration {
        Duration::from_secs(*default)
    }
    fn show(&self, default: &u64) -> String {
        default.to_string()
    }
}

/// DIRAC's booleans: true for `y`, `yes`, `true`, `1` in any case, false for anything else.
pub struct Flag;

impl Kind for Flag {
    type Value = bool;
    type Default = bool;
    fn label(&self) -> &'static str {
        "bool"
    }
    fn parse(&self, text: &str, _: &Origin) -> Result<Option<bool>, String> {
        Ok(Some(parse_bool(text)))
    }
    fn value_of(&self, default: &bool) -> bool {
        *default
    }
    fn show(&self, default: &bool) -> String {
        (if *default { "`yes`" } else { "`no`" }).to_owned()
    }
}

/// A file path, resolved against the directory of the file that set it; empty is unset.
pub struct FilePath;

impl Kind for FilePath {
    type Value = PathBuf;
    /// A path has no default worth declaring: the example configuration sets its own.
    type Default = Infallible;
    fn label(&self) -> &'static str {
        "path"
    }
    fn parse(&self, text: &str, origin: &Origin) -> Result<Option<PathBuf>, String> {
        Ok((!text.is_empty()).then(|| origin.resolve(text)))
    }
    fn value_of(&self, default: &Infallible) -> PathBuf {
        match *default {}
    }
    fn show(&self, default: &Infallible) -> String {
        match *default {}
    }
}

/// Free text; empty is unset. The label names what the text is: `Text("URL")`.
pub struct Text(pub &'static str);

impl Kind for Text {
    type Value = String;
    type Default = &'static str;
    fn label(&self) -> &'static str {
        self.0
    }
    fn parse(&self, text: &str, _: &Origin) -> Result<Option<String>, String> {
        Ok((!text.is_empty()).then(|| text.to_owned()))
    }
    fn value_of(&self, default: &&'static str) -> String {
        (*default).to_owned()
    }
    fn show(&self, default: &&'static str) -> String {
        format!("`{default}`")
    }
}

/// The log's format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// `text` or `json`, in any case.
pub struct LogFormats;

impl Kind for LogFormats {
    type Value = LogFormat;
    type Default = LogFormat;
    fn label(&self) -> &'static str {
        "`text` or `json`"
    }
    fn parse(&self, text: &str, _: &Origin) -> Result<Option<LogFormat>, String> {
        match text.to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "text" => Ok(Some(LogFormat::Text)),
            "json" => Ok(Some(LogFormat::Json)),
            _ => Err("invalid value, expected `text` or `json`".into()),
        }
    }
    fn value_of(&self, default: &LogFormat) -> LogFormat {
        *default
    }
    fn show(&self, default: &LogFormat) -> String {
        match default {
            LogFormat::Text => "`text`",
            LogFormat::Json => "`json`",
        }
        .to_owned()
    }
}

/// DIRAC's lists: comma-separated, items trimmed, empty items dropped.
pub struct List;

impl Kind for List {
    type Value = Vec<String>;
    type Default = Infallible;
    fn label(&self) -> &'static str {
        "list"
    }
    fn parse(&self, text: &str, _: &Origin) -> Result<Option<Vec<String>>, String> {
        Ok(Some(split_list(text)))
    }
    fn value_of(&self, default: &Infallible) -> Vec<String> {
        match *default {}
    }
    fn show(&self, default: &Infallible) -> String {
        match *default {}
    }
}

/// A non-empty list of `/<System>/<Service>` routes.
pub struct ServicePaths;

impl Kind for ServicePaths {
    type Value = Vec<String>;
    type Default = &'static [&'static str];
    fn label(&self) -> &'static str {
        "list"
    }
    fn parse(&self, text: &str, _: &Origin) -> Result<Option<Vec<String>>, String> {
        let paths = split_list(text);
        let valid = |p: &String| {
            let mut parts = p.strip_prefix('/').unwrap_or("").split('/');
            let part_ok = |part: Option<&str>| {
                part.is_some_and(|s| {
                    !s.is_empty()
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                })
            };
            part_ok(parts.next()) && part_ok(parts.next()) && parts.next().is_none()
        };
        match paths.iter().find(|p| !valid(p)) {
            None if !paths.is_empty() => Ok(Some(paths)),
            Some(bad) => Err(format!("'{bad}' is not of the form /<System>/<Service>")),
            None => Err("must list at least one path".into()),
        }
    }
    fn value_of(&self, default: &&'static [&'static str]) -> Vec<String> {
        default.iter().map(|p| (*p).to_owned()).collect()
    }
    fn show(&self, default: &&'static [&'static str]) -> String {
        format!("`{}`", default.join(", "))
    }
}

// The kinds of identity providers' options. Their reasons complete `<name> = <text> `, the
// problem an `IdpError::Config` reports.

/// A positive number of seconds, fractions allowed.
pub struct PositiveSeconds;

impl Kind for PositiveSeconds {
    type Value = Duration;
    type Default = u64;
    fn label(&self) -> &'static str {
        "seconds"
    }
    fn parse(&self, text: &str, _: &Origin) -> Result<Option<Duration>, String> {
        text.trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| Some(Duration::from_secs_f64(s)))
            .ok_or_else(|| "is not a positive number of seconds".into())
    }
    fn value_of(&self, default: &u64) -> Duration {
        Duration::from_secs(*default)
    }
    fn show(&self, default: &u64) -> String {
        default.to_string()
    }
}

/// Whole seconds, 0 allowed.
pub struct WholeSeconds;

impl Kind for WholeSeconds {
    type Value = Duration;
    type Default = u64;
    fn label(&self) -> &'static str {
        "seconds"
    }
    fn parse(&self, text: &str, _: &Origin) -> Result<Option<Duration>, String> {
        text.trim()
            .parse::<u64>()
            .map(|s| Some(Duration::from_secs(s)))
            .map_err(|_| "is not a number of seconds".into())
    }
    fn value_of(&self, default: &u64) -> Duration {
        Duration::from_secs(*default)
    }
    fn show(&self, default: &u64) -> String {
        default.to_string()
    }
}

/// A positive number of things.
pub struct PositiveCount;

impl Kind for PositiveCount {
    type Value = usize;
    type Default = usize;
    fn label(&self) -> &'static str {
        "integer"
    }
    fn parse(&self, text: &str, _: &Origin) -> Result<Option<usize>, String> {
        text.trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| "is not a positive integer".into())
    }
    fn value_of(&self, default: &usize) -> usize {
        *default
    }
    fn show(&self, default: &usize) -> String {
        default.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn origin() -> Origin {
        Origin {
            file: Path::new("/etc/tm/a.cfg").into(),
            line: 3,
        }
    }

    declare_options! {
        static TEST_OPTIONS;

        /// a count
        /// over two lines
        const COUNT: Setting<Count> = "Count", Count(Zero::MeansDefault), 7;
        /// a wait
        const WAIT: Setting<Seconds> = "Wait", Seconds(Zero::Refused), 2;
        /// a name
        const NAME: Optional<Text> = "Name", Text("string"), "unset";
        /// rules
        const RULES: SubSection = "Rules", "none";
    }

    fn reader_of(text: &str) -> Section {
        Section::parse(text, Path::new("/etc/tm/a.cfg")).unwrap()
    }

    #[test]
    fn the_macro_declares_each_option_and_lists_it() {
        assert_eq!(
            TEST_OPTIONS.iter().map(|o| o.name()).collect::<Vec<_>>(),
            ["Count", "Wait", "Name", "Rules"]
        );
        assert_eq!(COUNT.description, " a count over two lines");
        assert_eq!(
            render_table(TEST_OPTIONS),
            "| option | type | default | meaning |\n|---|---|---|---|\n\
             | `Count` | integer | 7 | a count over two lines |\n\
             | `Wait` | seconds ≥ 1 | 2 | a wait |\n\
             | `Name` | string | unset | a name |\n\
             | `Rules` | section | none | rules |\n"
        );
        assert_eq!(RULES.entry_kind(), EntryKind::Section);
        assert_eq!(NAME.entry_kind(), EntryKind::Option);
    }

    #[test]
    fn reader_applies_defaults_and_checks() {
        let section = reader_of("Count = 0\nName =\nRules\n{\n}\n");
        let reader = Reader {
            section: &section,
            path: "/S",
        };
        assert_eq!(reader.get(&COUNT).unwrap(), 7, "0 means the default");
        assert_eq!(reader.get(&WAIT).unwrap(), Duration::from_secs(2));
        assert_eq!(reader.optional(&NAME).unwrap(), None, "empty is unset");
        assert!(reader.section(&RULES).is_some());

        let section = reader_of("Count = 5\nWait = 0\nName = x");
        let reader = Reader {
            section: &section,
            path: "/S",
        };
        assert_eq!(reader.get(&COUNT).unwrap(), 5);
        assert_eq!(reader.optional(&NAME).unwrap().as_deref(), Some("x"));
        assert_eq!(
            reader.get(&WAIT).unwrap_err().to_string(),
            "/etc/tm/a.cfg:2: /S/Wait: must be at least 1"
        );
        let section = reader_of("Count = -1");
        let reader = Reader {
            section: &section,
            path: "/S",
        };
        assert_eq!(
            reader.get(&COUNT).unwrap_err().to_string(),
            "/etc/tm/a.cfg:1: /S/Count: invalid value, expected an integer from 0 to 4294967295"
        );
    }

    #[test]
    fn kinds_parse_and_show() {
        let o = origin();
        assert_eq!(Port.parse("65535", &o), Ok(Some(65535)));
        assert_eq!(
            Port.parse("65536", &o),
            Err("invalid value, expected an integer from 0 to 65535".into())
        );
        assert_eq!(
            Address("0.0.0.0 or ::").parse("localhost", &o),
            Err("invalid value, expected an IP address such as 0.0.0.0 or ::".into())
        );
        assert_eq!(Count(Zero::Allowed).parse("0", &o), Ok(Some(0)));
        assert_eq!(Count(Zero::Refused).label(), "integer ≥ 1");
        assert_eq!(
            Seconds(Zero::Allowed).parse("0", &o),
            Ok(Some(Duration::ZERO))
        );
        assert_eq!(
            Bytes.parse("-1", &o),
            Err("invalid value, expected a non-negative integer".into())
        );
        assert_eq!(Flag.parse("Yes", &o), Ok(Some(true)));
        assert_eq!(Flag.parse("on", &o), Ok(Some(false)));
        assert_eq!(
            (Flag.show(&false), Flag.show(&true)),
            ("`no`".into(), "`yes`".into())
        );
        assert_eq!(
            FilePath.parse("keys/k", &o),
            Ok(Some(PathBuf::from("/etc/tm/keys/k")))
        );
        assert_eq!(FilePath.parse("", &o), Ok(None));
        assert_eq!(
            ServicePaths.parse("/A/B, /C/D-e_1", &o),
            Ok(Some(vec!["/A/B".into(), "/C/D-e_1".into()]))
        );
        for (bad, reason) in [
            ("/A", "'/A' is not of the form /<System>/<Service>"),
            ("A/B", "'A/B' is not of the form /<System>/<Service>"),
            ("/A/B/C", "'/A/B/C' is not of the form /<System>/<Service>"),
            (" , ", "must list at least one path"),
        ] {
            assert_eq!(ServicePaths.parse(bad, &o), Err(reason.into()), "{bad}");
        }
        assert_eq!(
            ServicePaths.show(&["/A/B", "/C/D"].as_slice()),
            "`/A/B, /C/D`"
        );
    }
}
