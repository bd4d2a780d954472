//! The service's layers, enforced: every `crate::<module>` path in `src/` (in `use` lines and
//! inline, test code included; comments and string literals excluded), and every `super::` path
//! that climbs out of its top-level module, must follow an edge of [`LAYERS`].
//! docs/ARCHITECTURE.md draws the same graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of `src/` and the modules it may use, lowest layer first: a module may
/// only use modules listed above it.
const LAYERS: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("metrics", &[]),
    ("x509", &[]),
    ("crypto", &["domain"]),
    ("config", &["domain"]),
    ("db", &["domain", "crypto", "config"]),
    ("idp", &["domain", "metrics", "config"]),
    (
        "actors",
        &["domain", "metrics", "crypto", "config", "db", "idp"],
    ),
    ("configuration_server", &["config"]),
    (
        "service",
        &[
            "domain",
            "metrics",
            "x509",
            "crypto",
            "config",
            "db",
            "idp",
            "actors",
            "configuration_server",
        ],
    ),
    ("transport", &["metrics", "x509", "config"]),
    (
        "protocol",
        &["domain", "metrics", "x509", "service", "transport"],
    ),
    ("http", &["config", "service", "transport", "protocol"]),
    (
        "app",
        &[
            "metrics",
            "x509",
            "crypto",
            "config",
            "db",
            "idp",
            "actors",
            "configuration_server",
            "service",
            "transport",
            "protocol",
            "http",
        ],
    ),
    (
        "cli",
        &[
            "domain",
            "metrics",
            "crypto",
            "config",
            "db",
            "idp",
            "actors",
            "transport",
            "app",
        ],
    ),
];

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    let mut used_edges = BTreeSet::new();
    let mut seen_modules = BTreeSet::new();
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).unwrap();
        let Some(location) = ModulePath::of(relative) else {
            continue; // lib.rs and main.rs: the crate root declares and runs everything
        };
        let module = location.top().to_owned();
        seen_modules.insert(module.clone());
        let allowed = allowed_uses(&module).unwrap_or_else(|| {
            panic!(
                "src/{} is in module `{module}`, which LAYERS does not place",
                relative.display()
            )
        });
        let code = strip_comments_and_literals(&std::fs::read_to_string(&file).unwrap());
        for (line, used) in used_modules(&code, &location) {
            if used == module {
                continue;
            }
            if !allowed.contains(&used.as_str()) {
                violations.push(format!(
                    "src/{}:{line}: `{module}` uses `{used}`",
                    relative.display()
                ));
            }
            used_edges.insert((module.clone(), used));
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the layers (tests/it/layers.rs):\n{}",
        violations.join("\n")
    );
    let placed: BTreeSet<String> = LAYERS.iter().map(|(m, _)| m.to_string()).collect();
    assert_eq!(
        placed, seen_modules,
        "LAYERS must name exactly the modules of src/"
    );
    // The graph is exact, so that docs/ARCHITECTURE.md's drawing of it says what the code does.
    let unused: Vec<String> = LAYERS
        .iter()
        .flat_map(|(module, uses)| uses.iter().map(move |used| (*module, *used)))
        .filter(|(module, used)| !used_edges.contains(&(module.to_string(), used.to_string())))
        .map(|(module, used)| format!("`{module}` -> `{used}`"))
        .collect();
    assert!(
        unused.is_empty(),
        "LAYERS allows edges nothing uses (remove them): {}",
        unused.join(", ")
    );
}

