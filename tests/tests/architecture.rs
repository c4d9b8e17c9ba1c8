//! docs/architecture.md's folder map names every source file of the
//! proxy, under its folder: a file added without a word there fails here.

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
