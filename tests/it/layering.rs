//! Dependencies point one way: no import cycle between the top-level modules of `src/`, nor between the files of
//! one module. Read from the source text, so it needs no build tool: every `crate::…` and `super::…` path outside
//! `#[cfg(test)]` modules and comments is resolved to the module it names (an item re-exported by a module's
//! `pub use child::…` counts as the child's), and each path adds an edge between the two siblings where the
//! importing file's module and the named one part. A cycle among the siblings of any module fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules whose files are still allowed a cycle among themselves, with the reason. The top level never is.
const FILE_CYCLES_PENDING: &[(&str, &str)] = &[];
/// A module's path from the crate root (`["api", "jobs"]`); the root is empty.
type ModPath = Vec<String>;

struct SourceFile {
    module: ModPath,
    /// The file's own text with test modules and comments removed.
    text: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file defines: `api/jobs/wire.rs` → `api::jobs::wire`, `api/mod.rs` → `api`, `lib.rs` → root.
fn module_of(rel: &Path) -> ModPath {
    let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let file = parts.pop().unwrap();
    let stem = file.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

/// Removes `//` comments and every `#[cfg(test)] mod … { … }` block.
fn strip(text: &str) -> String {
    let no_comments: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = no_comments.as_str();
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "#[cfg(test)]".len()..];
        if !after.trim_start().starts_with("mod ") {
            out.push_str("#[cfg(test)]");
            rest = after;
            continue;
        }
        let Some(open) = after.find('{') else { break };
        let mut depth = 0usize;
        let mut end = after.len();
        for (j, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + j + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Parses the path that starts at `s` (after `crate::` or `super::`), expanding `{…}` groups: `a::{b, c::d}` →
/// `[a, b]`, `[a, c, d]`; `self` in a group names the group's parent.
fn parse_paths(s: &str) -> (Vec<Vec<String>>, usize) {
    let mut segs: Vec<String> = Vec::new();
    let mut i = 0;
    let b = s.as_bytes();
    loop {
        while i < b.len() && (b[i] as char).is_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'{' {
            i += 1;
            let mut paths = Vec::new();
            loop {
                while i < b.len() && (b[i] as char).is_whitespace() || i < b.len() && b[i] == b',' {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    i += 1;
                    break;
                }
                let (inner, used) = parse_paths(&s[i..]);
                i += used.max(1);
                for p in inner {
                    let mut full = segs.clone();
                    full.extend(p.into_iter().filter(|x| x != "self"));
                    paths.push(full);
                }
            }
            return (paths, i);
        }
        let start = i;
        while i < b.len() && is_ident(b[i] as char) {
            i += 1;
        }
        if start == i {
            return (vec![segs], i);
        }
        segs.push(s[start..i].to_owned());
        if s[i..].starts_with("::") {
            i += 2;
        } else {
            // `as name`, `;`, `(` and the like end the path.
            return (vec![segs], i);
        }
    }
}

/// Every module path a file's text names, made absolute.
fn references(file: &SourceFile) -> Vec<ModPath> {
    let mut out = Vec::new();
    let t = &file.text;
    for (i, _) in t.match_indices("crate::").chain(t.match_indices("super::")) {
        if t[..i].chars().next_back().is_some_and(|c| is_ident(c) || c == ':') {
            continue;
        }
        let mut base: ModPath = Vec::new();
        let mut rest = &t[i..];
        if rest.starts_with("super::") {
            base = file.module.clone();
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
        } else {
            rest = &rest["crate::".len()..];
        }
        for p in parse_paths(rest).0 {
            let mut full = base.clone();
            full.extend(p);
            out.push(full);
        }
    }
    out
}

/// Each module's child modules, and the items its own file re-exports from each child.
struct Tree {
    children: BTreeMap<ModPath, BTreeSet<String>>,
    reexports: BTreeMap<ModPath, BTreeMap<String, String>>,
}

impl Tree {
    fn build(files: &[SourceFile]) -> Tree {
        let mut children: BTreeMap<ModPath, BTreeSet<String>> = BTreeMap::new();
        for f in files {
            if let Some((last, parent)) = f.module.split_last() {
                children.entry(parent.to_vec()).or_default().insert(last.clone());
            }
        }
        let mut reexports: BTreeMap<ModPath, BTreeMap<String, String>> = BTreeMap::new();
        for f in files {
            let kids = children.get(&f.module).cloned().unwrap_or_default();
            for (i, _) in f.text.match_indices("use ") {
                let head = f.text[..i].trim_end();
                if !(head.ends_with("pub") || head.ends_with(')')) {
                    continue;
                }
                for p in parse_paths(&f.text[i + 4..]).0 {
                    if p.len() >= 2 && kids.contains(&p[0]) {
                        reexports
                            .entry(f.module.clone())
                            .or_default()
                            .insert(p.last().unwrap().clone(), p[0].clone());
                    }
                }
            }
        }
        Tree { children, reexports }
    }

    /// The child of `module` that `name` (a child or an item re-exported from one) belongs to.
    fn child(&self, module: &ModPath, name: &str) -> Option<String> {
        if self.children.get(module).is_some_and(|c| c.contains(name)) {
            return Some(name.to_owned());
        }
        self.reexports.get(module).and_then(|r| r.get(name)).cloned()
    }
}

/// Edges between siblings, per parent module: `from` → `to` with the file that makes it.
type Edges = BTreeMap<ModPath, BTreeMap<String, BTreeMap<String, String>>>;

fn edges(files: &[SourceFile], tree: &Tree, rel: &BTreeMap<ModPath, String>) -> Edges {
    let mut edges = Edges::new();
    for f in files {
        for r in references(f) {
            let common = f.module.iter().zip(&r).take_while(|(a, b)| a == b).count();
            if common >= f.module.len() || common >= r.len() {
                continue; // a path into the file's own module or one of its ancestors' own items
            }
            let parent: ModPath = f.module[..common].to_vec();
            let Some(to) = tree.child(&parent, &r[common]) else {
                continue; // an item of the parent's own file
            };
            let from = f.module[common].clone();
            if from != to {
                edges
                    .entry(parent)
                    .or_default()
                    .entry(from)
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| rel[&f.module].clone());
            }
        }
    }
    edges
}

/// One cycle in the graph, as its nodes in order, if there is any.
fn find_cycle(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            return Some(path[i..].to_vec());
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_owned());
        for next in graph.get(n).into_iter().flat_map(|m| m.keys()) {
            if let Some(c) = visit(next, graph, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut done, &mut Vec::new()))
}

fn load() -> (Vec<SourceFile>, Edges) {
    let src = src_dir();
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let mut files = Vec::new();
    let mut rel = BTreeMap::new();
    for p in paths {
        let r = p.strip_prefix(&src).unwrap().to_path_buf();
        let module = module_of(&r);
        rel.insert(module.clone(), r.display().to_string());
        let text = strip(&std::fs::read_to_string(&p).unwrap());
        files.push(SourceFile { module, text });
    }
    let tree = Tree::build(&files);
    let e = edges(&files, &tree, &rel);
    (files, e)
}

fn describe(cycle: &[String], graph: &BTreeMap<String, BTreeMap<String, String>>) -> String {
    let mut steps = Vec::new();
    for (i, from) in cycle.iter().enumerate() {
        let to = &cycle[(i + 1) % cycle.len()];
        steps.push(format!("{from} → {to} (in src/{})", graph[from][to]));
    }
    steps.join(", ")
}

/// The top-level modules of `src/` import each other one way only.
#[test]
fn top_level_modules_have_no_import_cycle() {
    let (_, edges) = load();
    let top = edges.get(&Vec::new()).cloned().unwrap_or_default();
    assert!(top.len() > 10, "the check sees the crate's modules: {top:?}");
    if let Some(c) = find_cycle(&top) {
        panic!("import cycle between top-level modules: {}", describe(&c, &top));
    }
}

/// Within each module, its files import each other one way only.
#[test]
fn files_of_a_module_have_no_import_cycle() {
    let (_, edges) = load();
    let mut found = Vec::new();
    for (module, graph) in edges.iter().filter(|(m, _)| !m.is_empty()) {
        let name = module.join("::");
        if FILE_CYCLES_PENDING.iter().any(|(m, _)| *m == name) {
            continue;
        }
        if let Some(c) = find_cycle(graph) {
            found.push(format!("in {name}: {}", describe(&c, graph)));
        }
    }
    assert!(found.is_empty(), "import cycles between files:\n{}", found.join("\n"));
}

/// The check itself finds a cycle that exists and resolves re-exports and `super::` paths.
#[test]
fn the_cycle_check_sees_reexports_and_super_paths() {
    let files = vec![
        SourceFile {
            module: vec!["m".into()],
            text: "mod a; mod b; pub use a::Thing;".into(),
        },
        SourceFile {
            module: vec!["m".into(), "a".into()],
            text: "use super::b::{self, Other};".into(),
        },
        SourceFile {
            module: vec!["m".into(), "b".into()],
            text: "fn f() -> super::Thing { crate::m::a::make() }".into(),
        },
        SourceFile {
            module: vec!["n".into()],
            text: "use crate::{m::a, n};".into(),
        },
    ];
    let rel = files.iter().map(|f| (f.module.clone(), f.module.join("/"))).collect();
    let tree = Tree::build(&files);
    let e = edges(&files, &tree, &rel);
    let m = &e[&vec!["m".to_owned()]];
    assert!(m["a"].contains_key("b") && m["b"].contains_key("a"));
    assert_eq!(find_cycle(m).map(|c| c.len()), Some(2));
    let top = &e[&Vec::new()];
    assert!(top["n"].contains_key("m"));
    assert_eq!(find_cycle(top), None);
}
