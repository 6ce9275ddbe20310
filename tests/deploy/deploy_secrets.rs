//! Passwords reach the pods only through Secrets: no ConfigMap in `deploy/` (plain manifests or
//! Terraform) carries one, nor a secret-sounding param, nor the secret params they live in.

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

/// What a ConfigMap must not hold: a password, or the secret params that hold the passwords.
fn leaks(text: &str) -> Option<&'static str> {
    let lower = text.to_ascii_lowercase();
    ["password", "secret_params", "secret-params"]
        .into_iter()
        .find(|word| lower.contains(word))
}

/// A params file in a ConfigMap names no param that the engine would take for a secret.
#[track_caller]
fn assert_no_secret_param(doc: &str) {
    let Some(at) = doc.find("params.json: |") else {
        return;
    };
    let json: String = doc[at..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .collect::<Vec<_>>()
        .join("\n");
    let params: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert!(params.len() > 10, "{json}");
    for name in params.keys() {
        assert!(
            !bootstrapper::base::secrets::is_secret_name(name),
            "{name} in a ConfigMap"
        );
    }
}

/// Every password of the bootstrapper's example params is in its Secret, read with
/// --secret-params.
#[test]
fn the_bootstrapper_reads_its_passwords_from_a_secret_file() {
    let text = fs::read_to_string(deploy().join("k8s/bootstrapper.yaml")).expect("read");
    let secret = text
        .split("\n---")
        .find(|d| d.contains("kind: Secret") && d.contains("secret-params.json: |"))
        .expect("the secret params");
    assert!(secret.matches("password").count() >= 5, "{secret}");
    assert!(text.contains("BOOTSTRAPPER_SECRET_PARAMS"));
    let module = fs::read_to_string(deploy().join("jump-host/main.tf")).expect("read");
    assert!(module.contains("BOOTSTRAPPER_SECRET_PARAMS"));
    assert!(module.contains("jsonencode(var.secret_params)"));
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
            assert_no_secret_param(doc);
        }
    }
    // haproxy.yaml and bootstrapper.yaml have one each; a check that saw none would prove
    // nothing.
    assert!(config_maps >= 2);
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
    // The control plane's haproxy.cfg and the jump host's params.
    assert!(config_maps >= 2);
}

/// A variable a manifest takes from a Secret is masked by its name alone (the engine and the
/// controller mask an environment variable by the params' rule, not for being a TF_VAR_*).
#[test]
fn every_variable_taken_from_a_secret_is_secret_by_its_name() {
    let mut manifests = Vec::new();
    files(&deploy().join("k8s"), "yaml", &mut manifests);
    let mut found = 0;
    for manifest in &manifests {
        let text = fs::read_to_string(manifest).expect("read manifest");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim() != "secretKeyRef:" {
                continue;
            }
            let name = lines[..i]
                .iter()
                .rev()
                .find_map(|l| l.trim().strip_prefix("- name: "))
                .expect("the variable's name");
            found += 1;
            assert!(
                bootstrapper::base::secrets::is_secret_name(name),
                "{}: `{name}` comes from a Secret but its name does not say so: rename it or list it in BOOTSTRAPPER_SECRET_ENV",
                manifest.display()
            );
        }
    }
    assert!(found >= 4, "{found} variables from Secrets");
}
