//! The layering check (docs/architecture.md, "Layering"): the modules of `src/` import
//! each other without a cycle.
//!
//! Nodes are the top-level modules, and the submodules of the Flux slices, mapping and
//! delivery, where a cycle would hide inside one big node. Edges are every path that
//! names another module: `use crate::…`, `super::…` and `self::…` trees, `crate::x::`
//! paths in code, and paths through a name a `use` brought in. Test modules count too:
//! a test that reaches up a layer is a cycle waiting to happen.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules whose submodules are nodes of their own.
const SPLIT: &[&str] = &["fluxv1", "fluxv2", "mapping", "delivery"];

/// Edges known to close a cycle, each with the branch that removes it. An entry whose
/// edge is gone fails the check, so it cannot outlive its reason.
const ALLOWED: &[(&str, &str, &str)] = &[];

#[test]
fn modules_import_each_other_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = read_tree(&src);
    let graph = Graph::of(&files);
    let mut problems = Vec::new();
    for (from, to, why) in ALLOWED {
        if !graph.edges.contains_key(&(from.to_string(), to.to_string())) {
            problems.push(format!(
                "allow-listed edge {from} -> {to} no longer exists: remove it from ALLOWED ({why})"
            ));
        }
    }
    let allowed: BTreeSet<(String, String)> = ALLOWED
        .iter()
        .map(|(f, t, _)| (f.to_string(), t.to_string()))
        .collect();
    problems.extend(graph.cycles(&allowed));
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n\n"));
}

#[test]
fn the_check_sees_every_kind_of_path() {
    let files = vec![
        (
            "lib.rs".to_string(),
            "pub mod a; pub mod b; pub mod c; pub mod fluxv1;".to_string(),
        ),
        (
            "a.rs".into(),
            "use crate::{b::{self, X}, c};\nfn f() { b::g(); }".into(),
        ),
        (
            "b.rs".into(),
            "// use crate::a;\nfn g() { let s = \"crate::a::x\"; crate::c::h(); }".into(),
        ),
        (
            "c.rs".into(),
            "#[cfg(test)]\nmod tests { use super::*; fn t() { r#type(); '{'; } }".into(),
        ),
        ("fluxv1/mod.rs".into(), "pub mod x; pub mod y;".into()),
        ("fluxv1/x.rs".into(), "use super::y::Y; pub struct X;".into()),
        (
            "fluxv1/y.rs".into(),
            "pub struct Y(super::x::X); fn f() { crate::a::f(); }".into(),
        ),
    ];
    let graph = Graph::of(&files);
    let edges: BTreeSet<_> = graph.edges.keys().cloned().collect();
    let want: BTreeSet<(String, String)> = [
        ("a", "b"),
        ("a", "c"),
        ("b", "c"),
        ("fluxv1::x", "fluxv1::y"),
        ("fluxv1::y", "fluxv1::x"),
        ("fluxv1::y", "a"),
    ]
    .iter()
    .map(|(f, t)| (f.to_string(), t.to_string()))
    .collect();
    assert_eq!(edges, want);
    let cycles = graph.cycles(&BTreeSet::new());
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert!(
        cycles[0].contains("fluxv1::x -> fluxv1::y -> fluxv1::x"),
        "{}",
        cycles[0]
    );
}

/// Every `.rs` file under `src/` but the binaries, as (path relative to src, text).
fn read_tree(src: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable") {
            let path = entry.expect("src is readable").path();
            let rel = path
                .strip_prefix(src)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            if path.is_dir() {
                if rel != "bin" {
                    dirs.push(path);
                }
            } else if rel.ends_with(".rs") && rel != "main.rs" {
                out.push((rel, std::fs::read_to_string(&path).expect("readable source")));
            }
        }
    }
    out.sort();
    out
}

/// `a/b/c.rs` → `[a, b, c]`; `a/mod.rs` and `a.rs` → `[a]`; `lib.rs` → `[]`.
fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.trim_end_matches(".rs").split('/').map(String::from).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
    Lit,
}

