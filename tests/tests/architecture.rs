//! docs/architecture.md's folder map names every source file of the
//! proxy, under its folder: a file added without a word there fails here.
//! Its layers hold (an upward import not named there fails), and no file
//! imports one that imports it back.

use std::path::{Path, PathBuf};

use rampart_tests::repo_path;

/// Every `.rs` file under `dir`, as paths relative to it.
fn sources(dir: &Path, under: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the source folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, under, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path.strip_prefix(under).expect("under").to_path_buf());
        }
    }
}

/// The text the map gives each entry of `proxy/src/` (`client/`,
/// `reload.rs` ...): its line and the lines indented under it.
fn entries(map: &str) -> Vec<(String, String)> {
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut inside = false;
    for line in map.lines() {
        if line.starts_with("proxy/src/") {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        if !line.starts_with(' ') {
            // The next top-level folder (sdk/, plugins/ ...) ends the map
            // of proxy/src/.
            if !line.is_empty() {
                inside = false;
            }
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        match (indent, entries.last_mut()) {
            (2, _) => {
                let name = line
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                entries.push((name, line.to_string()));
            }
            (_, Some((_, text))) => {
                text.push('\n');
                text.push_str(line);
            }
            _ => {}
        }
    }
    entries
}

#[test]
fn the_folder_map_names_every_source_file() {
    let map = std::fs::read_to_string(repo_path("docs/architecture.md")).expect("architecture.md");
    let root = repo_path("proxy/src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    let map_entries = entries(&map);
    assert!(
        map_entries.len() > 10,
        "the folder map was not found: {map_entries:?}"
    );
    let mut missing = Vec::new();
    for file in &files {
        let text = file.to_string_lossy().replace('\\', "/");
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        // Test modules and the crate roots are not files a reader opens
        // to find something; a folder's mod.rs is what its entry describes.
        if name == "tests.rs" || name == "mod.rs" || text == "lib.rs" || text == "main.rs" {
            continue;
        }
        // Named under its top folder's entry, or under an entry of its
        // own for a folder inside it (`client/answer/`).
        let keys: Vec<String> = match text.rsplit_once('/') {
            None => vec![text.clone()],
            Some((folders, _)) => folders
                .match_indices('/')
                .map(|(at, _)| format!("{}/", &folders[..at]))
                .chain([format!("{folders}/")])
                .collect(),
        };
        let named = map_entries
            .iter()
            .any(|(entry, said)| keys.contains(entry) && said.contains(&name));
        if !named {
            missing.push(text);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/architecture.md's folder map does not name: {missing:?}"
    );
    // The protocol crate: its files, in its entry.
    let resp = repo_path("proxy/resp/src");
    let mut files = Vec::new();
    sources(&resp, &resp, &mut files);
    let entry = map
        .split("proxy/resp/")
        .nth(1)
        .and_then(|rest| rest.split("\nproxy/src/").next())
        .expect("the map has an entry for proxy/resp/");
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if name != "tests.rs" && name != "lib.rs" {
            assert!(
                entry.contains(&name),
                "the map's proxy/resp/ entry does not name {name}"
            );
        }
    }
}

/// The layer a source file belongs to: its top folder (or file), except
/// the two folders the layering places on their own.
fn layer_of(file: &str) -> String {
    for own in ["replicate/fanout/", "failover/controller/"] {
        if file.starts_with(own) {
            return own.trim_end_matches('/').to_string();
        }
    }
    match file.split_once('/') {
        Some((folder, _)) => folder.to_string(),
        None => file.trim_end_matches(".rs").to_string(),
    }
}

/// The layer a `crate::` path names (`crate::replicate::fanout::X` is
/// `replicate/fanout`); the crate root's re-exports by their module.
fn layer_named(first: &str, second: &str) -> String {
    match (first, second) {
        ("replicate", "fanout") => "replicate/fanout".into(),
        ("failover", "controller") => "failover/controller".into(),
        ("Config", _) => "config".into(),
        ("Server", _) => "server".into(),
        _ => first.to_string(),
    }
}

/// Every layer a file's code (not its tests or comments) names through a
/// `crate::` path, including `use crate::{A, B}` lists.
fn layers_used(source: &str) -> std::collections::BTreeSet<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or_default();
    let mut used = std::collections::BTreeSet::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<String> = match rest.strip_prefix('{') {
                Some(list) => list
                    .split('}')
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect(),
                None => vec![rest.to_string()],
            };
            for name in names {
                let mut parts = name
                    .split("::")
                    .map(|p| p.trim_matches(|c: char| !c.is_alphanumeric() && c != '_'));
                let first = parts.next().unwrap_or_default();
                let second = parts.next().unwrap_or_default();
                if !first.is_empty() && first != "resp" {
                    used.insert(layer_named(first, second));
                }
            }
        }
    }
    used
}

