//! The module layering of `src/`, read from the source text (std only): the graph between the
//! top-level modules has no cycle, `loader` does not import `model`, `session` imports neither
//! `ops` nor the executor's internals (only `graph`'s root API), `tokenizer` does not import
//! `loader` (it does not parse GGUF), `error` is a leaf; and no file is over 700 lines, no
//! function over 120, except those on [`SIZE_EXCEPTIONS`].
//!
//! How the graph is read: `src/foo.rs` and everything under `src/foo/` is module `foo`
//! (`lib.rs` and `main.rs` are not modules; `src/cli/` is the binary's module `cli`). An edge
//! `foo → bar` is any path in code that starts `crate::bar` (also `$crate::`, `fado::` in the
//! binary, and `super::` chains that climb to the crate root), in a `use` (grouped trees like
//! `use crate::{a, b::{c, d}}` included) or anywhere in an expression or type; a name that
//! `lib.rs` re-exports (`crate::Result`) counts as its module. Comments, doc comments and
//! string/char literals are blanked first. `#[cfg(test)]` items (the unit-test modules) are
//! left out of the graph: tests may reach across layers to build their inputs and check
//! against CPU references; they still count towards the size limits.
//!
//! The scanner is a set of plain functions on (path, text) pairs; the `scanner_*` tests at the
//! end feed them synthetic files so that each rule is seen to fail.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

/// No file in `src/` is longer than this many lines (all lines, unit tests included).
const MAX_FILE_LINES: usize = 700;
/// No function is longer than this many lines, from `fn` to its closing brace.
const MAX_FN_LINES: usize = 120;
/// Exceptions to the size limits: (`src/file.rs` or `src/file.rs::fn_name`, why). Each one must
/// still be needed (an entry that no longer exceeds its limit fails the test) and must be
/// justified in the restructuring note.
const SIZE_EXCEPTIONS: &[(&str, &str)] = &[];

/// The module every other may use and that uses none.
const LEAF: &str = "error";

// ---------------------------------------------------------------------------------------------
// Reading src/