/// Rust tokens with comments and the insides of literals dropped, each with its line.
fn lex(text: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    while i < c.len() {
        let ch = c[i];
        let start_line = line;
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if ch == '"' || (ch == 'b' && at(i + 1) == '"') {
            i += if ch == 'b' { 2 } else { 1 };
            while i < c.len() && c[i] != '"' {
                line += usize::from(c[i] == '\n');
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push((Tok::Lit, start_line));
        } else if (ch == 'r' || (ch == 'b' && at(i + 1) == 'r')) && {
            let j = i + if ch == 'b' { 2 } else { 1 };
            let hashes = (j..).take_while(|&k| at(k) == '#').count();
            at(j + hashes) == '"'
        } {
            // A raw string: ends at a quote followed by as many hashes.
            let j = i + if ch == 'b' { 2 } else { 1 };
            let hashes = (j..).take_while(|&k| at(k) == '#').count();
            i = j + hashes + 1;
            while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|h| at(i + h) == '#')) {
                line += usize::from(c[i] == '\n');
                i += 1;
            }
            i += 1 + hashes;
            out.push((Tok::Lit, start_line));
        } else if ch == 'r' && at(i + 1) == '#' && (at(i + 2).is_alphabetic() || at(i + 2) == '_') {
            i += 2;
        } else if ch == '\'' || (ch == 'b' && at(i + 1) == '\'') {
            let j = i + if ch == 'b' { 1 } else { 0 };
            if at(j + 1) == '\\' {
                i = j + 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push((Tok::Lit, start_line));
            } else if at(j + 2) == '\'' {
                i = j + 3;
                out.push((Tok::Lit, start_line));
            } else {
                // A lifetime or a label: its name follows as an identifier.
                i = j + 1;
            }
        } else if ch.is_ascii_digit() {
            while i < c.len()
                && (c[i].is_alphanumeric() || c[i] == '_' || (c[i] == '.' && at(i + 1).is_ascii_digit()))
            {
                i += 1;
            }
            out.push((Tok::Lit, start_line));
        } else if ch.is_alphabetic() || ch == '_' {
            let s = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(c[s..i].iter().collect()), start_line));
        } else if ch == ':' && at(i + 1) == ':' {
            i += 2;
            out.push((Tok::PathSep, start_line));
        } else {
            i += 1;
            out.push((Tok::Punct(ch), start_line));
        }
    }
    out
}

struct Graph {
    /// (from, to) → where it is first seen: `file:line path`.
    edges: BTreeMap<(String, String), String>,
}

impl Graph {
    fn of(files: &[(String, String)]) -> Graph {
        let modules: BTreeSet<Vec<String>> = files.iter().map(|(rel, _)| module_path(rel)).collect();
        let mut edges = BTreeMap::new();
        for (rel, text) in files {
            let file_module = module_path(rel);
            let from = node(&file_module, &modules);
            for (path, line) in paths(&file_module, text, &modules) {
                let to = node(&path, &modules);
                if to != from {
                    edges
                        .entry((from.clone(), to))
                        .or_insert_with(|| format!("src/{rel}:{line} {}", path.join("::")));
                }
            }
        }
        Graph { edges }
    }

    /// One message per group of modules that reach each other, naming one cycle and
    /// where each of its edges is.
    fn cycles(&self, allowed: &BTreeSet<(String, String)>) -> Vec<String> {
        let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (from, to) in self.edges.keys() {
            if !allowed.contains(&(from.clone(), to.clone())) {
                next.entry(from).or_default().push(to);
            }
        }
        let reach = |start: &str| -> BTreeSet<String> {
            let mut seen = BTreeSet::new();
            let mut todo = vec![start.to_string()];
            while let Some(n) = todo.pop() {
                for m in next.get(n.as_str()).into_iter().flatten() {
                    if seen.insert(m.to_string()) {
                        todo.push(m.to_string());
                    }
                }
            }
            seen
        };
        let reached: BTreeMap<&str, BTreeSet<String>> = next.keys().map(|n| (*n, reach(n))).collect();
        let mut done = BTreeSet::new();
        let mut out = Vec::new();
        for (&n, r) in &reached {
            if done.contains(n) || !r.contains(n) {
                continue;
            }
            let group: BTreeSet<&str> = reached
                .iter()
                .filter(|(m, rm)| rm.contains(n) && r.contains(**m))
                .map(|(m, _)| *m)
                .collect();
            done.extend(group.iter().copied());
            // The shortest way back to n, breadth first.
            let mut back: BTreeMap<&str, &str> = BTreeMap::new();
            let mut queue = std::collections::VecDeque::from([n]);
            'search: while let Some(m) = queue.pop_front() {
                for &k in next.get(m).into_iter().flatten() {
                    if k == n {
                        back.insert(n, m);
                        break 'search;
                    }
                    if group.contains(k) && !back.contains_key(k) {
                        back.insert(k, m);
                        queue.push_back(k);
                    }
                }
            }
            let mut cycle = vec![n];
            let mut at = back[n];
            while at != n {
                cycle.push(at);
                at = back[at];
            }
            cycle.push(n);
            cycle.reverse();
            let mut msg = format!(
                "import cycle: {}\n  modules that reach each other: {}",
                cycle.join(" -> "),
                group.iter().copied().collect::<Vec<_>>().join(", ")
            );
            for pair in cycle.windows(2) {
                let key = (pair[0].to_string(), pair[1].to_string());
                msg.push_str(&format!("\n  {} -> {}: {}", pair[0], pair[1], self.edges[&key]));
            }
            out.push(msg);
        }
        out
    }
}

/// The node a module path (or an item's path) belongs to.
fn node(path: &[String], modules: &BTreeSet<Vec<String>>) -> String {
    let Some(top) = path.first() else {
        return "crate".into();
    };
    if !modules.contains(&path[..1]) {
        return "crate".into();
    }
    if SPLIT.contains(&top.as_str()) && path.len() > 1 && modules.contains(&path[..2]) {
        return format!("{top}::{}", path[1]);
    }
    top.clone()
}

