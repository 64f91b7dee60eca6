//! No import cycle between the top-level modules of the agent or of the collector (test code
//! aside). Reads the sources: every `crate::…` and `super::…` path outside `#[cfg(test)]` code
//! is an edge from the module of the file to the top-level module it names; `config::common`
//! counts as a node of its own (the leaf every section imports) and must import nothing of the
//! crate. A cycle fails with its path, e.g. `config -> export -> config`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Submodules that are nodes of their own rather than part of their parent.
const OWN_NODES: &[&str] = &["config::common"];

/// Modules that must import nothing of their crate.
const LEAVES: &[&str] = &["config::common", "clock"];

type Graph = BTreeMap<String, BTreeSet<String>>;

struct Crate {
    /// Top-level modules declared by `lib.rs`.
    top: BTreeSet<String>,
    /// Each non-test source file: its module path and its code without comments and tests.
    files: Vec<(Vec<String>, String)>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        parts.clear();
    }
    parts
}

/// `#[cfg(test)] mod name;` declarations: the modules that are test code.
fn test_modules(module: &[String], text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("#[cfg(test)]") {
        rest = &rest[i + "#[cfg(test)]".len()..];
        let item = rest.trim_start();
        let item = item.strip_prefix("pub(crate) ").unwrap_or(item);
        let item = item.strip_prefix("pub ").unwrap_or(item);
        if let Some(decl) = item.strip_prefix("mod ") {
            let name: String = decl
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if decl[name.len()..].trim_start().starts_with(';') {
                let mut m = module.to_vec();
                m.push(name);
                out.push(m);
            }
        }
    }
    out
}

/// The code without `//` comments and without inline `#[cfg(test)] mod … { … }` blocks (which
/// rustfmt closes with a `}` alone on a line at their indentation).
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            let indent = &line[..line.len() - trimmed.len()];
            let next = lines.peek().map(|l| l.trim_start()).unwrap_or("");
            if (next.starts_with("mod ") || next.starts_with("pub mod ")) && next.ends_with('{') {
                let close = format!("{indent}}}");
                for l in lines.by_ref() {
                    if l == close {
                        break;
                    }
                }
                continue;
            }
        }
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn read_crate(src: &Path) -> Crate {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let top: BTreeSet<String> = code_only(&lib)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .collect();
    let mut paths = Vec::new();
    rust_files(src, &mut paths);
    let mut texts = Vec::new();
    let mut tests = Vec::new();
    for p in paths {
        let module = module_path(src, &p);
        let text = std::fs::read_to_string(&p).expect("source");
        tests.extend(test_modules(&module, &text));
        texts.push((module, text));
    }
    let files = texts
        .into_iter()
        .filter(|(m, _)| m.first().is_some_and(|t| top.contains(t)))
        .filter(|(m, _)| !tests.iter().any(|t| m.starts_with(t)))
        .map(|(m, t)| (m, code_only(&t)))
        .collect();
    Crate { top, files }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The module paths a file names, resolved from the crate root: `crate::a::b`, each item of
/// `crate::{a, b::c}`, and `super::…` relative to the file's module.
fn referenced_paths(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let at_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        // `c` and `s` are ASCII, so a match starts on a character boundary.
        let rest = &bytes[i..];
        let (root, skip): (Vec<String>, usize) = if at_word && rest.starts_with(b"crate::") {
            (Vec::new(), "crate::".len())
        } else if at_word && rest.starts_with(b"super::") {
            // A chain of `super::` from the file's module.
            let mut base = module.to_vec();
            let mut n = 0;
            while rest[n..].starts_with(b"super::") {
                base.pop();
                n += "super::".len();
            }
            (base, n)
        } else {
            i += 1;
            continue;
        };
        let rest = &code[i..];
        let tail = &rest[skip..];
        if let Some(group) = tail.strip_prefix('{') {
            // Items of a group, split at top-level commas.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(join(&root, &item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.push(join(&root, &item));
        } else {
            let path: String = tail
                .chars()
                .take_while(|c| is_ident(*c) || *c == ':')
                .collect();
            out.push(join(&root, &path));
        }
        i += skip;
    }
    out
}