/// The layering docs/architecture.md draws (`## Layers`: the list from the
/// bottom, and the arrows allowed against it) is the code's: a file that
/// uses a layer above its own, other than by a listed arrow, fails here.
#[test]
fn folders_depend_downwards_but_for_the_named_arrows() {
    let doc = std::fs::read_to_string(repo_path("docs/architecture.md")).expect("architecture.md");
    let section = doc.split("## Layers").nth(1).expect("a ## Layers section");
    let list = section.split("```").nth(1).expect("the layers' list");
    let order: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let allowed: Vec<(String, String)> = section
        .lines()
        .filter_map(|l| l.strip_prefix("- `")?.split('`').next())
        .filter_map(|arrow| {
            let (from, to) = arrow.split_once(" -> ")?;
            Some((from.to_string(), to.to_string()))
        })
        .collect();
    assert!(order.len() > 15, "{order:?}");
    let rank = |layer: &str| order.iter().position(|l| *l == layer);
    let root = repo_path("proxy/src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    let mut against = std::collections::BTreeSet::new();
    let mut unknown = std::collections::BTreeSet::new();
    for file in &files {
        let text = file.to_string_lossy().replace('\\', "/");
        if text == "lib.rs" || text == "main.rs" {
            continue;
        }
        let from = layer_of(&text);
        let Some(from_rank) = rank(&from) else {
            unknown.insert(from);
            continue;
        };
        let source = std::fs::read_to_string(root.join(file)).expect("source");
        for to in layers_used(&source) {
            match rank(&to) {
                None => {
                    unknown.insert(to);
                }
                Some(to_rank)
                    if to_rank > from_rank && !allowed.contains(&(from.clone(), to.clone())) =>
                {
                    against.insert(format!("{text} -> {to}"));
                }
                Some(_) => {}
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "layers missing from docs/architecture.md's ## Layers: {unknown:?}"
    );
    assert!(
        against.is_empty(),
        "imports against the layering of docs/architecture.md (move the code, or name the arrow and why): {against:?}"
    );
    assert!(allowed.len() <= 5, "{allowed:?}");
}

/// A file's code without its tests and comment lines.
fn code_of(source: &str) -> String {
    let code = source.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module path of a file (`client/answer/info.rs` is
/// `client::answer::info`, a folder's `mod.rs` is the folder).
fn module_of(file: &str) -> Vec<String> {
    let path = file.trim_end_matches(".rs");
    let mut parts: Vec<String> = path.split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The file a module path names, and what is left of the path after it
/// (items, or modules declared inline).
fn file_of<'p>(
    files: &std::collections::BTreeMap<String, String>,
    parts: &'p [String],
) -> (Option<String>, &'p [String]) {
    let mut base = String::new();
    let mut found = None;
    for (i, part) in parts.iter().enumerate() {
        let dir = format!("{base}{part}/mod.rs");
        let file = format!("{base}{part}.rs");
        if files.contains_key(&dir) {
            found = Some(dir);
        } else if files.contains_key(&file) {
            found = Some(file);
        } else {
            return (found, &parts[i..]);
        }
        base = format!("{base}{part}/");
    }
    (found, &[])
}

/// Every `crate::`/`super::`/`self::` path in `code`, `use` lists in
/// braces expanded (one level), as module paths from the crate root.
fn paths_in(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = ["crate::", "super::", "self::"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        // Skip `xcrate::` and the like: the keyword must start a path.
        let before = rest[..at].chars().last();
        let tail = &rest[at..];
        rest = &rest[at + 1..];
        if before.is_some_and(|c| ident(c) || c == ':') {
            continue;
        }
        let mut base: Vec<String> = Vec::new();
        let mut t = tail;
        loop {
            if let Some(next) = t.strip_prefix("crate::") {
                base.clear();
                t = next;
            } else if let Some(next) = t.strip_prefix("super::") {
                if base.is_empty() {
                    base = module.to_vec();
                }
                base.pop();
                t = next;
            } else if let Some(next) = t.strip_prefix("self::") {
                if base.is_empty() {
                    base = module.to_vec();
                }
                t = next;
            } else {
                break;
            }
        }
        let mut names = Vec::new();
        if let Some(list) = t.strip_prefix('{') {
            for item in list.split('}').next().unwrap_or_default().split(',') {
                names.push(item.trim().to_string());
            }
        } else {
            names.push(t.to_string());
        }
        for name in names {
            let mut path = base.clone();
            for part in name.split("::") {
                let word: String = part.chars().take_while(|c| ident(*c)).collect();
                if word.is_empty() || word == "self" {
                    break;
                }
                path.push(word);
                if part.len() != path.last().map_or(0, String::len) {
                    break;
                }
            }
            out.push(path);
        }
    }
    out
}

/// No file imports one that (through others, re-exports followed one
/// level) imports it back: the folders can be read bottom up.
#[test]
fn no_file_imports_one_that_imports_it_back() {
    let root = repo_path("proxy/src");
    let mut paths = Vec::new();
    sources(&root, &root, &mut paths);
    let files: std::collections::BTreeMap<String, String> = paths
        .iter()
        .map(|p| {
            let name = p.to_string_lossy().replace('\\', "/");
            let code = code_of(&std::fs::read_to_string(root.join(p)).expect("source"));
            (name, code)
        })
        .filter(|(name, _)| name != "main.rs")
        .collect();
    // `pub use path::{a, b};` of each file: name -> the path it stands for.
    let mut reexports: std::collections::BTreeMap<String, Vec<(String, Vec<String>)>> =
        Default::default();
    for (name, code) in &files {
        let module = module_of(name);
        for line in code.lines() {
            let Some(rest) = line
                .trim()
                .strip_prefix("pub use ")
                .or_else(|| line.trim().strip_prefix("pub(crate) use "))
            else {
                continue;
            };
            let relative = !rest.starts_with("crate::")
                && !rest.starts_with("super::")
                && !rest.starts_with("self::");
            let text = if relative {
                format!("self::{rest}")
            } else {
                rest.to_string()
            };
            for path in paths_in(&text, &module) {
                if let Some(item) = path.last() {
                    reexports
                        .entry(name.clone())
                        .or_default()
                        .push((item.clone(), path.clone()));
                }
            }
        }
    }
    let mut edges: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for (name, code) in &files {
        let module = module_of(name);
        for path in paths_in(code, &module) {
            let (found, rest) = file_of(&files, &path);
            let Some(mut target) = found else { continue };
            if let Some(item) = rest.first() {
                let via = reexports
                    .get(&target)
                    .and_then(|r| r.iter().find(|(n, _)| n == item).map(|(_, p)| p.clone()));
                if let Some(real) = via.and_then(|p| file_of(&files, &p).0) {
                    target = real;
                }
            }
            if &target != name && target != "lib.rs" {
                edges.entry(name.clone()).or_default().insert(target);
            }
        }
    }
    // Tarjan's strongly connected components.
    struct Walk<'a> {
        edges: &'a std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        index: std::collections::BTreeMap<String, usize>,
        low: std::collections::BTreeMap<String, usize>,
        stack: Vec<String>,
        on: std::collections::BTreeSet<String>,
        cycles: Vec<Vec<String>>,
    }
    fn visit(w: &mut Walk, v: &str) {
        let n = w.index.len();
        w.index.insert(v.to_string(), n);
        w.low.insert(v.to_string(), n);
        w.stack.push(v.to_string());
        w.on.insert(v.to_string());
        let next: Vec<String> = w
            .edges
            .get(v)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for u in next {
            if !w.index.contains_key(&u) {
                visit(w, &u);
                let l = w.low[&u].min(w.low[v]);
                w.low.insert(v.to_string(), l);
            } else if w.on.contains(&u) {
                let l = w.index[&u].min(w.low[v]);
                w.low.insert(v.to_string(), l);
            }
        }
        if w.low[v] == w.index[v] {
            let mut component = Vec::new();
            while let Some(u) = w.stack.pop() {
                w.on.remove(&u);
                let done = u == v;
                component.push(u);
                if done {
                    break;
                }
            }
            if component.len() > 1 {
                w.cycles.push(component);
            }
        }
    }
    let mut walk = Walk {
        edges: &edges,
        index: Default::default(),
        low: Default::default(),
        stack: Vec::new(),
        on: Default::default(),
        cycles: Vec::new(),
    };
    assert!(
        edges.values().map(|e| e.len()).sum::<usize>() > 300,
        "the import graph was not read"
    );
    for file in files.keys() {
        if !walk.index.contains_key(file) {
            visit(&mut walk, file);
        }
    }
    assert!(
        walk.cycles.is_empty(),
        "files importing each other: {:?}",
        walk.cycles
    );
}
