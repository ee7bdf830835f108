//! The source files import one another in layers, lowest first: a file may use its own layer and
//! the ones below, never one above; no files import one another in a circle; and a room of the
//! lease manager or the filesystem never imports the `mod.rs` that composes it. Read from the
//! `crate::`, `super::` and `self::` paths of every file under src/ (`leasefs::` in main.rs), test
//! modules left out — the same graph `docs/architecture.md` describes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module is placed by its longest listed prefix (`lease` places
/// `lease::table` too); a new file must be placed here before this test passes.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundations",
        &[
            "clock",
            "diag",
            "error",
            "paths",
            "memlock",
            "logcap",
            "metrics",
            "notify",
            "tls",
            "trust",
            "statefile",
            "retry",
            "fields",
            "requester",
            "defaults",
            "workload",
        ],
    ),
    ("openbao client", &["openbao", "openbao_auth"]),
    ("entry model", &["render", "rotation", "policy", "secret", "audit"]),
    ("issuers and sources", &["issuer", "source", "attrs"]),
    ("lease manager", &["lease"]),
    ("filesystem", &["fs"]),
    ("adapter", &["fuse", "notifier"]),
    ("daemon", &["config", "demo", "daemon"]),
    ("command line", &["main", "cli"]),
];

/// Directories whose `mod.rs` composes rooms that must not know it, and the files there that are
/// the composer's own methods (`impl LeaseFs` blocks in a file of their own).
const ROOMS: &[(&str, &[&str])] = &[("lease", &["lease::open"]), ("fs", &["fs::open", "fs::control"])];

/// src/a/b.rs → `a::b`; src/a/mod.rs → `a`; lib.rs → `` (the root). Test-only files (`tests.rs`
/// and the files under a `tests/` directory beside it) are left out.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut mods = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        // Test-only files: `tests.rs` and the files of its directory.
        if parts.iter().any(|p| p == "tests") {
            continue;
        }
        if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
            parts.pop();
        }
        mods.insert(parts.join("::"), f);
    }
    mods
}

/// The file's code before its test module (`#[cfg(test)] mod …`), without comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let test_mod = lines.peek().is_some_and(|next| next.trim_start().starts_with("mod "));
        if line.trim_start().starts_with("#[cfg(test)]") && test_mod {
            break;
        }
        out.push_str(line.split("//").next().unwrap_or(""));
        out.push('\n');
    }
    out
}

fn ident_len(s: &str) -> usize {
    s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len())
}

/// Expands the path that starts at `s` (after its root keyword): `a::b::C`, `a::{b, c::{d, e}}`.
fn expand(prefix: &[String], s: &str, out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    let mut rest = s;
    loop {
        let rest_t = rest.trim_start();
        if let Some(group) = rest_t.strip_prefix('{') {
            // Split the group at its top-level commas.
            let (mut depth, mut start) = (0, 0);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        expand(&path, &group[start..i], out);
                        return;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&path, &group[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            return;
        }
        let n = ident_len(rest_t);
        if n == 0 {
            break;
        }
        path.push(rest_t[..n].to_string());
        match rest_t[n..].strip_prefix("::") {
            Some(more) => rest = more,
            None => break,
        }
    }
    out.push(path);
}

/// The modules a file's code names through `crate::`, `super::` or `self::` (and `leasefs::`).
fn imports(module: &str, code: &str, mods: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let own: Vec<String> = if module.is_empty() { Vec::new() } else { module.split("::").map(String::from).collect() };
    let mut found = BTreeSet::new();
    for root in ["crate::", "super::", "self::", "leasefs::"] {
        for (at, _) in code.match_indices(root) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue; // part of a longer path (`super::super::`) or another name
            }
            let mut base = match root {
                "crate::" | "leasefs::" => Vec::new(),
                "self::" => own.clone(),
                _ => own[..own.len().saturating_sub(1)].to_vec(),
            };
            let mut rest = &code[at + root.len()..];
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
            let mut paths = Vec::new();
            expand(&base, rest, &mut paths);
            for p in paths {
                // The longest prefix that is a module.
                let target = (1..=p.len()).rev().map(|n| p[..n].join("::")).find(|m| mods.contains_key(m));
                if let Some(t) = target.filter(|t| t != module) {
                    found.insert(t);
                }
            }
        }
    }
    found
}

