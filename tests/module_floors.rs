//! The gateway's modules stand on floors, and imports point only downward.
//!
//! Every `crate::…`, `super::…` and `self::…` path in `src/` (outside
//! `#[cfg(test)]` test modules, which may reach anywhere) is resolved to the
//! module it names. Two rules follow:
//!
//! - between top-level modules, an import goes to a strictly lower floor of
//!   [`FLOORS`] (modules on one floor do not import each other);
//! - between files, there is no cycle (inside a folder too: `routing/table.rs`
//!   and `routing/shadow.rs` may not import each other).
//!
//! When a new module lands, add it to [`FLOORS`]: the test refuses modules it
//! does not know, so the order stays declared rather than discovered.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules of `src/`, top floor first. `lib.rs` and `main.rs` stand
/// above all of them.
const FLOORS: &[&[&str]] = &[
    // Listeners, and the config that assembles every subsystem's own config type.
    &["server"],
    &["config"],
    // The admin API, beside the data-plane doors.
    &["admin"],
    // Following a control plane: loads versions and puts routes as an operator would.
    &["sync"],
    &["http", "grpc"],
    // What both doors and the admin API render.
    &["respond", "triton_metrics"],
    // The protocol-neutral inference path.
    &["gateway"],
    // Rollouts drive routes; routes pick versions.
    &["rollout"],
    &["routing"],
    // Ground truth: the predictions a route keeps and the quality they add up to.
    &["feedback"],
    &["repository"],
    &["batching"],
    // The drift profiler: the batch worker hands it batches; it reads tensors and metrics.
    &["drift"],
    &["stats", "budget", "connection"],
    // The ground floor: names, values and codes that everything else uses.
    &["metrics"],
    &["tensor", "proto", "memory"],
    &["error"],
    // std's atomics, or loom's where crates/loom-models compiles the lock-free counters.
    &["atomic"],
];

fn floor_of(module: &str) -> Option<usize> {
    FLOORS.iter().position(|floor| floor.contains(&module))
}

/// A source file's module path, e.g. `src/routing/table.rs` → `["routing", "table"]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_owned());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its inline test module
/// (`#[cfg(test)]` followed by `mod …`, by convention at the end of a file).
fn code_outside_tests(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines.peek().is_some_and(|next| next.trim_start().starts_with("mod ") || next.contains(" mod "))
        {
            break;
        }
        let without_comment = match trimmed.find("//") {
            Some(at) => &trimmed[..at],
            None => trimmed,
        };
        code.push_str(without_comment);
        code.push('\n');
    }
    code
}

/// Child modules a file declares for tests only: `#[cfg(test)]` (perhaps with
/// a `#[path]`) followed by `mod NAME;`.
fn test_module_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut after_cfg_test = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with("#[cfg(test)]") {
            after_cfg_test = true;
        } else if after_cfg_test && line.starts_with("#[") {
            continue;
        } else {
            if after_cfg_test && let Some(name) = line.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
                names.push(name.trim().to_owned());
            }
            after_cfg_test = false;
        }
    }
    names
}

/// Expands a use tree that starts right after `root::`, e.g. `{a, b::{c, d}}`
/// or `a::b`, into plain paths (as segment lists).
fn expand(text: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix('{') {
        let inner = inner.strip_suffix('}').unwrap_or(inner);
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], prefix, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], prefix, out);
        return;
    }
    if text.is_empty() {
        return;
    }
    match text.split_once("::") {
        Some((head, rest)) => {
            let mut prefix = prefix.to_vec();
            prefix.push(head.trim().to_owned());
            expand(rest, &prefix, out);
        }
        None => {
            let mut path = prefix.to_vec();
            let name = text.split_whitespace().next().unwrap_or("");
            if name != "self" && name != "*" {
                path.push(name.to_owned());
            }
            out.push(path);
        }
    }
}

/// The use tree or path that starts at `start` in `code`: up to the matching
/// brace for a group, else up to the first character that cannot be part of a path.
fn tree_at(code: &str, start: usize) -> &str {
    let rest = &code[start..];
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return &rest[..i],
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &rest[..=i];
                }
            }
            c if depth > 0 || c.is_alphanumeric() || c == '_' || c == ':' => {}
            _ => return &rest[..i],
        }
    }
    rest
}

/// Every module path a file's code names through `crate::`, `super::` or `self::`.
fn referenced_paths(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for root in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(found) = code[from..].find(root) {
            let at = from + found;
            from = at + root.len();
            // `foo_crate::` or `my_super::` are other names.
            if code[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            // `here` is already the folder's module for a `mod.rs`, so `super` is one step up either way.
            let base: Vec<String> = match root {
                "crate::" => Vec::new(),
                "self::" => here.to_vec(),
                _ => here[..here.len().saturating_sub(1)].to_vec(),
            };
            expand(tree_at(code, from), &base, &mut paths);
        }
    }
    paths
}

