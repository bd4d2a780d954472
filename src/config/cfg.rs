//! DIRAC's CFG text format, as implemented by `diraccfg`'s `CFG.loadFromBuffer`.
//!
//! The parser reproduces diraccfg's character scanner rather than a tidier grammar, because a
//! drop-in has to read every file DIRAC reads and give the same tree:
//!
//! * each line is stripped; blank lines and lines starting with `#` are skipped (no inline
//!   comments: `a = b # c` has the value `b # c`);
//! * text that is not `{`, `}`, `=` or `+=` accumulates in a buffer that survives line ends, so
//!   `Name` on one line and `{` on the next opens section `Name`;
//! * at the first `=` of a line the key is everything before it on that line and the value
//!   everything after it, both stripped, and the rest of the line is not scanned (`a = b }` keeps
//!   the brace in the value); the buffer is discarded, which silently drops stray text;
//! * `key += value` appends `", " + value` to an option declared earlier;
//! * re-opening a section, or unbalanced braces, are errors; setting an option again overwrites it.
//!
//! Deliberate deviations, all on input DIRAC would mis-handle too: a name containing `/` is an
//! error (diraccfg would treat it as a path relative to the current section), an option with the
//! name of an existing section is an error (diraccfg silently replaces the section), merging an
//! option with a section of the same name is an error (diraccfg raises `KeyError`), and a leading
//! UTF-8 byte order mark is ignored.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// Where an option or section was defined: file and 1-based line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<Path>,
    pub line: usize,
}