/// Every path in `text` that names a module of the crate, made absolute, with its line.
fn paths(file_module: &[String], text: &str, modules: &BTreeSet<Vec<String>>) -> Vec<(Vec<String>, usize)> {
    let toks = lex(text);
    let mut out = Vec::new();
    let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Inline modules (`mod tests { … }`) open at a brace depth.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let here = |inline: &[(String, usize)]| -> Vec<String> {
        let mut m = file_module.to_vec();
        m.extend(inline.iter().map(|(n, _)| n.clone()));
        m
    };
    let resolve = |segs: &[String],
                   module: &[String],
                   aliases: &BTreeMap<String, Vec<String>>|
     -> Option<Vec<String>> {
        let first = segs.first()?;
        let mut abs: Vec<String>;
        let rest: &[String];
        match first.as_str() {
            "crate" => {
                abs = Vec::new();
                rest = &segs[1..];
            }
            "super" | "self" => {
                abs = module.to_vec();
                let ups = segs.iter().take_while(|s| *s == "super").count();
                for _ in 0..ups {
                    abs.pop();
                }
                rest = if ups == 0 { &segs[1..] } else { &segs[ups..] };
            }
            name => {
                let mut child = module.to_vec();
                child.push(name.to_string());
                if modules.contains(&child) {
                    abs = module.to_vec();
                    rest = segs;
                } else if let Some(target) = aliases.get(name) {
                    abs = target.clone();
                    rest = &segs[1..];
                } else {
                    return None;
                }
            }
        }
        abs.extend(rest.iter().filter(|s| *s != "self").cloned());
        Some(abs)
    };
    let mut i = 0;
    while i < toks.len() {
        let (tok, line) = &toks[i];
        match tok {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                while inline.last().is_some_and(|(_, d)| *d > depth) {
                    inline.pop();
                }
            }
            Tok::Ident(kw) if kw == "mod" => {
                if let (Some((Tok::Ident(name), _)), Some((Tok::Punct('{'), _))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    depth += 1;
                    inline.push((name.clone(), depth));
                    i += 3;
                    continue;
                }
            }
            Tok::Ident(kw) if kw == "use" => {
                let module = here(&inline);
                let mut leaves = Vec::new();
                i = use_tree(&toks, i + 1, Vec::new(), &mut leaves);
                for (segs, alias) in leaves {
                    if let Some(abs) = resolve(&segs, &module, &aliases) {
                        if let Some(alias) = alias {
                            aliases.insert(alias, abs.clone());
                        }
                        out.push((abs, *line));
                    }
                }
                continue;
            }
            Tok::Ident(first) => {
                let after_path = i > 0 && matches!(toks[i - 1].0, Tok::PathSep | Tok::Punct('.'));
                if !after_path && toks.get(i + 1).map(|t| &t.0) == Some(&Tok::PathSep) {
                    let mut segs = vec![first.clone()];
                    let mut j = i + 1;
                    while toks.get(j).map(|t| &t.0) == Some(&Tok::PathSep) {
                        match toks.get(j + 1) {
                            Some((Tok::Ident(s), _)) => segs.push(s.clone()),
                            _ => break,
                        }
                        j += 2;
                    }
                    if let Some(abs) = resolve(&segs, &here(&inline), &aliases) {
                        out.push((abs, *line));
                    }
                    i = j;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Reads one use tree from `i`; pushes each leaf (its path and the name it brings in)
/// and returns the index after it.
fn use_tree(
    toks: &[(Tok, usize)],
    mut i: usize,
    mut prefix: Vec<String>,
    leaves: &mut Vec<(Vec<String>, Option<String>)>,
) -> usize {
    if toks.get(i).map(|t| &t.0) == Some(&Tok::PathSep) {
        i += 1;
    }
    loop {
        match toks.get(i).map(|t| &t.0) {
            Some(Tok::Punct('{')) => {
                i += 1;
                loop {
                    match toks.get(i).map(|t| &t.0) {
                        Some(Tok::Punct('}')) => return i + 1,
                        Some(Tok::Punct(',')) => i += 1,
                        None => return i,
                        _ => i = use_tree(toks, i, prefix.clone(), leaves),
                    }
                }
            }
            Some(Tok::Punct('*')) => {
                leaves.push((prefix, None));
                return i + 1;
            }
            Some(Tok::Ident(s)) => {
                prefix.push(s.clone());
                i += 1;
                if toks.get(i).map(|t| &t.0) == Some(&Tok::PathSep) {
                    i += 1;
                    continue;
                }
                let mut alias = prefix.last().cloned();
                if alias.as_deref() == Some("self") {
                    alias = prefix.iter().rev().nth(1).cloned();
                }
                if let Some((Tok::Ident(kw), _)) = toks.get(i)
                    && kw == "as"
                {
                    alias = match toks.get(i + 1) {
                        Some((Tok::Ident(a), _)) if a != "_" => Some(a.clone()),
                        _ => None,
                    };
                    i += 2;
                }
                leaves.push((prefix, alias));
                if toks.get(i).map(|t| &t.0) == Some(&Tok::Punct(';')) {
                    i += 1;
                }
                return i;
            }
            _ => return i + 1,
        }
    }
}
