//! The import graph points one way (ARCHITECTURE.md): every file under `src/` may name its own
//! module and modules of lower layers, never a higher one. A file's layer is that of its
//! top-level module (`src/proxy/stack.rs` is `proxy`); references are `crate::<module>` paths
//! anywhere in code (`use crate::{a, b}` groups included) and `super::` paths that climb out of
//! a top-level module. Comment lines (docs included) are not imports and are skipped.

use std::fs;
use std::path::{Path, PathBuf};

/// Lowest first. A module may import its own layer's modules only in the core, a layer of
/// small pure files; everywhere else only strictly lower layers.
const LAYERS: &[(&str, &[&str])] = &[
    // Pure core, and the metric names every layer records under.
    (
        "core",
        &[
            "etag",
            "idempotency",
            "precondition",
            "key",
            "merge",
            "quick_hash",
            "target",
            "telemetry",
            "validator",
        ],
    ),
    ("store", &["store"]),
    ("guard", &["guard"]),
    ("config", &["config"]),
    ("serve", &["serve"]),
    ("proxy", &["proxy"]),
    // Beside the proxy: admin reads its route table and hot spots; the proxy never sees them.
    ("edge", &["admin", "demo", "storm"]),
    ("app", &["app"]),
    ("root", &["lib", "main"]),
];

const CORE: usize = 0;

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// One import that breaks the layering.
#[derive(Debug, PartialEq, Eq)]
struct Violation {
    file: String,
    line: usize,
    from: String,
    to: String,
    text: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = |module: &str| layer_of(module).map_or("?", |layer| LAYERS[layer].0);
        write!(
            f,
            "{}:{}: {} (layer {}) imports {} (layer {}): {}",
            self.file,
            self.line,
            self.from,
            name(&self.from),
            self.to,
            name(&self.to),
            self.text.trim()
        )
    }
}