impl Origin {
    /// Resolves a path written in this file: relative paths are taken relative to the directory
    /// of the file, so a configuration tree can be moved as a whole.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        match self.file.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A child of a [`Section`].
#[derive(Clone, Debug)]
pub enum Entry {
    Option { value: String, origin: Origin },
    Section(Section, Origin),
}

impl Entry {
    pub fn origin(&self) -> &Origin {
        match self {
            Entry::Option { origin, .. } | Entry::Section(_, origin) => origin,
        }
    }
}

/// A syntax error, reported by [`CfgError::Syntax`] together with its location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("'}}' closes more sections than were opened")]
    UnbalancedClose,
    #[error("section '{0}' opened here is never closed")]
    Unclosed(String),
    #[error("'{name}' is already defined at {first}")]
    AlreadyDefined { name: String, first: Origin },
    #[error("option '{name}' has the name of the section defined at {section}")]
    OptionNamedLikeSection { name: String, section: Origin },
    #[error("'{0} +=' appends to an option that has not been declared before")]
    AppendToUndeclared(String),
    #[error("'{name} +=' appends to the section defined at {section}")]
    AppendToSection { name: String, section: Origin },
    #[error("'{{' without a section name")]
    EmptySectionName,
    #[error("'=' without an option name")]
    EmptyOptionName,
    #[error("name '{0}' contains '/', the path separator")]
    SlashInName(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CfgError {
    #[error("cannot read {}: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {error}")]
    Syntax { origin: Origin, error: SyntaxError },
    #[error("cannot merge {path}: it is an option at {option} and a section at {section}")]
    MergeConflict {
        path: String,
        option: Origin,
        section: Origin,
    },
    /// Never carries the value itself: the option may hold a secret.
    #[error("{origin}: {path}: {reason}")]
    BadValue {
        origin: Origin,
        path: String,
        reason: String,
    },
}

/// An ordered list of named options and subsections.
///
/// Its `Debug` output shows every value, secrets included: log [`super::Settings`] instead.
#[derive(Clone, Default)]
pub struct Section {
    entries: Vec<(String, Entry)>,
    // Registry sections hold thousands of users; keeps parsing and merging linear.
    index: HashMap<String, usize>,
}

impl fmt::Debug for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

/// DIRAC's `List.fromChar(value, ",")`: split on commas, strip, drop empty items.
pub fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// DIRAC's `gConfig.getValue(path, False)`: true iff the lower-cased value is y, yes, true or 1.
pub fn parse_bool(value: &str) -> bool {
    matches!(value.to_lowercase().as_str(), "y" | "yes" | "true" | "1")
}

/// Path components as diraccfg's `List.fromChar(path, "/")` yields them.
fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').map(str::trim).filter(|c| !c.is_empty())
}

fn normalize(path: &str) -> String {
    let mut out = String::new();
    for c in components(path) {
        out.push('/');
        out.push_str(c);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

struct Frame {
    name: String,
    section: Section,
    origin: Origin,
}

impl Section {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses CFG text; `file` is only used to label origins and errors.
    pub fn parse(text: &str, file: &Path) -> Result<Section, CfgError> {
        let file: Arc<Path> = Arc::from(file);
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut root = Section::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut pending = String::new();

        for (number, line) in text.split('\n').enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let origin = Origin {
                file: file.clone(),
                line: number + 1,
            };
            let syntax = |error| CfgError::Syntax {
                origin: origin.clone(),
                error,
            };
            for (i, c) in line.char_indices() {
                match c {
                    '{' => {
                        let name = pending.trim().to_owned();
                        pending.clear();
                        check_name(&name, SyntaxError::EmptySectionName).map_err(syntax)?;
                        if let Some(existing) = current(&mut root, &mut stack).entry(&name) {
                            return Err(syntax(SyntaxError::AlreadyDefined {
                                name,
                                first: existing.origin().clone(),
                            }));
                        }
                        stack.push(Frame {
                            name,
                            section: Section::new(),
                            origin: origin.clone(),
                        });
                    }
                    '}' => {
                        let frame = stack
                            .pop()
                            .ok_or_else(|| syntax(SyntaxError::UnbalancedClose))?;
                        current(&mut root, &mut stack)
                            .push(frame.name, Entry::Section(frame.section, frame.origin));
                    }
                    '=' => {
                        let name = line[..i].trim();
                        check_name(name, SyntaxError::EmptyOptionName).map_err(syntax)?;
                        current(&mut root, &mut stack)
                            .set_option(name, line[i + 1..].trim(), origin.clone())
                            .map_err(syntax)?;
                        pending.clear();
                        break;
                    }
                    '+' if line[i..].starts_with("+=") => {
                        let name = line[..i].trim();
                        current(&mut root, &mut stack)
                            .append_option(name, line[i + 2..].trim())
                            .map_err(syntax)?;
                        pending.clear();
                        break;
                    }
                    _ => pending.push(c),
                }
            }
        }
        match stack.pop() {
            Some(frame) => Err(CfgError::Syntax {
                origin: frame.origin,
                error: SyntaxError::Unclosed(frame.name),
            }),
            None => Ok(root),
        }
    }

    pub fn load_file(path: &Path) -> Result<Section, CfgError> {
        let text = std::fs::read_to_string(path).map_err(|source| CfgError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Loads the files in order and merges them: later files win, like DIRAC's command-line
    /// `.cfg` files.
    pub fn load_files<P: AsRef<Path>>(paths: &[P]) -> Result<Section, CfgError> {
        let mut merged = Section::new();
        for path in paths {
            merged.merge(&Self::load_file(path.as_ref())?)?;
        }
        Ok(merged)
    }

    /// diraccfg's `mergeWith`: options of `other` override ours, sections are merged
    /// recursively, entries new to `self` are appended in `other`'s order.
    pub fn merge(&mut self, other: &Section) -> Result<(), CfgError> {
        self.merge_at(other, "")
    }

    fn merge_at(&mut self, other: &Section, path: &str) -> Result<(), CfgError> {
        for (name, theirs) in &other.entries {
            let child = format!("{path}/{name}");
            let Some(&i) = self.index.get(name) else {
                self.push(name.clone(), theirs.clone());
                continue;
            };
            match (&mut self.entries[i].1, theirs) {
                (Entry::Section(ours, _), Entry::Section(theirs, _)) => {
                    ours.merge_at(theirs, &child)?;
                }
                (ours @ Entry::Option { .. }, Entry::Option { .. }) => *ours = theirs.clone(),
                (Entry::Option { origin: option, .. }, Entry::Section(_, section)) => {
                    return Err(merge_conflict(child, option, section));
                }
                (Entry::Section(_, section), Entry::Option { origin: option, .. }) => {
                    return Err(merge_conflict(child, option, section));
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, name: String, entry: Entry) {
        self.index.insert(name.clone(), self.entries.len());
        self.entries.push((name, entry));
    }

    fn entry_mut(&mut self, name: &str) -> Option<&mut Entry> {
        let i = *self.index.get(name)?;
        Some(&mut self.entries[i].1)
    }

    fn set_option(&mut self, name: &str, value: &str, origin: Origin) -> Result<(), SyntaxError> {
        match self.entry_mut(name) {
            None => {
                self.push(
                    name.to_owned(),
                    Entry::Option {
                        value: value.to_owned(),
                        origin,
                    },
                );
                Ok(())
            }
            Some(Entry::Section(_, section)) => Err(SyntaxError::OptionNamedLikeSection {
                name: name.to_owned(),
                section: section.clone(),
            }),
            Some(existing) => {
                *existing = Entry::Option {
                    value: value.to_owned(),
                    origin,
                };
                Ok(())
            }
        }
    }

    fn append_option(&mut self, name: &str, value: &str) -> Result<(), SyntaxError> {
        match self.entry_mut(name) {
            Some(Entry::Option { value: current, .. }) => {
                current.push_str(", ");
                current.push_str(value);
                Ok(())
            }
            Some(Entry::Section(_, section)) => Err(SyntaxError::AppendToSection {
                name: name.to_owned(),
                section: section.clone(),
            }),
            None => Err(SyntaxError::AppendToUndeclared(name.to_owned())),
        }
    }

    /// The direct child called `name`.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    /// All direct children in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Direct options in file order: (name, value, origin).
    pub fn options(&self) -> impl Iterator<Item = (&str, &str, &Origin)> {
        self.entries().filter_map(|(name, entry)| match entry {
            Entry::Option { value, origin } => Some((name, value.as_str(), origin)),
            Entry::Section(..) => None,
        })
    }

    /// Direct subsections in file order.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Section)> {
        self.entries().filter_map(|(name, entry)| match entry {
            Entry::Section(section, _) => Some((name, section)),
            Entry::Option { .. } => None,
        })
    }

    pub fn option_names(&self) -> impl Iterator<Item = &str> {
        self.options().map(|(name, _, _)| name)
    }

    pub fn section_names(&self) -> impl Iterator<Item = &str> {
        self.sections().map(|(name, _)| name)
    }

    /// The entry at `path` (`/A/B/c`; empty components and surrounding blanks ignored).
    pub fn lookup(&self, path: &str) -> Option<&Entry> {
        let mut parts = components(path);
        let mut entry = self.entry(parts.next()?)?;
        for part in parts {
            match entry {
                Entry::Section(section, _) => entry = section.entry(part)?,
                Entry::Option { .. } => return None,
            }
        }
        Some(entry)
    }

    /// The value of the option at `path`; `None` if missing or a section.
    pub fn get(&self, path: &str) -> Option<&str> {
        self.get_with_origin(path).map(|(value, _)| value)
    }

    pub fn get_with_origin(&self, path: &str) -> Option<(&str, &Origin)> {
        match self.lookup(path)? {
            Entry::Option { value, origin } => Some((value, origin)),
            Entry::Section(..) => None,
        }
    }

    /// The section at `path`; an empty path or `/` is `self`.
    pub fn section(&self, path: &str) -> Option<&Section> {
        if components(path).next().is_none() {
            return Some(self);
        }
        match self.lookup(path)? {
            Entry::Section(section, _) => Some(section),
            Entry::Option { .. } => None,
        }
    }

    pub fn section_with_origin(&self, path: &str) -> Option<(&Section, &Origin)> {
        match self.lookup(path)? {
            Entry::Section(section, origin) => Some((section, origin)),
            Entry::Option { .. } => None,
        }
    }

    /// List semantics of [`split_list`]; `None` if the option is missing.
    pub fn get_list(&self, path: &str) -> Option<Vec<String>> {
        self.get(path).map(split_list)
    }

    /// Boolean semantics of [`parse_bool`]; `None` if the option is missing.
    pub fn get_bool(&self, path: &str) -> Option<bool> {
        self.get(path).map(parse_bool)
    }

    /// Parses the option with `FromStr`. Unlike DIRAC, which falls back to the default on a bad
    /// value, a bad value is an error naming file, line and option; `expected` completes
    /// "invalid value, expected …".
    pub fn get_parsed<T: FromStr>(
        &self,
        path: &str,
        expected: &str,
    ) -> Result<Option<T>, CfgError> {
        let Some((value, origin)) = self.get_with_origin(path) else {
            return Ok(None);
        };
        value.parse().map(Some).map_err(|_| CfgError::BadValue {
            origin: origin.clone(),
            path: normalize(path),
            reason: format!("invalid value, expected {expected}"),
        })
    }

    pub fn get_u16(&self, path: &str) -> Result<Option<u16>, CfgError> {
        self.get_parsed(path, "an integer from 0 to 65535")
    }

    pub fn get_u32(&self, path: &str) -> Result<Option<u32>, CfgError> {
        self.get_parsed(path, "an integer from 0 to 4294967295")
    }

    pub fn get_u64(&self, path: &str) -> Result<Option<u64>, CfgError> {
        self.get_parsed(path, "a non-negative integer")
    }
}

fn current<'a>(root: &'a mut Section, stack: &'a mut [Frame]) -> &'a mut Section {
    match stack.last_mut() {
        Some(frame) => &mut frame.section,
        None => root,
    }
}

fn merge_conflict(path: String, option: &Origin, section: &Origin) -> CfgError {
    CfgError::MergeConflict {
        path,
        option: option.clone(),
        section: section.clone(),
    }
}

fn check_name(name: &str, empty: SyntaxError) -> Result<(), SyntaxError> {
    if name.is_empty() {
        Err(empty)
    } else if name.contains('/') {
        Err(SyntaxError::SlashInName(name.to_owned()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Section {
        Section::parse(text, Path::new("/etc/test.cfg")).unwrap()
    }

    fn syntax_error(text: &str) -> (usize, SyntaxError) {
        match Section::parse(text, Path::new("/etc/test.cfg")).unwrap_err() {
            CfgError::Syntax { origin, error } => (origin.line, error),
            other => panic!("unexpected error {other}"),
        }
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cfg")
            .join(name)
    }

    #[test]
    fn name_on_one_line_brace_on_the_next_opens_the_section() {
        let cfg = parse("DIRAC\n{\n  Setup = Production\n}\n");
        assert_eq!(cfg.get("/DIRAC/Setup"), Some("Production"));
        let cfg = parse("DIRAC {\nSetup = Production\n}");
        assert_eq!(cfg.get("/DIRAC/Setup"), Some("Production"));
    }

    #[test]
    fn value_is_the_rest_of_the_line_stripped_with_equals_kept() {
        let cfg = parse("a =   x=y = z  \n  b=\n");
        assert_eq!(cfg.get("a"), Some("x=y = z"));
        assert_eq!(cfg.get("b"), Some(""));
    }

    #[test]
    fn append_adds_comma_and_value() {
        let cfg = parse("S\n{\n DN = /C=ch/CN=A\n DN += /O=DIRAC/CN=id\n DN+=x+=y\n}");
        assert_eq!(cfg.get("/S/DN"), Some("/C=ch/CN=A, /O=DIRAC/CN=id, x+=y"));
        assert_eq!(
            cfg.get_list("/S/DN").unwrap(),
            ["/C=ch/CN=A", "/O=DIRAC/CN=id", "x+=y"]
        );
    }

    #[test]
    fn equals_before_plus_equals_makes_a_plain_option() {
        let cfg = parse("a = b += c");
        assert_eq!(cfg.get("a"), Some("b += c"));
    }

    #[test]
    fn append_to_missing_option_or_section_is_an_error() {
        assert_eq!(
            syntax_error("a = 1\n\nb += 2"),
            (3, SyntaxError::AppendToUndeclared("b".into()))
        );
        let (line, error) = syntax_error("S\n{\n}\nS += x");
        assert_eq!(line, 4);
        assert!(matches!(error, SyntaxError::AppendToSection { .. }));
    }

    #[test]
    fn comments_only_at_line_start_and_no_inline_comments() {
        let cfg = parse("# top\n   # indented comment = x\nProperties = NormalUser # comment\n");
        assert_eq!(cfg.get("Properties"), Some("NormalUser # comment"));
        assert_eq!(cfg.option_names().collect::<Vec<_>>(), ["Properties"]);
    }

    #[test]
    fn closing_brace_after_equals_stays_in_the_value() {
        let cfg = parse("S\n{\na = b }\n}");
        assert_eq!(cfg.get("/S/a"), Some("b }"));
        let (line, error) = syntax_error("S\n{\na = b }\n");
        assert_eq!((line, error), (2, SyntaxError::Unclosed("S".into())));
    }

    #[test]
    fn reopening_a_section_is_an_error() {
        let (line, error) = syntax_error("S\n{\n}\nS\n{\n}");
        assert_eq!(line, 5);
        match error {
            SyntaxError::AlreadyDefined { name, first } => {
                assert_eq!(name, "S");
                assert_eq!(first.line, 2);
            }
            other => panic!("{other}"),
        }
        assert!(matches!(
            syntax_error("S = 1\nS\n{\n}").1,
            SyntaxError::AlreadyDefined { .. }
        ));
    }

    #[test]
    fn option_named_like_a_section_is_an_error() {
        let (line, error) = syntax_error("S\n{\n}\nS = 1");
        assert_eq!(line, 4);
        assert!(matches!(error, SyntaxError::OptionNamedLikeSection { .. }));
    }

    #[test]
    fn unbalanced_braces_are_errors() {
        assert_eq!(
            syntax_error("A\n{\n}\n}"),
            (4, SyntaxError::UnbalancedClose)
        );
        assert_eq!(
            syntax_error("A\n{\n B\n {\n}\n"),
            (2, SyntaxError::Unclosed("A".into()))
        );
    }

    #[test]
    fn unbalanced_fixture_files_are_rejected() {
        let err = Section::load_file(&fixture("too_many_closing.cfg")).unwrap_err();
        assert!(
            matches!(&err, CfgError::Syntax { origin, error: SyntaxError::UnbalancedClose } if origin.line == 11),
            "{err}"
        );
        let err = Section::load_file(&fixture("unclosed.cfg")).unwrap_err();
        assert!(
            matches!(&err, CfgError::Syntax { origin, error: SyntaxError::Unclosed(name) } if name == "Systems" && origin.line == 3),
            "{err}"
        );
    }

    #[test]
    fn setting_an_option_again_overwrites_in_place() {
        let cfg = parse("a = 1\nb = 2\na = 3");
        assert_eq!(cfg.get("a"), Some("3"));
        assert_eq!(cfg.get_with_origin("a").unwrap().1.line, 3);
        assert_eq!(cfg.option_names().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn names_are_case_sensitive_and_keep_inner_spaces() {
        let cfg = parse("  My Section  \n{\n  my  option = x\n  My  Option = y\n}");
        assert_eq!(cfg.get("/My Section/my  option"), Some("x"));
        assert_eq!(cfg.get("/My Section/My  Option"), Some("y"));
        assert_eq!(cfg.get("/my section/my  option"), None);
    }

    #[test]
    fn stray_text_before_an_option_line_is_dropped() {
        let cfg = parse("Releases\n{\n  integration\n  Modules = DIRAC\n}");
        assert_eq!(cfg.get("/Releases/Modules"), Some("DIRAC"));
        assert_eq!(cfg.section("/Releases").unwrap().section_names().count(), 0);
    }

    #[test]
    fn stray_text_before_a_brace_joins_the_next_section_name() {
        // diraccfg only clears the buffer at '{', '=' and '+='.
        let cfg = parse("A\n{\nstray\n}\nB\n{\n}");
        assert_eq!(cfg.section_names().collect::<Vec<_>>(), ["A", "strayB"]);
    }

    #[test]
    fn key_is_everything_before_equals_on_the_line() {
        let cfg = parse("S { a = b\n}");
        assert_eq!(cfg.get("/S/S { a"), Some("b"));
    }

    #[test]
    fn quotes_are_kept_and_crlf_is_accepted() {
        let cfg = parse("S\r\n{\r\n a = \"quoted\"\r\n}\r\n");
        assert_eq!(cfg.get("/S/a"), Some("\"quoted\""));
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        assert_eq!(parse("\u{feff}A = 1").get("A"), Some("1"));
    }

    #[test]
    fn empty_names_and_slashes_are_errors() {
        assert_eq!(syntax_error("= x"), (1, SyntaxError::EmptyOptionName));
        assert_eq!(syntax_error("{\n}"), (1, SyntaxError::EmptySectionName));
        assert_eq!(
            syntax_error("A/b = x"),
            (1, SyntaxError::SlashInName("A/b".into()))
        );
    }

    #[test]
    fn paths_ignore_empty_components_and_blanks() {
        let cfg = parse("A\n{\nB\n{\nc = 1\n}\n}");
        assert_eq!(cfg.get("/A/B/c"), Some("1"));
        assert_eq!(cfg.get("A//B/ c /"), Some("1"));
        assert_eq!(cfg.get("/A/B"), None);
        assert_eq!(cfg.get("/A/B/c/d"), None);
        assert!(cfg.section("/A/B/c").is_none());
        assert!(cfg.section("//").is_some());
        assert_eq!(
            cfg.section(" /A/ ")
                .unwrap()
                .section_names()
                .collect::<Vec<_>>(),
            ["B"]
        );
    }

    #[test]
    fn listings_keep_file_order() {
        let cfg = parse("z = 1\nS2\n{\n}\na = 2\nS1\n{\n}");
        assert_eq!(cfg.option_names().collect::<Vec<_>>(), ["z", "a"]);
        assert_eq!(cfg.section_names().collect::<Vec<_>>(), ["S2", "S1"]);
    }

    #[test]
    fn list_and_bool_readers_follow_dirac() {
        let cfg =
            parse("l = a, ,b ,, c\ne =\nt1 = Yes\nt2 = TRUE\nt3 = 1\nt4 = y\nf1 = on\nf2 = 0");
        assert_eq!(cfg.get_list("l").unwrap(), ["a", "b", "c"]);
        assert!(cfg.get_list("e").unwrap().is_empty());
        assert_eq!(cfg.get_list("missing"), None);
        for t in ["t1", "t2", "t3", "t4"] {
            assert_eq!(cfg.get_bool(t), Some(true), "{t}");
        }
        for f in ["f1", "f2"] {
            assert_eq!(cfg.get_bool(f), Some(false), "{f}");
        }
        assert_eq!(cfg.get_bool("missing"), None);
    }

    #[test]
    fn numeric_readers_name_file_line_and_path() {
        let cfg = parse("S\n{\nPort = 9181\nBad = 70000\n}");
        assert_eq!(cfg.get_u16("/S/Port").unwrap(), Some(9181));
        assert_eq!(cfg.get_u64("/S/Bad").unwrap(), Some(70000));
        assert_eq!(cfg.get_u16("/S/Missing").unwrap(), None);
        let err = cfg.get_u16("S//Bad").unwrap_err().to_string();
        assert_eq!(
            err,
            "/etc/test.cfg:4: /S/Bad: invalid value, expected an integer from 0 to 65535"
        );
    }

    #[test]
    fn origins_point_at_the_defining_line() {
        let cfg = parse("# c\n\nA\n{\n  x = 1\n}");
        let (_, origin) = cfg.get_with_origin("/A/x").unwrap();
        assert_eq!(origin.to_string(), "/etc/test.cfg:5");
        assert_eq!(cfg.section_with_origin("/A").unwrap().1.line, 4);
        assert_eq!(origin.resolve("../var/key"), Path::new("/etc/../var/key"));
        assert_eq!(origin.resolve("/abs"), Path::new("/abs"));
    }

    #[test]
    fn merge_overrides_options_and_merges_sections_recursively() {
        let mut base = Section::parse(
            "a = 1\nS\n{\n x = 1\n y = 1\n T\n {\n  k = 1\n }\n}\nU\n{\n u = 1\n}",
            Path::new("base.cfg"),
        )
        .unwrap();
        let over = Section::parse(
            "S\n{\n y = 2\n T\n {\n  k = 2\n  l = 2\n }\n z = 2\n}\nb = 2\na = 2",
            Path::new("over.cfg"),
        )
        .unwrap();
        base.merge(&over).unwrap();
        assert_eq!(base.get("a"), Some("2"));
        assert_eq!(base.get("b"), Some("2"));
        assert_eq!(base.get("/S/x"), Some("1"));
        assert_eq!(base.get("/S/y"), Some("2"));
        assert_eq!(base.get("/S/z"), Some("2"));
        assert_eq!(base.get("/S/T/k"), Some("2"));
        assert_eq!(base.get("/S/T/l"), Some("2"));
        assert_eq!(base.get("/U/u"), Some("1"));
        assert_eq!(
            base.get_with_origin("/S/y").unwrap().1.file.as_ref(),
            Path::new("over.cfg")
        );
        assert_eq!(
            base.section("/S")
                .unwrap()
                .entries()
                .map(|(n, _)| n)
                .collect::<Vec<_>>(),
            ["x", "y", "T", "z"]
        );
        assert_eq!(
            base.entries().map(|(n, _)| n).collect::<Vec<_>>(),
            ["a", "S", "U", "b"]
        );
    }

    #[test]
    fn merging_an_option_with_a_section_is_an_error() {
        let mut base = Section::parse("A\n{\n X = 1\n}", Path::new("base.cfg")).unwrap();
        let over = Section::parse("A\n{\n X\n {\n }\n}", Path::new("over.cfg")).unwrap();
        let err = base.merge(&over).unwrap_err().to_string();
        assert_eq!(
            err,
            "cannot merge /A/X: it is an option at base.cfg:3 and a section at over.cfg:4"
        );
    }

    #[test]
    fn later_files_win_and_read_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first.cfg");
        let second = dir.path().join("second.cfg");
        std::fs::write(&first, "A\n{\n x = 1\n y = 1\n}\n").unwrap();
        std::fs::write(&second, "A\n{\n y = 2\n}\n").unwrap();
        let cfg = Section::load_files(&[&first, &second]).unwrap();
        assert_eq!(cfg.get("/A/x"), Some("1"));
        assert_eq!(cfg.get("/A/y"), Some("2"));
        let cfg = Section::load_files(&[&second, &first]).unwrap();
        assert_eq!(cfg.get("/A/y"), Some("1"));

        let missing = dir.path().join("missing.cfg");
        let err = Section::load_files(&[&first, &missing]).unwrap_err();
        assert!(matches!(&err, CfgError::Io { file, .. } if *file == missing));
        assert!(err.to_string().contains("missing.cfg"));

        std::fs::write(&second, "A\n{\n").unwrap();
        let err = Section::load_files(&[&first, &second])
            .unwrap_err()
            .to_string();
        assert!(err.contains("second.cfg:2"), "{err}");
    }

    #[test]
    fn parses_the_reference_layout() {
        let cfg = Section::load_file(&fixture("dirac-layout.cfg")).unwrap();
        assert_eq!(cfg.get("/DIRAC/Setup"), Some("Production"));
        assert_eq!(
            cfg.get("/DIRAC/Setups/Production/Framework"),
            Some("Production")
        );
        assert_eq!(
            cfg.get("/Systems/Framework/Production/URLs/TokenManager"),
            Some("https://tm.example.org:8443/Framework/TokenManager")
        );
        let svc = "/Systems/Framework/Production/Services/TokenManager";
        assert_eq!(cfg.get(&format!("{svc}/Protocol")), Some("https"));
        assert_eq!(
            cfg.section(&format!("{svc}/Authorization"))
                .unwrap()
                .option_names()
                .collect::<Vec<_>>(),
            ["Default", "getUsersTokensInfo"]
        );
        assert_eq!(
            cfg.get_u16("/Systems/Framework/Production/Databases/TokenDB/Port")
                .unwrap(),
            Some(3306)
        );
        assert_eq!(
            cfg.get_list("/Registry/Users/alice/DN").unwrap(),
            [
                "/C=ch/O=Org/CN=Alice",
                "/O=DIRAC/CN=8d3b2c1e-0000-4000-8000-123456789abc"
            ]
        );
        assert_eq!(cfg.get("/Registry/BannedIPs"), Some(""));
        assert_eq!(
            cfg.section("/Registry/Groups")
                .unwrap()
                .section_names()
                .collect::<Vec<_>>(),
            ["dteam_user", "dteam_pilot", "dteam_admin"]
        );
        assert_eq!(
            cfg.get_list("/Registry/Groups/dteam_pilot/Properties")
                .unwrap(),
            ["GenericPilot", "LimitedDelegation"]
        );
        assert_eq!(
            cfg.get_bool("/DIRAC/Security/UseServerCertificate"),
            Some(true)
        );
        assert_eq!(
            cfg.get("/Resources/IdProviders/IAM-dteam/scope"),
            Some("openid profile offline_access")
        );
        assert_eq!(
            cfg.get("/Operations/dteam/Pilot/GenericPilotGroup"),
            Some("dteam_pilot")
        );
    }
}