/// docs/ARCHITECTURE.md shows LAYERS as a table, row for row.
#[test]
fn the_architecture_document_draws_the_same_graph() {
    let document =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ARCHITECTURE.md"))
            .unwrap();
    let table = document
        .split_once("| module | uses |\n|---|---|\n")
        .expect("docs/ARCHITECTURE.md has the table of layers")
        .1;
    let drawn: Vec<&str> = table.lines().take_while(|l| l.starts_with('|')).collect();
    let expected: Vec<String> = LAYERS
        .iter()
        .map(|(module, uses)| {
            let uses = if uses.is_empty() {
                "—".to_owned()
            } else {
                uses.iter()
                    .map(|u| format!("`{u}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!("| `{module}` | {uses} |")
        })
        .collect();
    assert_eq!(
        drawn, expected,
        "docs/ARCHITECTURE.md's table of layers differs from LAYERS"
    );
}

/// The DIRAC wire format crate is a support library: no actor framework, no database.
#[test]
fn the_wire_format_crate_needs_no_actix_and_no_database() {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/dirac-wire/Cargo.toml"),
    )
    .unwrap();
    let dependencies: Vec<&str> = manifest
        .lines()
        .skip_while(|l| !l.starts_with("[dependencies]"))
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| l.split(['=', '.']).next())
        .map(str::trim)
        .filter(|name| !name.is_empty() && !name.starts_with('#'))
        .collect();
    assert!(!dependencies.is_empty(), "no [dependencies] read");
    let forbidden: Vec<&&str> = dependencies
        .iter()
        .filter(|d| d.starts_with("actix") || d.starts_with("diesel") || d.starts_with("r2d2"))
        .collect();
    assert!(forbidden.is_empty(), "dirac-wire depends on {forbidden:?}");
}

#[test]
fn the_layers_are_ordered_lowest_first() {
    let mut below = BTreeSet::new();
    for (module, uses) in LAYERS {
        for used in *uses {
            assert!(
                below.contains(used),
                "`{module}` may use `{used}`, which is not listed above it"
            );
        }
        below.insert(*module);
    }
}

/// The scanner itself: paths in comments and strings do not count; grouped, nested, inline and
/// `super::` paths do.
#[test]
fn the_scanner_finds_every_form_of_path() {
    let code = strip_comments_and_literals(
        r###"
use crate::domain::Secret; // crate::ignored_comment
use crate::{config::{self, Settings}, db::DbError,
    metrics};
/* crate::ignored_block /* nested crate::ignored */ */
fn f() -> &'static str {
    let _ = crate::idp::IdpError::Config;
    let _c = 'x';
    let _s = "crate::ignored_string \" crate::ignored_escaped";
    let _r = r#"crate::ignored_raw "# ;
    super::super::super::x509::pki::thing();
    super::super::sibling::ignored();
    "ok"
}
"###,
    );
    let location = ModulePath::of(Path::new("service/sub/file.rs")).unwrap();
    let found: BTreeMap<String, usize> = used_modules(&code, &location)
        .into_iter()
        .map(|(line, module)| (module, line))
        .collect();
    let names: Vec<&str> = found.keys().map(String::as_str).collect();
    assert_eq!(names, ["config", "db", "domain", "idp", "metrics", "x509"]);
    assert_eq!(found["idp"], 7, "line numbers survive the stripping");
    // From service/sub/mod.rs, `super::super` is the crate root; in its `mod tests`, it is not.
    let location = ModulePath::of(Path::new("service/sub/mod.rs")).unwrap();
    let code = strip_comments_and_literals(
        "use super::super::db::X;\nuse super::Y;\nmod tests {\n    use super::super::Z;\n    fn f() { super::super::super::idp::g(); }\n}\nuse super::super::metrics::W;",
    );
    assert_eq!(
        used_modules(&code, &location),
        [
            (1, "db".to_owned()),
            (5, "idp".to_owned()),
            (7, "metrics".to_owned())
        ]
    );
}

fn allowed_uses(module: &str) -> Option<&'static [&'static str]> {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, uses)| *uses)
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Where a file sits in the module tree: `protocol/dirac/diset.rs` is `protocol::dirac::diset`,
/// `protocol/dirac/mod.rs` is `protocol::dirac`.
struct ModulePath(Vec<String>);

impl ModulePath {
    fn of(relative: &Path) -> Option<Self> {
        let mut parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let file = parts.pop()?;
        match file.strip_suffix(".rs")? {
            "mod" => {}
            "lib" | "main" if parts.is_empty() => return None,
            name => parts.push(name.to_owned()),
        }
        Some(Self(parts))
    }