fn join(root: &[String], path: &str) -> Vec<String> {
    let mut p = root.to_vec();
    p.extend(
        path.split("::")
            .map(|s| {
                s.trim()
                    .chars()
                    .take_while(|c| is_ident(*c))
                    .collect::<String>()
            })
            .take_while(|s| !s.is_empty() && s != "self"),
    );
    p
}

fn node(top: &BTreeSet<String>, path: &[String]) -> Option<String> {
    let first = path.first()?;
    if !top.contains(first) {
        return None;
    }
    if let Some(second) = path.get(1) {
        let sub = format!("{first}::{second}");
        if OWN_NODES.contains(&sub.as_str()) {
            return Some(sub);
        }
    }
    Some(first.clone())
}

fn graph(src: &Path) -> Graph {
    let krate = read_crate(src);
    let mut g = Graph::new();
    for (module, code) in &krate.files {
        let Some(from) = node(&krate.top, module) else {
            continue;
        };
        let edges = g.entry(from.clone()).or_default();
        for path in referenced_paths(module, code) {
            if let Some(to) = node(&krate.top, &path)
                && to != from
            {
                edges.insert(to);
            }
        }
    }
    g
}

/// A cycle in `g`, as the path that closes it, if there is one.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &Graph,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(n.to_owned());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_owned());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut done, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

fn src(krate: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src")
}

fn describe(g: &Graph) -> String {
    g.iter()
        .map(|(k, v)| {
            format!(
                "{k} -> {}",
                v.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_agent_has_no_import_cycle() {
    let g = graph(&src("agent"));
    // The reader works: edges it must see.
    for (from, to) in [
        ("runtime", "config"),
        ("config", "export"),
        ("export", "config::common"),
    ] {
        assert!(
            g.get(from).is_some_and(|e| e.contains(to)),
            "{from} -> {to} not found:\n{}",
            describe(&g)
        );
    }
    if let Some(cycle) = find_cycle(&g) {
        panic!(
            "import cycle: {}\n(remove one of these imports: a section imports config::common, never \
             config)\n{}",
            cycle.join(" -> "),
            describe(&g)
        );
    }
    for leaf in LEAVES {
        let out = g.get(*leaf).cloned().unwrap_or_default();
        assert!(out.is_empty(), "{leaf} must be a leaf, imports {out:?}");
    }
}

#[test]
fn the_collector_has_no_import_cycle() {
    let g = graph(&src("collector"));
    assert!(
        g.get("otlp").is_some_and(|e| e.contains("pipeline")),
        "otlp -> pipeline not found:\n{}",
        describe(&g)
    );
    if let Some(cycle) = find_cycle(&g) {
        panic!("import cycle: {}\n{}", cycle.join(" -> "), describe(&g));
    }
}

#[test]
fn the_reader_sees_groups_super_and_cycles() {
    let m = vec!["alerting".to_owned(), "api".to_owned()];
    let paths = referenced_paths(
        &m,
        "use crate::{hub::Hub, store::{Batch, Store}};\nuse super::super::http::X;\nlet a = \
         notcrate::x; super::eval::f();\n",
    );
    assert!(paths.contains(&vec!["hub".to_owned(), "Hub".to_owned()]));
    assert!(paths.contains(&vec!["store".to_owned()]), "{paths:?}");
    assert!(paths.contains(&vec!["http".to_owned(), "X".to_owned()]));
    assert!(paths.contains(&vec![
        "alerting".to_owned(),
        "eval".to_owned(),
        "f".to_owned()
    ]));
    assert_eq!(paths.len(), 4, "{paths:?}");
    let code = code_only(
        "use crate::a; // crate::b\n#[cfg(test)]\nmod tests {\n    use crate::c;\n}\nfn f() {}\n",
    );
    assert!(code.contains("crate::a") && !code.contains("crate::b") && !code.contains("crate::c"));
    assert!(code.contains("fn f()"));
    let g: Graph = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]
        .iter()
        .fold(Graph::new(), |mut g, (f, t)| {
            g.entry((*f).into()).or_default().insert((*t).into());
            g
        });
    assert_eq!(
        find_cycle(&g).map(|c| c.join(" -> ")).as_deref(),
        Some("a -> b -> c -> a")
    );
    let mut g = g;
    g.get_mut("c").map(|e| e.remove("a"));
    assert_eq!(find_cycle(&g), None);
}