/// The module path of `file` (relative to `src/`): `proxy/stack.rs` is `[proxy, stack]`,
/// `proxy/mod.rs` is `[proxy]`, `lib.rs` is `[]`.
fn module_path(file: &str) -> Vec<String> {
    let mut parts: Vec<String> = file.split('/').map(str::to_owned).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

/// The top-level module `file` belongs to.
fn top_module(file: &str) -> String {
    match file.split_once('/') {
        Some((dir, _)) => dir.to_owned(),
        None => file.trim_end_matches(".rs").to_owned(),
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The identifier at the start of `s`, after whitespace.
fn leading_ident(s: &str) -> &str {
    let s = s.trim_start();
    let end = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
    &s[..end]
}

/// The top-level names of a `{a, b::c, d as e, self}` group starting just after its `{`.
fn group_names(rest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut depth = 0usize;
    let mut expecting = true;
    for (i, c) in rest.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => expecting = true,
            c if expecting && depth == 0 && is_ident(c) => {
                names.push(leading_ident(&rest[i..]).to_owned());
                expecting = false;
            }
            _ => {}
        }
    }
    names
}

/// Every top-level module that `source` (the text of `file`) names, with its line.
fn references(file: &str, source: &str) -> Vec<(usize, String, String)> {
    // Comment lines blanked (not removed), so offsets still map to lines.
    let code: String = source
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("//") {
                String::new()
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let line_of = |offset: usize| code[..offset].matches('\n').count() + 1;
    let text_of = |offset: usize| {
        code.lines()
            .nth(line_of(offset) - 1)
            .unwrap_or("")
            .to_owned()
    };
    let mut found = Vec::new();
    for (offset, _) in code.match_indices("crate::") {
        let before = code[..offset].chars().next_back();
        if before.is_some_and(|c| is_ident(c) && c != '$') {
            continue; // `my_crate::`
        }
        let rest = &code[offset + "crate::".len()..];
        let names = match rest.strip_prefix('{') {
            Some(group) => group_names(group),
            None => vec![leading_ident(rest).to_owned()],
        };
        for name in names.into_iter().filter(|name| !name.is_empty()) {
            found.push((line_of(offset), name, text_of(offset)));
        }
    }
    // `super::` chains that climb to the crate root name a top-level module.
    let depth = module_path(file).len();
    for (offset, _) in code.match_indices("super::") {
        let before = code[..offset].chars().next_back();
        if before.is_some_and(|c| is_ident(c) || c == ':') {
            continue; // counted with the first `super::` of its chain
        }
        let mut rest = &code[offset..];
        let mut climbs = 0;
        while let Some(next) = rest.strip_prefix("super::") {
            climbs += 1;
            rest = next;
        }
        if climbs < depth {
            continue; // stays inside this file's top-level module
        }
        let names = match rest.strip_prefix('{') {
            Some(group) => group_names(group),
            None => vec![leading_ident(rest).to_owned()],
        };
        for name in names.into_iter().filter(|name| !name.is_empty()) {
            found.push((line_of(offset), name, text_of(offset)));
        }
    }
    found
}

/// The imports of `file` (relative to `src/`) that break the layering.
fn violations(file: &str, source: &str) -> Vec<Violation> {
    let from = top_module(file);
    let Some(own) = layer_of(&from) else {
        return vec![Violation {
            file: file.to_owned(),
            line: 0,
            from: from.clone(),
            to: String::new(),
            text: format!("module {from:?} has no layer in tests/architecture.rs LAYERS"),
        }];
    };
    references(file, source)
        .into_iter()
        .filter(|(_, to, _)| to != &from && !matches!(to.as_str(), "self" | "super" | "crate"))
        .filter_map(|(line, to, text)| {
            let allowed = match layer_of(&to) {
                Some(theirs) => theirs < own || (theirs == own && own == CORE),
                // Not a module of ours: a crate-root item (`crate::Store`) re-exported from
                // somewhere; only the root re-exports, so anything else must name the module.
                None => false,
            };
            (!allowed).then(|| Violation {
                file: file.to_owned(),
                line,
                from: from.clone(),
                to,
                text,
            })
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read src")
        .map(|entry| entry.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_imports_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut broken = Vec::new();
    for path in &files {
        let relative = path
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        let source = fs::read_to_string(path).expect("read source");
        broken.extend(violations(&relative, &source));
    }
    let report: Vec<String> = broken.iter().map(ToString::to_string).collect();
    assert!(
        broken.is_empty(),
        "imports against the layering (ARCHITECTURE.md):\n{}",
        report.join("\n")
    );
}

#[test]
fn every_module_of_the_crate_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in fs::read_dir(&src).expect("read src") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().expect("name").to_string_lossy();
        let module = name.trim_end_matches(".rs");
        assert!(
            layer_of(module).is_some(),
            "src/{name}: give module {module:?} a layer in LAYERS (and in ARCHITECTURE.md)"
        );
    }
}

#[test]
fn an_upward_import_is_caught_in_every_spelling() {
    let targets = |file: &str, source: &str| -> Vec<(usize, String)> {
        violations(file, source)
            .into_iter()
            .map(|v| (v.line, v.to))
            .collect()
    };
    assert_eq!(
        targets("store/any.rs", "use crate::config::StoreConfig;\n"),
        [(1, "config".to_owned())]
    );
    assert_eq!(
        targets(
            "store/any.rs",
            "use crate::{\n    etag::EntityTag,\n    guard::{Policy, Rejection},\n    key,\n};\n"
        ),
        [(1, "guard".to_owned())]
    );
    assert_eq!(
        targets(
            "proxy/stack.rs",
            "fn f() { let _ = crate::admin::Token::new(\"t\"); }\n"
        ),
        [(1, "admin".to_owned())]
    );
    assert_eq!(
        targets("serve/mod.rs", "use super::app::Server;\n"),
        [(1, "app".to_owned())]
    );
    assert_eq!(
        targets("proxy/discard/future.rs", "use super::super::super::app;\n"),
        [(1, "app".to_owned())]
    );
    // Same layer, outside the core: admin and demo do not know each other.
    assert_eq!(
        targets("admin/mod.rs", "use crate::demo;\n"),
        [(1, "demo".to_owned())]
    );
    // Not imports: docs, comments, its own module, lower layers, `super::` inside the module.
    assert!(
        targets(
            "proxy/discard/future.rs",
            "//! See [`app`](crate::app).\n/// crate::app::Server\nuse crate::proxy::Mode;\n\
             use crate::serve::connection::Linger;\nuse super::super::Hotspots;\n\
             use crate::{guard, store::Store};\n"
        )
        .is_empty()
    );
    assert!(targets("precondition.rs", "use crate::etag::EntityTag;\n").is_empty());
    assert!(
        targets(
            "app.rs",
            "use crate::{admin, proxy::{self, Mode}, serve};\n"
        )
        .is_empty()
    );
}
