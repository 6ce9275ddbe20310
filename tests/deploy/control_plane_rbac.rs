//! The bootstrapper's Role allows exactly the kinds of object that its last step
//! (`deploy/control-plane`) creates: each one, and nothing more. Checked in the plain manifests
//! and in the jump host's Terraform alike.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// `(api group, resource)` of a kubernetes provider resource type.
fn kind_of(resource_type: &str) -> (String, String) {
    let (group, resource) = match resource_type {
        "kubernetes_config_map_v1" => ("", "configmaps"),
        "kubernetes_service_v1" => ("", "services"),
        "kubernetes_persistent_volume_claim_v1" => ("", "persistentvolumeclaims"),
        "kubernetes_secret_v1" => ("", "secrets"),
        "kubernetes_service_account_v1" => ("", "serviceaccounts"),
        "kubernetes_deployment_v1" => ("apps", "deployments"),
        other => panic!("map {other} to its API group and resource here"),
    };
    (group.to_string(), resource.to_string())
}

/// Every kind of object the module in `dir` creates, its submodules included.
fn created(dir: &Path) -> BTreeSet<(String, String)> {
    let mut kinds = BTreeSet::new();
    for entry in fs::read_dir(dir).expect("read module") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            kinds.extend(created(&path));
            continue;
        }
        if path.extension().is_none_or(|e| e != "tf") {
            continue;
        }
        let body = hcl::parse(&fs::read_to_string(&path).expect("read")).expect("parse");
        for block in body.blocks().filter(|b| b.identifier() == "resource") {
            let kind = block.labels()[0].as_str();
            if kind.starts_with("kubernetes_") {
                kinds.insert(kind_of(kind));
            }
        }
    }
    kinds
}

/// The `[…]` list of strings after `key:` on a line of YAML flow style.
fn flow_list(line: &str, key: &str) -> Option<Vec<String>> {
    let rest = line.trim().trim_start_matches("- ").strip_prefix(key)?;
    let inner = rest.trim().strip_prefix('[')?.strip_suffix(']')?;
    Some(
        inner
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_string())
            .collect(),
    )
}

fn manifest_role() -> BTreeSet<(String, String)> {
    let text = fs::read_to_string(deploy().join("k8s/rbac.yaml")).expect("read rbac.yaml");
    let role = text
        .split("\n---")
        .find(|d| d.lines().any(|l| l.trim() == "kind: Role"))
        .expect("a Role");
    let mut allowed = BTreeSet::new();
    let mut groups = Vec::new();
    for line in role.lines() {
        if let Some(g) = flow_list(line, "apiGroups:") {
            groups = g;
        } else if let Some(resources) = flow_list(line, "resources:") {
            for group in &groups {
                for resource in &resources {
                    allowed.insert((group.clone(), resource.clone()));
                }
            }
        }
    }
    allowed
}

fn jump_host_role() -> BTreeSet<(String, String)> {
    let text = fs::read_to_string(deploy().join("jump-host/rbac.tf")).expect("read rbac.tf");
    let body = hcl::parse(&text).expect("parse rbac.tf");
    let role = body
        .blocks()
        .find(|b| b.identifier() == "resource" && b.labels()[0].as_str() == "kubernetes_role_v1")
        .expect("a kubernetes_role_v1");
    let strings = |rule: &hcl::Block, key: &str| -> Vec<String> {
        let attr = rule
            .body()
            .attributes()
            .find(|a| a.key() == key)
            .unwrap_or_else(|| panic!("{key}"));
        match attr.expr() {
            hcl::Expression::Array(items) => items
                .iter()
                .map(|i| i.to_string().trim_matches('"').to_string())
                .collect(),
            other => panic!("{key} = {other}"),
        }
    };
    let mut allowed = BTreeSet::new();
    for rule in role.body().blocks().filter(|b| b.identifier() == "rule") {
        for group in strings(rule, "api_groups") {
            for resource in strings(rule, "resources") {
                allowed.insert((group.clone(), resource));
            }
        }
    }
    allowed
}

#[test]
fn the_role_allows_exactly_what_the_control_plane_step_creates() {
    let created = created(&deploy().join("control-plane"));
    assert!(
        created.contains(&("apps".to_string(), "deployments".to_string())),
        "{created:?}"
    );
    assert_eq!(manifest_role(), created, "deploy/k8s/rbac.yaml");
    assert_eq!(jump_host_role(), created, "deploy/jump-host/rbac.tf");
}