/// Every `.rs` file under `src/` as (`src/…` path with `/`, text), sorted by path.
fn src_files() -> Vec<(String, String)> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let rel = format!("{rel}/{name}");
            if p.is_dir() {
                walk(&p, &rel, out);
            } else if name.ends_with(".rs") {
                let text =
                    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                out.push((rel, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        "src",
        &mut out,
    );
    assert!(
        out.iter().any(|(p, _)| p == "src/lib.rs"),
        "src/lib.rs not found"
    );
    out
}

/// The module path of a file: `src/model/llama.rs` → [model, llama], `src/model/mod.rs` →
/// [model], `src/session.rs` → [session]; `lib.rs` and `main.rs` → [].
fn module_path(path: &str) -> Vec<String> {
    let rel = path.strip_prefix("src/").unwrap_or(path);
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut segs: Vec<String> = rel.split('/').map(str::to_string).collect();
    if matches!(segs.last().map(String::as_str), Some("mod")) {
        segs.pop();
    }
    if segs.len() == 1 && (segs[0] == "lib" || segs[0] == "main") {
        segs.clear();
    }
    segs
}

/// The top-level module a file belongs to (None for lib.rs and main.rs).
fn top_module(path: &str) -> Option<String> {
    module_path(path).into_iter().next()
}

// ---------------------------------------------------------------------------------------------
// Lexing

/// The text with comments (line, doc and nested block comments) and the contents of string,
/// byte-string, raw-string and char literals replaced by spaces; newlines are kept, so line
/// numbers stay.
fn blank_comments_and_literals(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out: Vec<char> = Vec::with_capacity(c.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let n = c.len();
    let mut i = 0;
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    while i < n {
        let prev_ident = i > 0 && ident(c[i - 1]);
        // A byte literal's `b` (b'x', b"x") is a prefix, not an identifier before the quote.
        let byte_prefix = i > 0 && c[i - 1] == 'b' && (i < 2 || !ident(c[i - 2]));
        if c[i] == '/' && i + 1 < n && c[i + 1] == '/' {
            while i < n && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && i + 1 < n && c[i + 1] == '*' {
            let mut depth = 0;
            while i < n {
                if c[i] == '/' && i + 1 < n && c[i + 1] == '*' {
                    depth += 1;
                    out.push(' ');
                    out.push(' ');
                    i += 2;
                } else if c[i] == '*' && i + 1 < n && c[i + 1] == '/' {
                    depth -= 1;
                    out.push(' ');
                    out.push(' ');
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if !prev_ident && (c[i] == 'r' || (c[i] == 'b' && i + 1 < n && c[i + 1] == 'r')) && {
            let j = if c[i] == 'b' { i + 2 } else { i + 1 };
            let mut k = j;
            while k < n && c[k] == '#' {
                k += 1;
            }
            k < n && c[k] == '"'
        } {
            // Raw string: r"…", r#"…"#, br##"…"##.
            let j = if c[i] == 'b' { i + 2 } else { i + 1 };
            let mut k = j;
            while c[k] == '#' {
                k += 1;
            }
            let hashes = k - j;
            out.extend(&c[i..=k]);
            i = k + 1;
            while i < n {
                if c[i] == '"' && (1..=hashes).all(|h| i + h < n && c[i + h] == '#') {
                    out.extend(&c[i..=i + hashes]);
                    i += hashes + 1;
                    break;
                }
                out.push(blank(c[i]));
                i += 1;
            }
        } else if c[i] == '"' {
            out.push('"');
            i += 1;
            while i < n && c[i] != '"' {
                if c[i] == '\\' && i + 1 < n {
                    out.push(' ');
                    out.push(blank(c[i + 1]));
                    i += 2;
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            if i < n {
                out.push('"');
                i += 1;
            }
        } else if c[i] == '\'' && (!prev_ident || byte_prefix) {
            // A char literal ('x', '\n', '\u{7f}', '{'), or a lifetime / label ('a) kept as is.
            if i + 1 < n && c[i + 1] == '\\' {
                out.push('\'');
                i += 1;
                while i < n && c[i] != '\'' {
                    out.push(' ');
                    i += 1;
                    if i < n && c[i - 1] == '\\' {
                        out.push(' ');
                        i += 1;
                    }
                }
                if i < n {
                    out.push('\'');
                    i += 1;
                }
            } else if i + 2 < n && c[i + 2] == '\'' {
                out.extend(['\'', ' ', '\'']);
                i += 3;
            } else {
                out.push('\'');
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out.into_iter().collect()
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

/// Tokens of blanked text with their 1-based line numbers: identifiers (keywords included),
/// `::`, and single punctuation characters; numbers and whitespace are dropped.
fn tokens(text: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphabetic() || ch == '_' {
            let s = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(c[s..i].iter().collect()), line));
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '.') {
                i += 1;
            }
        } else if ch == ':' && i + 1 < c.len() && c[i + 1] == ':' {
            out.push((Tok::Path, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// The blanked text with every `#[cfg(test)]` item (attribute through the item's matching `}`
/// or its `;`) blanked too, newlines kept.
fn blank_cfg_test(text: &str) -> String {
    let mut c: Vec<char> = text.chars().collect();
    let pat: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut i = 0;
    while i + pat.len() <= c.len() {
        if c[i..i + pat.len()] != pat[..] {
            i += 1;
            continue;
        }
        let start = i;
        let mut j = i + pat.len();
        let mut depth = 0usize;
        while j < c.len() {
            match c[j] {
                '{' => depth += 1,
                '}' => {
                    if depth <= 1 {
                        break;
                    }
                    depth -= 1;
                }
                ';' if depth == 0 => break,
                _ => {}
            }
            j += 1;
        }
        let end = j.min(c.len() - 1);
        for ch in &mut c[start..=end] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
        i = end + 1;
    }
    c.into_iter().collect()
}

// ---------------------------------------------------------------------------------------------
// References between modules

/// One path in code that names a top-level module.
#[derive(Debug, Clone)]
struct Reference {
    /// The module named: the path's first segment after the crate root.
    module: String,
    /// The path from the crate root, e.g. `crate::graph::exec::Step`.
    path: String,
    line: usize,
}

/// Expand a use tree (or an expression path) starting at `toks[i]`, below `prefix`: every leaf
/// path with the line of its last segment. Returns the index after the tree.
fn expand_tree(
    toks: &[(Tok, usize)],
    mut i: usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, usize)>,
) -> usize {
    match toks.get(i) {
        Some((Tok::Punct('{'), _)) => {
            i += 1;
            loop {
                match toks.get(i) {
                    None => return i,
                    Some((Tok::Punct('}'), _)) => return i + 1,
                    Some((Tok::Punct(','), _)) => i += 1,
                    Some(_) => {
                        let before = i;
                        i = expand_tree(toks, i, prefix, out);
                        if i == before {
                            i += 1;
                        }
                    }
                }
            }
        }
        Some((Tok::Punct('*'), line)) => {
            let mut p = prefix.to_vec();
            p.push("*".into());
            out.push((p, *line));
            i + 1
        }
        Some((Tok::Ident(name), line)) => {
            let mut p = prefix.to_vec();
            p.push(name.clone());
            if matches!(toks.get(i + 1), Some((Tok::Path, _)))
                && matches!(
                    toks.get(i + 2),
                    Some((Tok::Ident(_), _)) | Some((Tok::Punct('{' | '*'), _))
                )
            {
                expand_tree(toks, i + 2, &p, out)
            } else {
                out.push((p, *line));
                i + 1
            }
        }
        _ => i,
    }
}

/// Every path in `file`'s code (cfg(test) items left out) that starts at the crate root and
/// names one of `modules` (directly, or through a root re-export in `reexports`).
fn references(
    file: &str,
    text: &str,
    modules: &BTreeSet<String>,
    reexports: &BTreeMap<String, String>,
) -> Vec<Reference> {
    let clean = blank_cfg_test(&blank_comments_and_literals(text));
    let toks = tokens(&clean);
    let depth = module_path(file).len();
    let mut refs = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        // Where a path from the crate root starts: `crate::`, `fado::` (the binary's view of
        // the library), or `super::` climbing exactly to the root.
        let prev_is_path = i > 0 && toks[i - 1].0 == Tok::Path;
        let root_end = match &toks[i].0 {
            Tok::Ident(w) if !prev_is_path && (w == "crate" || w == "fado") => Some(i + 1),
            Tok::Ident(w) if !prev_is_path && w == "super" => {
                let mut k = i;
                let mut supers = 0;
                while matches!(&toks.get(k), Some((Tok::Ident(w), _)) if w == "super")
                    && matches!(toks.get(k + 1), Some((Tok::Path, _)))
                {
                    supers += 1;
                    k += 2;
                }
                (supers == depth && depth > 0).then_some(k - 1)
            }
            _ => None,
        };
        let Some(end) = root_end else {
            i += 1;
            continue;
        };
        if !matches!(toks.get(end), Some((Tok::Path, _))) {
            i += 1;
            continue;
        }
        let mut paths = Vec::new();
        let next = expand_tree(&toks, end + 1, &["crate".to_string()], &mut paths);
        for (p, line) in paths {
            let Some(first) = p.get(1) else { continue };
            let module = if modules.contains(first) {
                first.clone()
            } else if let Some(m) = reexports.get(first) {
                m.clone()
            } else {
                continue;
            };
            refs.push(Reference {
                module,
                path: p.join("::"),
                line,
            });
        }
        i = next.max(i + 1);
    }
    refs
}

/// Names that `lib.rs` re-exports at the crate root (`pub use error::{Error, Result}`): name →
/// module.
fn root_reexports(lib: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let toks = tokens(&blank_comments_and_literals(lib));
    let mut map = BTreeMap::new();
    for i in 0..toks.len() {
        if toks[i].0 != Tok::Ident("use".into()) {
            continue;
        }
        let mut paths = Vec::new();
        expand_tree(&toks, i + 1, &[], &mut paths);
        for (p, _) in paths {
            let first = p[0].as_str();
            let first = if first == "crate" || first == "self" {
                p.get(1).map(String::as_str).unwrap_or("")
            } else {
                first
            };
            if modules.contains(first) {
                if let Some(last) = p.last().filter(|l| *l != "*" && *l != first) {
                    map.insert(last.clone(), first.to_string());
                }
            }
        }
    }
    map
}

/// Where one module names another: file, line and the path.
#[derive(Debug, Clone)]
struct Site {
    file: String,
    line: usize,
    path: String,
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}:{} ({})", self.file, self.line, self.path)
    }
}

/// The graph between top-level modules: from → to → every site of the edge.
type Graph = BTreeMap<String, BTreeMap<String, Vec<Site>>>;

/// The module graph of a set of files (`src/…` paths).
fn module_graph(files: &[(String, String)]) -> Graph {
    let modules: BTreeSet<String> = files.iter().filter_map(|(p, _)| top_module(p)).collect();
    let reexports = files
        .iter()
        .find(|(p, _)| p == "src/lib.rs")
        .map(|(_, t)| root_reexports(t, &modules))
        .unwrap_or_default();
    let mut g = Graph::new();
    for m in &modules {
        g.entry(m.clone()).or_default();
    }
    for (file, text) in files {
        let Some(from) = top_module(file) else {
            continue;
        };
        for r in references(file, text, &modules, &reexports) {
            if r.module == from {
                continue;
            }
            g.get_mut(&from)
                .unwrap()
                .entry(r.module.clone())
                .or_default()
                .push(Site {
                    file: file.clone(),
                    line: r.line,
                    path: r.path,
                });
        }
    }
    g
}

fn sites_text(sites: &[Site]) -> String {
    let mut s: Vec<String> = sites.iter().take(4).map(|x| x.to_string()).collect();
    if sites.len() > 4 {
        s.push(format!("and {} more", sites.len() - 4));
    }
    s.join("; ")
}

/// Every cycle among the modules: for each strongly connected set of two or more modules, one
/// shortest cycle through its first module with each edge's file:line, then every other edge
/// inside the set. Empty when the graph is acyclic.
fn cycles(g: &Graph) -> Vec<String> {
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut q = VecDeque::from([from.to_string()]);
        while let Some(m) = q.pop_front() {
            for to in g.get(&m).map(|e| e.keys()).into_iter().flatten() {
                if seen.insert(to.clone()) {
                    q.push_back(to.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> = g.keys().map(|m| (m, reach(m))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for m in g.keys() {
        if done.contains(m) || !reach[m].contains(m) {
            continue;
        }
        let scc: BTreeSet<String> = g
            .keys()
            .filter(|o| reach[m].contains(*o) && reach[*o].contains(m))
            .cloned()
            .collect();
        done.extend(scc.iter().cloned());
        // Shortest cycle m → … → m inside the set (breadth first).
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut q = VecDeque::from([m.clone()]);
        let mut closing = None;
        'bfs: while let Some(a) = q.pop_front() {
            for b in g[&a].keys().filter(|b| scc.contains(*b)) {
                if b == m {
                    closing = Some(a.clone());
                    break 'bfs;
                }
                if !prev.contains_key(b) {
                    prev.insert(b.clone(), a.clone());
                    q.push_back(b.clone());
                }
            }
        }
        let mut chain = vec![m.clone()];
        let mut at = closing.expect("a module in a cycle reaches itself");
        while &at != m {
            chain.push(at.clone());
            at = prev[&at].clone();
        }
        chain[1..].reverse();
        chain.push(m.clone());
        let mut msg = format!("cycle: {}", chain.join(" → "));
        let mut on_cycle = BTreeSet::new();
        for w in chain.windows(2) {
            on_cycle.insert((w[0].clone(), w[1].clone()));
            msg += &format!(
                "\n    {} → {}: {}",
                w[0],
                w[1],
                sites_text(&g[&w[0]][&w[1]])
            );
        }
        for a in &scc {
            for (b, sites) in g[a].iter().filter(|(b, _)| scc.contains(*b)) {
                if !on_cycle.contains(&(a.clone(), b.clone())) {
                    msg += &format!("\n    (also in the cycle) {a} → {b}: {}", sites_text(sites));
                }
            }
        }
        out.push(msg);
    }
    out
}

/// Sites where `from` names `to` and `forbidden` says the path is not allowed.
fn forbidden_sites(g: &Graph, from: &str, to: &str, forbidden: impl Fn(&str) -> bool) -> Vec<Site> {
    g.get(from)
        .and_then(|e| e.get(to))
        .map(|sites| {
            sites
                .iter()
                .filter(|s| forbidden(&s.path))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The submodules of `module` (files `src/module/x.rs` or folders `src/module/x/`).
fn submodules(files: &[(String, String)], module: &str) -> BTreeSet<String> {
    files
        .iter()
        .filter_map(|(p, _)| {
            let mp = module_path(p);
            (mp.len() >= 2 && mp[0] == module).then(|| mp[1].clone())
        })
        .collect()
}

/// The layering rules on a set of files: each broken rule with its sites.
fn layering_violations(files: &[(String, String)]) -> BTreeMap<&'static str, Vec<String>> {
    let g = module_graph(files);
    let mut v: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let lines = |sites: Vec<Site>| sites.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    v.insert("cycles", cycles(&g));
    v.insert(
        "loader imports model",
        lines(forbidden_sites(&g, "loader", "model", |_| true)),
    );
    let graph_internals = submodules(files, "graph");
    let mut session = lines(forbidden_sites(&g, "session", "ops", |_| true));
    session.extend(lines(forbidden_sites(&g, "session", "graph", |p| {
        p.split("::")
            .nth(2)
            .is_some_and(|s| graph_internals.contains(s))
    })));
    v.insert("session imports ops or graph internals", session);
    v.insert(
        "tokenizer imports loader",
        lines(forbidden_sites(&g, "tokenizer", "loader", |_| true)),
    );
    let leaf: Vec<String> = g
        .get(LEAF)
        .into_iter()
        .flat_map(|e| e.iter())
        .map(|(to, sites)| format!("{LEAF} → {to}: {}", sites_text(sites)))
        .collect();
    v.insert("error is not a leaf", leaf);
    v
}

#[track_caller]
fn assert_rule(rule: &str) {
    let v = layering_violations(&src_files());
    let found = v.get(rule).unwrap_or_else(|| panic!("no rule {rule:?}"));
    assert!(found.is_empty(), "{rule}:\n  {}", found.join("\n  "));
}

// ---------------------------------------------------------------------------------------------
// Sizes

/// Every function in blanked text: (name, first line, line count from `fn` to its `}`).
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let toks = tokens(&blank_comments_and_literals(text));
    let mut out = Vec::new();
    for i in 0..toks.len() {
        let (Tok::Ident(kw), start) = &toks[i] else {
            continue;
        };
        let Some((Tok::Ident(name), _)) = toks.get(i + 1) else {
            continue;
        };
        if kw != "fn" {
            continue;
        }
        // The body: the first `{` outside parentheses and brackets, unless a `;` comes first.
        let mut j = i + 2;
        let mut nest = 0i32;
        let mut body = None;
        while j < toks.len() {
            match toks[j].0 {
                Tok::Punct('(' | '[') => nest += 1,
                Tok::Punct(')' | ']') => nest -= 1,
                Tok::Punct(';') if nest == 0 => break,
                Tok::Punct('{') if nest == 0 => {
                    body = Some(j);
                    break;
                }
                _ => {}
            }
            j += 1;
        }
        let Some(open) = body else { continue };
        let mut depth = 0;
        for (t, line) in &toks[open..] {
            match t {
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => {
                    depth -= 1;
                    if depth == 0 {
                        out.push((name.clone(), *start, line - start + 1));
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// Files over [`MAX_FILE_LINES`] and functions over [`MAX_FN_LINES`] that `allowed` does not
/// name, and `allowed` entries that exceed nothing (stale).
fn size_violations(files: &[(String, String)], allowed: &[(&str, &str)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut used = BTreeSet::new();
    let mut check = |key: String, what: String, over: bool| {
        if !over {
            return;
        }
        if let Some((k, _)) = allowed.iter().find(|(k, _)| *k == key) {
            used.insert(*k);
        } else {
            out.push(what);
        }
    };
    for (file, text) in files {
        let n = text.lines().count();
        check(
            file.clone(),
            format!("{file}: {n} lines (limit {MAX_FILE_LINES})"),
            n > MAX_FILE_LINES,
        );
        for (name, line, len) in functions(text) {
            check(
                format!("{file}::{name}"),
                format!("{file}:{line}: fn {name} is {len} lines (limit {MAX_FN_LINES})"),
                len > MAX_FN_LINES,
            );
        }
    }
    for (k, why) in allowed {
        if !used.contains(k) {
            out.push(format!(
                "SIZE_EXCEPTIONS names {k} ({why}), which is within the limits or not found"
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The rules on src/

#[test]
fn no_cycles_among_top_level_modules() {
    assert_rule("cycles");
}

#[test]
fn loader_does_not_import_model() {
    assert_rule("loader imports model");
}

#[test]
fn session_imports_neither_ops_nor_graph_internals() {
    assert_rule("session imports ops or graph internals");
}

#[test]
fn tokenizer_does_not_import_loader() {
    assert_rule("tokenizer imports loader");
}

#[test]
fn error_is_a_leaf() {
    assert_rule("error is not a leaf");
}

#[test]
fn no_file_over_700_lines_and_no_function_over_120() {
    let v = size_violations(&src_files(), SIZE_EXCEPTIONS);
    assert!(v.is_empty(), "over the size limits:\n  {}", v.join("\n  "));
}

/// The scan sees the modules and edges it should (a reader that found nothing would pass every
/// rule); prints the whole graph (`--nocapture`).
#[test]
fn the_scan_sees_the_known_edges_of_src() {
    let files = src_files();
    let g = module_graph(&files);
    for (a, e) in &g {
        for (b, s) in e {
            eprintln!("{a} → {b}: {}", sites_text(s));
        }
    }
    for m in [
        "gpu",
        "graph",
        "ops",
        "model",
        "session",
        "loader",
        "tokenizer",
        "error",
    ] {
        assert!(g.contains_key(m), "module {m} not found: {:?}", g.keys());
    }
    // Edges that every layering keeps: the executor drives the device, the model builds
    // graphs, sessions run models, the server serves them.
    for (a, b) in [
        ("graph", "gpu"),
        ("model", "graph"),
        ("session", "model"),
        ("server", "model"),
    ] {
        assert!(
            g[a].contains_key(b),
            "no edge {a} → {b} seen; edges of {a}: {:?}",
            g[a].keys()
        );
    }
    let fns: usize = files.iter().map(|(_, t)| functions(t).len()).sum();
    assert!(fns > 300, "only {fns} functions found in src/");
}

// ---------------------------------------------------------------------------------------------
// The scanner on synthetic files: each rule can fail.

fn fake(files: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = files
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect();
    if !v.iter().any(|(p, _)| p == "src/lib.rs") {
        v.push((
            "src/lib.rs".into(),
            "pub use error::{Error, Result};".into(),
        ));
    }
    if !v.iter().any(|(p, _)| p == "src/error.rs") {
        v.push(("src/error.rs".into(), "pub enum Error {}".into()));
    }
    v
}

#[track_caller]
fn assert_found(v: &BTreeMap<&str, Vec<String>>, rule: &str, part: &str) {
    assert!(
        v[rule].iter().any(|s| s.contains(part)),
        "{rule}: {part:?} not in {:?}",
        v[rule]
    );
}

fn edge_lines(g: &Graph, a: &str, b: &str) -> Vec<usize> {
    g.get(a)
        .and_then(|e| e.get(b))
        .map(|s| s.iter().map(|s| s.line).collect())
        .unwrap_or_default()
}

#[test]
fn scanner_reads_use_trees_paths_and_ignores_comments_literals_and_unit_tests() {
    let files = fake(&[
        (
            "src/a/mod.rs",
            "use crate::{b, c::{self, X}};\n\
             // use crate::d;\n\
             /// crate::d::Doc\n\
             /* crate::d /* nested */ crate::d */\n\
             const S: &str = \"crate::d\";\n\
             const R: &str = r#\"crate::d \"quoted\" \"#;\n\
             const C: char = '{';\n\
             fn f<'a>(x: &'a str) -> crate::Result<()> { crate::e::g(x); Ok(()) }\n\
             #[cfg(test)]\n\
             mod tests { use crate::d; fn t() { crate::d::x(); } }\n\
             fn h() -> super::f::Y { todo!() }\n",
        ),
        ("src/b.rs", ""),
        ("src/c.rs", ""),
        ("src/d.rs", ""),
        ("src/e.rs", ""),
        (
            "src/f/inner.rs",
            "fn k() { super::super::c::z(); super::sibling(); }",
        ),
    ]);
    let g = module_graph(&files);
    assert_eq!(edge_lines(&g, "a", "b"), [1]);
    assert_eq!(edge_lines(&g, "a", "c"), [1, 1]);
    assert!(edge_lines(&g, "a", "d").is_empty(), "{:?}", g["a"]);
    assert_eq!(edge_lines(&g, "a", "e"), [8]);
    assert_eq!(
        edge_lines(&g, "a", "error"),
        [8],
        "crate::Result is error's"
    );
    assert_eq!(
        edge_lines(&g, "a", "f"),
        [11],
        "super:: from a top-level file"
    );
    assert_eq!(edge_lines(&g, "f", "c"), [1], "super::super:: to the root");
    assert_eq!(g["f"].len(), 1, "super:: inside f stays in f: {:?}", g["f"]);
    let paths: Vec<&str> = g["a"]["c"].iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["crate::c::self", "crate::c::X"]);
}

#[test]
fn scanner_reports_a_cycle_with_file_and_line_of_each_edge() {
    let files = fake(&[
        ("src/a.rs", "use crate::b::B;\n"),
        ("src/b/mod.rs", "mod x;\n"),
        ("src/b/x.rs", "\n\nfn f() { crate::c::g() }\n"),
        ("src/c.rs", "use crate::{a::A};\nuse crate::error::Error;\n"),
        ("src/d.rs", "use crate::a::A;\n"),
    ]);
    let c = cycles(&module_graph(&files));
    assert_eq!(c.len(), 1, "{c:?}");
    for part in [
        "a → b → c → a",
        "src/a.rs:1 (crate::b::B)",
        "src/b/x.rs:3 (crate::c::g)",
        "src/c.rs:1 (crate::a::A)",
    ] {
        assert!(c[0].contains(part), "{part:?} not in {}", c[0]);
    }
    assert!(
        !c[0].contains("src/d.rs"),
        "d is outside the cycle: {}",
        c[0]
    );
    // Without the closing edge: no cycle.
    let acyclic = fake(&[
        ("src/a.rs", "use crate::b::B;\n"),
        ("src/b.rs", "fn f() { crate::c::g() }\n"),
        ("src/c.rs", "use crate::error::Error;\n"),
    ]);
    assert!(cycles(&module_graph(&acyclic)).is_empty());
}

#[test]
fn scanner_rules_fail_on_forbidden_imports_and_pass_without_them() {
    let bad = fake(&[
        ("src/loader/gguf.rs", "use crate::model::config::LlamaConfig;\n"),
        ("src/model/mod.rs", ""),
        (
            "src/session.rs",
            "use crate::graph::Graph;\nuse crate::graph::{self, exec::Step};\nuse crate::ops::topk;\n",
        ),
        ("src/graph/mod.rs", "mod exec;\n"),
        ("src/graph/exec.rs", ""),
        ("src/ops/mod.rs", ""),
        ("src/tokenizer/mod.rs", "fn f() { crate::loader::gguf::read(); }\n"),
        ("src/error.rs", "use crate::tokenizer::Tokenizer;\n"),
    ]);
    let v = layering_violations(&bad);
    let has = |rule: &str, part: &str| assert_found(&v, rule, part);
    has("loader imports model", "src/loader/gguf.rs:1");
    has(
        "session imports ops or graph internals",
        "src/session.rs:2 (crate::graph::exec::Step)",
    );
    has(
        "session imports ops or graph internals",
        "src/session.rs:3 (crate::ops::topk)",
    );
    assert_eq!(
        v["session imports ops or graph internals"].len(),
        2,
        "graph::Graph is the root API"
    );
    has("tokenizer imports loader", "src/tokenizer/mod.rs:1");
    has("error is not a leaf", "error → tokenizer");
    let good = fake(&[
        ("src/loader/gguf.rs", "use crate::config::LlamaConfig;\n"),
        ("src/config.rs", ""),
        ("src/model/mod.rs", "use crate::loader;\n"),
        (
            "src/session.rs",
            "use crate::graph::Graph;\nuse crate::model::Model;\n",
        ),
        ("src/graph/exec.rs", ""),
        ("src/tokenizer/mod.rs", "use crate::error::Result;\n"),
    ]);
    let v = layering_violations(&good);
    assert!(v.values().all(Vec::is_empty), "{v:?}");
}

#[test]
fn scanner_flags_long_files_and_functions_and_stale_exceptions() {
    let body = |n: usize| "    let _ = 1;\n".repeat(n - 2);
    // A fn of exactly 120 lines and one of 121 (with a `{` in a string and a char).
    let text = format!(
        "fn ok() {{\n{}}}\nfn long(x: [u8; 4]) -> u8 {{\n    let _ = \"{{\"; let _ = '{{';\n{}}}\ntrait T {{ fn decl(&self); }}\n",
        body(120),
        body(120),
    );
    let fns = functions(&text);
    assert_eq!(
        fns.iter()
            .map(|(n, _, l)| (n.as_str(), *l))
            .collect::<Vec<_>>(),
        [("ok", 120), ("long", 121)]
    );
    let files = vec![("src/x.rs".to_string(), text.clone())];
    let v = size_violations(&files, &[]);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("src/x.rs:121: fn long is 121 lines"), "{v:?}");
    assert!(size_violations(&files, &[("src/x.rs::long", "test")]).is_empty());
    let stale = size_violations(
        &files,
        &[("src/x.rs::long", "test"), ("src/x.rs::ok", "no")],
    );
    assert!(
        stale.len() == 1 && stale[0].contains("src/x.rs::ok"),
        "{stale:?}"
    );
    let big = vec![("src/y.rs".to_string(), "\n".repeat(MAX_FILE_LINES + 1))];
    let v = size_violations(&big, &[]);
    assert!(
        v.len() == 1 && v[0].contains("src/y.rs: 701 lines"),
        "{v:?}"
    );
    let fits = vec![("src/y.rs".to_string(), "\n".repeat(MAX_FILE_LINES))];
    assert!(size_violations(&fits, &[]).is_empty());
}

/// The real tree with forbidden imports appended to one file of each module: every rule fires,
/// naming the added line.
#[test]
fn scanner_rules_fail_on_src_with_forbidden_imports_added() {
    let mut files = src_files();
    let mut add = |module: &str, code: &str| -> String {
        let (path, text) = files
            .iter_mut()
            .find(|(p, _)| top_module(p).as_deref() == Some(module))
            .unwrap_or_else(|| panic!("no file of module {module}"));
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(code);
        text.push('\n');
        format!("{path}:{}", text.lines().count())
    };
    let loader_site = add("loader", "use crate::model::Model;");
    add("model", "use crate::loader::WeightSource;");
    let session_ops = add("session", "use crate::ops::Op;");
    let session_exec = add("session", "fn bad() { crate::graph::exec::anything(); }");
    let tokenizer_site = add("tokenizer", "use crate::{loader::gguf};");
    let error_site = add("error", "use crate::tensor::DType;");
    let v = layering_violations(&files);
    let has = |rule: &str, part: &str| assert_found(&v, rule, part);
    has("cycles", "loader → model");
    has("cycles", &loader_site);
    has("loader imports model", &loader_site);
    has("session imports ops or graph internals", &session_ops);
    has("session imports ops or graph internals", &session_exec);
    has("tokenizer imports loader", &tokenizer_site);
    has("error is not a leaf", &error_site);
}
