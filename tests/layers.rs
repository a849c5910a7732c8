//! The layers of burn-ema-core, as its crate docs state them: each module uses only modules
//! declared before it in `lib.rs` (so no two modules import each other, directly or through
//! others). Read from the sources: a `use crate::x` or a `crate::x::` path in code (not in
//! comments) of module `m` must name a module declared before `m`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/burn-ema-core/src");

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules in the order `lib.rs` declares them.
fn declared_order() -> Vec<String> {
    let lib = std::fs::read_to_string(Path::new(SRC).join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect()
}

/// The top-level modules that `code` names through `crate::`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // A module (lower case), not an item re-exported at the root (`crate::EmaModule`).
            if name.starts_with(|c: char| c.is_ascii_lowercase()) {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn each_module_uses_only_earlier_layers() {
    let order = declared_order();
    assert!(order.len() >= 15, "lib.rs declares its modules: {order:?}");
    let rank: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut files = Vec::new();
    sources(Path::new(SRC), &mut files);
    let mut checked = 0;
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(SRC).unwrap();
        let first = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs");
        if module == "lib" {
            continue;
        }
        let own = *rank
            .get(module)
            .unwrap_or_else(|| panic!("{module} is not declared in lib.rs"));
        let code = std::fs::read_to_string(file).unwrap();
        for used in crate_paths(&code) {
            let theirs = *rank
                .get(used.as_str())
                .unwrap_or_else(|| panic!("{}: crate::{used} is no module", relative.display()));
            checked += 1;
            if theirs > own {
                wrong.push(format!("{} uses crate::{used}", relative.display()));
            }
        }
    }
    assert!(
        checked > 50,
        "the scan found the crate's imports ({checked})"
    );
    assert!(wrong.is_empty(), "imports of later layers: {wrong:#?}");
}

/// The scan itself: a later module named in code is found, one named in a comment is not.
#[test]
fn the_scan_reads_code_not_comments() {
    let code =
        "use crate::config::EmaConfig;\n/// [`x`](crate::train::y)\nlet s = crate::shadow::f();";
    assert_eq!(crate_paths(code), vec!["config", "shadow"]);
}
