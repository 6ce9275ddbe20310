//! Passwords reach the pods only through Secrets: no ConfigMap in `deploy/` (plain manifests or
//! Terraform) carries one, or the params they live in.

use std::fs;
use std::path::{Path, PathBuf};

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// What a ConfigMap must not hold: a password, or the params file that holds the passwords.
fn leaks(text: &str) -> Option<&'static str> {
    let lower = text.to_ascii_lowercase();
    ["password", "params.json", "var.params"]
        .into_iter()
        .find(|word| lower.contains(word))
}

#[test]
fn no_manifest_config_map_holds_a_password() {
    let mut manifests = Vec::new();
    files(&deploy(), "yaml", &mut manifests);
    assert!(manifests.len() >= 4, "{manifests:?}");
    let mut config_maps = 0;
    for path in manifests {
        let text = fs::read_to_string(&path).expect("read manifest");
        for doc in text.split("\n---") {
            if !doc.lines().any(|l| l.trim() == "kind: ConfigMap") {
                continue;
            }
            config_maps += 1;
            assert_eq!(
                leaks(doc),
                None,
                "a ConfigMap in {}:\n{doc}",
                path.display()
            );
        }
    }
    // haproxy.yaml has one; a check that saw none would prove nothing.
    assert!(config_maps >= 1);
}

#[test]
fn no_terraform_config_map_holds_a_password() {
    let mut modules = Vec::new();
    files(&deploy(), "tf", &mut modules);
    let mut config_maps = 0;
    for path in modules {
        let text = fs::read_to_string(&path).expect("read .tf");
        let body = hcl::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for block in body.blocks().filter(|b| b.identifier() == "resource") {
            let kind = block.labels()[0].as_str();
            if !kind.starts_with("kubernetes_config_map") {
                continue;
            }
            config_maps += 1;
            let source = hcl::to_string(block.body()).expect("print block");
            assert_eq!(
                leaks(&source),
                None,
                "{kind} in {}:\n{source}",
                path.display()
            );
        }
    }
    // The control plane's haproxy.cfg is one.
    assert!(config_maps >= 1);
}