    fn top(&self) -> &str {
        &self.0[0]
    }
}

/// The top-level modules that `code`'s paths name, with their line numbers.
fn used_modules(code: &str, location: &ModulePath) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    // Inline modules (`mod tests { … }`) add a level for `super`: the brace depth each opened at.
    let mut inline_modules: Vec<usize> = Vec::new();
    let mut braces = 0;
    let mut index = 0;
    while index < bytes.len() {
        let rest = &code[index..];
        let at_word_start = index == 0 || !is_ident(bytes[index - 1]);
        let line = || code[..index].matches('\n').count() + 1;
        if at_word_start && rest.starts_with("crate::") {
            let after = index + "crate::".len();
            for module in path_heads(code, after) {
                found.push((line(), module));
            }
            index = after;
        } else if at_word_start && rest.starts_with("super::") {
            let mut depth = 0;
            let mut after = index;
            while code[after..].starts_with("super::") {
                depth += 1;
                after += "super::".len();
            }
            // A file's own module is its parent for `super`: `a/b.rs`'s `super` is `a`.
            if depth >= location.0.len() + inline_modules.len() {
                for module in path_heads(code, after) {
                    found.push((line(), module));
                }
            }
            index = after;
        } else if at_word_start && is_inline_module(rest) {
            inline_modules.push(braces);
            index += "mod".len();
        } else {
            match bytes[index] {
                b'{' => braces += 1,
                b'}' => {
                    braces -= 1;
                    if inline_modules.last() == Some(&braces) {
                        inline_modules.pop();
                    }
                }
                _ => {}
            }
            index += 1;
        }
    }
    found
}

/// Whether `rest` starts with `mod <name> {`.
fn is_inline_module(rest: &str) -> bool {
    let Some(after) = rest.strip_prefix("mod") else {
        return false;
    };
    let after = after.trim_start();
    let name_length = after
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(after.len());
    name_length > 0 && after[name_length..].trim_start().starts_with('{')
}

/// The first segment of the path that starts at `start`, or of each path of a `{…}` group.
fn path_heads(code: &str, start: usize) -> Vec<String> {
    let rest = &code[start..];
    if let Some(group) = rest.strip_prefix('{') {
        let mut heads = Vec::new();
        let mut depth = 0;
        let mut expecting_head = true;
        for (offset, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => expecting_head = true,
                c if expecting_head && depth == 0 && (c.is_alphanumeric() || c == '_') => {
                    let name: String = group[offset..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    heads.push(name);
                    expecting_head = false;
                }
                _ => {}
            }
        }
        heads.retain(|h| h != "self");
        heads
    } else {
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() { vec![] } else { vec![name] }
    }
}

fn is_ident(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// `code` with comments and string and character literals blanked out (newlines kept, so that
/// line numbers stay right).
fn strip_comments_and_literals(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(&chars, i) {
            // r"…", r#"…"#, br#"…"#: ends at a quote followed by as many hashes.
            let open = i + chars[i..].iter().position(|&c| c == '"').unwrap() + 1;
            for &c in &chars[i..open] {
                out.push(blank(c));
            }
            i = open;
            while i < chars.len() {
                if chars[i] == '"'
                    && chars[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&c| c == '#')
                        .count()
                        == hashes
                {
                    for _ in 0..=hashes {
                        out.push(' ');
                    }
                    i += hashes + 1;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && is_char_literal(&chars, i) {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                out.push(' ');
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The number of hashes if a raw string literal starts at `i`.
fn raw_string_start(chars: &[char], i: usize) -> Option<usize> {
    if i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_') {
        return None;
    }
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = chars[j..].iter().take_while(|&&c| c == '#').count();
    (chars.get(j + hashes) == Some(&'"')).then_some(hashes)
}

/// `'x'` or `'\n'` rather than a lifetime `'a`.
fn is_char_literal(chars: &[char], i: usize) -> bool {
    match chars.get(i + 1) {
        Some('\\') => true,
        Some(_) => chars.get(i + 2) == Some(&'\''),
        None => false,
    }
}
