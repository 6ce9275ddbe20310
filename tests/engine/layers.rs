//! The layout's one rule, read from the source: the folders of `src/` are layers, and a module
//! imports only from its own layer or those below it, with no cycle between modules. A `use`
//! that points up, or two modules that import each other, fails here naming both files.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// The layers from the bottom, as `src/lib.rs` lists them.
const LAYERS: [&str; 9] = [
    "base",
    "workflow",
    "process",
    "terraform",
    "root",
    "engine",
    "commands",
    "controller",
    "cli",
];

/// A module's path (`engine::run`) → the source text of its file.
type Sources = BTreeMap<String, String>;

fn read_sources(src: &Path) -> Sources {
    let mut sources = Sources::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                continue;
            }
            sources.insert(parts.join("::"), fs::read_to_string(&path).unwrap());
        }
    }
    sources
}

/// The text without comments, strings and `#[cfg(test)]` modules: a doc link or an error
/// message naming a module is not an import, and a unit test may reach anywhere.
fn code_only(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                out.push_str("\"\"");
            }
            // A char literal such as '"' must not open a string; lifetimes pass through.
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with('\\') || rest.chars().nth(1) == Some('\'') {
                    for c in chars.by_ref() {
                        if c == '\'' {
                            break;
                        }
                    }
                } else {
                    out.push(c);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every module of `sources` that `module`'s code names: `crate::a::b` paths, the members of
/// `use crate::{…}` groups, and `super::` paths, each resolved to the longest known module.
fn imports(module: &str, text: &str, sources: &Sources) -> BTreeSet<String> {
    let code = code_only(text);
    let mut paths = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for member in group[..end].split(',') {
                paths.push(member.trim().to_string());
            }
        } else {
            paths.push(path_at(rest));
        }
    }
    let parent: Vec<&str> = module.split("::").collect();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("super::") {
        rest = &rest[at + "super::".len()..];
        let base = parent[..parent.len().saturating_sub(1)].join("::");
        let path = path_at(rest);
        paths.push(if base.is_empty() {
            path
        } else {
            format!("{base}::{path}")
        });
    }
    paths
        .iter()
        .filter_map(|path| longest_module(path, sources))
        .filter(|target| target != module)
        .collect()
}

fn path_at(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
        .collect::<String>()
        .trim_end_matches(':')
        .to_string()
}

fn longest_module(path: &str, sources: &Sources) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|candidate| sources.contains_key(candidate))
}

fn layer(module: &str) -> usize {
    let top = module.split("::").next().unwrap();
    LAYERS
        .iter()
        .position(|l| *l == top)
        .unwrap_or_else(|| panic!("src/{top} is in no layer: add it to LAYERS and lib.rs's map"))
}

/// Every break of the rule, one line each.
fn violations(sources: &Sources) -> Vec<String> {
    let graph: BTreeMap<&str, BTreeSet<String>> = sources
        .iter()
        .map(|(module, text)| (module.as_str(), imports(module, text, sources)))
        .collect();
    let mut found = Vec::new();
    for (module, targets) in &graph {
        for target in targets {
            if layer(target) > layer(module) {
                found.push(format!("{module} imports {target}, a higher layer"));
            }
        }
    }
    for cycle in cycles(&graph) {
        found.push(format!("import cycle: {}", cycle.join(" → ")));
    }
    found
}

/// The import cycles of `graph`: each strongly connected group of two or more modules, found
/// by walking from every module to everything it reaches.
fn cycles(graph: &BTreeMap<&str, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = graph[from].iter().cloned().collect();
        while let Some(next) = todo.pop() {
            if seen.insert(next.clone()) {
                todo.extend(graph.get(next.as_str()).into_iter().flatten().cloned());
            }
        }
        seen
    };
    let reaches: BTreeMap<&str, BTreeSet<String>> = graph.keys().map(|m| (*m, reach(m))).collect();
    let mut grouped = BTreeSet::new();
    let mut groups = Vec::new();
    for module in graph.keys() {
        if grouped.contains(*module) || !reaches[module].contains(*module) {
            continue;
        }
        let group: Vec<String> = reaches[module]
            .iter()
            .filter(|other| reaches[other.as_str()].contains(*module))
            .cloned()
            .collect();
        grouped.extend(group.iter().cloned());
        groups.push(group);
    }
    groups
}

#[test]
fn every_import_points_down_and_none_makes_a_cycle() {
    let sources = read_sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(sources.len() > 30, "read only {} modules", sources.len());
    let found = violations(&sources);
    assert!(found.is_empty(), "layer rule broken:\n{}", found.join("\n"));
}

#[test]
fn the_check_finds_an_upward_import_and_a_cycle() {
    let sources: Sources = [
        ("base::error", "use crate::engine::run::Thing;\n"),
        (
            "engine::run",
            "use crate::{base::error::Error, engine::status};\n",
        ),
        (
            "engine::status",
            "// crate::base::error only in a comment\nuse super::run;\n",
        ),
        (
            "engine::decide",
            "const A: &str = \"crate::engine::run\";\n",
        ),
    ]
    .into_iter()
    .map(|(m, t)| (m.to_string(), t.to_string()))
    .collect();
    let found = violations(&sources);
    assert!(
        found.contains(&"base::error imports engine::run, a higher layer".to_string()),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("import cycle:") && f.contains("engine::status")),
        "{found:?}"
    );
    assert!(
        !found.iter().any(|f| f.contains("engine::decide")),
        "{found:?}"
    );
    assert_eq!(found.len(), 2, "{found:?}");
}