/// The longest known module that `path` starts with.
fn resolve<'a>(path: &[String], modules: &'a BTreeSet<Vec<String>>) -> Option<&'a Vec<String>> {
    (1..=path.len()).rev().find_map(|n| modules.get(&path[..n]))
}

struct Graph {
    /// File-level edges: module path → module paths it imports.
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn graph() -> Graph {
    // MODULE_FLOORS_SRC checks another tree (an older commit, say) with the same rules.
    let src = std::env::var_os("MODULE_FLOORS_SRC")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), PathBuf::from);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(&src, f)).collect();
    let texts: BTreeMap<Vec<String>, String> =
        files.iter().map(|f| (module_path(&src, f), std::fs::read_to_string(f).expect("readable source"))).collect();
    // Files that hold only tests (`#[cfg(test)] mod tests;` in their parent) may import anything.
    let test_only: BTreeSet<Vec<String>> = texts
        .iter()
        .flat_map(|(parent, text)| {
            test_module_names(text).into_iter().map(move |name| [parent.clone(), vec![name]].concat())
        })
        .collect();
    let mut edges = BTreeMap::new();
    for (here, text) in &texts {
        // lib.rs and main.rs stand above every module.
        if here.is_empty() || test_only.contains(here) {
            continue;
        }
        let code = code_outside_tests(text);
        let targets: BTreeSet<Vec<String>> = referenced_paths(&code, here)
            .iter()
            .filter_map(|p| resolve(p, &modules))
            .filter(|target| *target != here && !target.is_empty())
            .cloned()
            .collect();
        edges.insert(here.clone(), targets);
    }
    Graph { edges }
}

#[test]
fn imports_between_top_level_modules_point_only_downward() {
    let graph = graph();
    let mut upward = Vec::new();
    let mut unknown = BTreeSet::new();
    for (from, targets) in &graph.edges {
        let Some(from_top) = from.first() else { continue };
        let Some(from_floor) = floor_of(from_top) else {
            unknown.insert(from_top.clone());
            continue;
        };
        for to in targets {
            let to_top = &to[0];
            if to_top == from_top {
                continue;
            }
            match floor_of(to_top) {
                None => {
                    unknown.insert(to_top.clone());
                }
                Some(to_floor) if to_floor <= from_floor => {
                    upward.push(format!("{} -> {} (floor {from_floor} -> {to_floor})", from.join("::"), to.join("::")));
                }
                Some(_) => {}
            }
        }
    }
    assert!(unknown.is_empty(), "modules missing from FLOORS: {unknown:?}");
    assert!(upward.is_empty(), "imports that do not point downward:\n{}", upward.join("\n"));
}

#[test]
fn no_import_cycle_between_files() {
    let graph = graph();
    // Depth-first search with colours; a grey node reached again closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        White,
        Grey,
        Black,
    }
    let mut colour: BTreeMap<&Vec<String>, Colour> = graph.edges.keys().map(|k| (k, Colour::White)).collect();
    let mut cycles = Vec::new();
    fn visit<'a>(
        node: &'a Vec<String>,
        graph: &'a Graph,
        colour: &mut BTreeMap<&'a Vec<String>, Colour>,
        stack: &mut Vec<&'a Vec<String>>,
        cycles: &mut Vec<String>,
    ) {
        colour.insert(node, Colour::Grey);
        stack.push(node);
        for next in graph.edges.get(node).into_iter().flatten() {
            match colour.get(next).copied().unwrap_or(Colour::Black) {
                Colour::White => visit(next, graph, colour, stack, cycles),
                Colour::Grey => {
                    let start = stack.iter().position(|n| *n == next).unwrap_or(0);
                    let names: Vec<String> = stack[start..].iter().chain([&next]).map(|n| n.join("::")).collect();
                    cycles.push(names.join(" -> "));
                }
                Colour::Black => {}
            }
        }
        stack.pop();
        colour.insert(node, Colour::Black);
    }
    let nodes: Vec<&Vec<String>> = graph.edges.keys().collect();
    for node in nodes {
        if colour[node] == Colour::White {
            visit(node, &graph, &mut colour, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_check_sees_grouped_and_relative_imports() {
    let mut paths = Vec::new();
    expand("{a, b::{c, d::E}, f::G as H}", &[], &mut paths);
    let shown: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(shown, ["a", "b::c", "b::d::E", "f::G"]);
    let here = vec!["routing".to_owned(), "table".to_owned()];
    let found = referenced_paths("use super::shadow::Shadow;\nlet x = crate::error::Error::X;", &here);
    let shown: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert!(shown.contains(&"error::Error::X".to_owned()), "{shown:?}");
    assert!(shown.contains(&"routing::shadow::Shadow".to_owned()), "{shown:?}");
}