fn layer_of(module: &str) -> Option<(usize, &'static str)> {
    let parts: Vec<&str> = module.split("::").collect();
    (1..=parts.len()).rev().find_map(|n| {
        let prefix = parts[..n].join("::");
        LAYERS.iter().enumerate().find(|(_, (_, ms))| ms.contains(&prefix.as_str())).map(|(i, (name, _))| (i, *name))
    })
}

/// Every circle of imports (strongly connected sets of more than one module), by Tarjan.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> T<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on.insert(v);
            for w in self.g.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    self.low.insert(v, self.low[v].min(self.low[w]));
                } else if self.on.contains(w) {
                    self.low.insert(v, self.low[v].min(self.index[w]));
                }
            }
            if self.low[v] == self.index[v] {
                let mut c = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    c.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if c.len() > 1 {
                    c.sort();
                    self.out.push(c);
                }
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

fn graph_of(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    // `main.rs` (the binary, naming the library as `leasefs::`) is the module `main`.
    let mods = modules(src);
    let mut graph = BTreeMap::new();
    for (m, path) in &mods {
        let mut deps = imports(m, &code(path), &mods);
        deps.remove("");
        graph.insert(m.clone(), deps);
    }
    graph.remove("");
    graph
}

/// What is wrong with a graph: imports upwards, circles, rooms that know their composer.
fn problems(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (m, deps) in graph {
        let Some((lm, lname)) = layer_of(m) else {
            out.push(format!("{m} is in no layer: place it in LAYERS"));
            continue;
        };
        for d in deps {
            match layer_of(d) {
                Some((ld, dname)) if ld > lm => {
                    out.push(format!("{m} ({lname}) imports {d}, a higher layer ({dname})"))
                }
                _ => {}
            }
        }
        for (dir, own_methods) in ROOMS {
            let room = m.strip_prefix(dir).is_some_and(|r| r.starts_with("::")) && !own_methods.contains(&m.as_str());
            if room && deps.contains(*dir) {
                out.push(format!("{m} imports {dir}/mod.rs, which composes it"));
            }
        }
    }
    for c in circles(graph) {
        out.push(format!("a circle of imports: {}", c.join(", ")));
    }
    out
}

#[test]
fn src_imports_point_down_the_layers_without_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph_of(&src);
    assert!(graph.len() > 40 && graph.contains_key("lease::revoke"), "src/ was read: {:?}", graph.keys());
    // The parser sees what the files say: a sample of known imports.
    assert!(graph["lease::revoke"].contains("lease::journal"), "super:: paths resolve");
    assert!(graph["fuse"].contains("fs"), "grouped crate:: paths resolve");
    assert!(graph["main"].contains("config"), "main.rs names the library as leasefs::");
    let problems = problems(&graph);
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn the_checker_catches_an_upward_import_a_circle_and_a_room_that_knows_its_manager() {
    let mut g = BTreeMap::new();
    let mut add = |m: &str, deps: &[&str]| {
        g.insert(m.to_string(), deps.iter().map(|d| d.to_string()).collect::<BTreeSet<_>>());
    };
    add("openbao", &["lease::revoke"]);
    add("lease::revoke", &["retry", "lease"]);
    add("lease", &["lease::revoke"]);
    add("retry", &[]);
    add("policy", &["secret"]);
    add("secret", &["policy"]);
    let p = problems(&g);
    assert!(p.iter().any(|e| e.starts_with("openbao (openbao client) imports lease::revoke")), "{p:?}");
    assert!(p.iter().any(|e| e == "lease::revoke imports lease/mod.rs, which composes it"), "{p:?}");
    assert!(p.iter().any(|e| e == "a circle of imports: lease, lease::revoke"), "{p:?}");
    assert!(p.iter().any(|e| e == "a circle of imports: policy, secret"), "{p:?}");
    assert_eq!(p.len(), 4, "{p:?}");
    // And the parser reads nested groups and `super::`.
    let mods: BTreeMap<String, PathBuf> = ["lease", "lease::table", "lease::journal", "audit", "policy"]
        .iter()
        .map(|m| (m.to_string(), PathBuf::new()))
        .collect();
    let code = "use super::{journal::Op, table::{Lease, Origin}};\nuse crate::{audit::Event, policy::IssuerKind};";
    let got = imports("lease::revoke", code, &mods);
    assert_eq!(got, ["audit", "lease::journal", "lease::table", "policy"].map(String::from).into());
}
