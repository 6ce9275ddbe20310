//! What an operator's first apply of `deploy/jump-host` and of the bootstrap's control-plane
//! step depends on, tested as far as it can be without a cluster or a provider download: the
//! variables' validations with real terraform (their `variable` blocks copied verbatim into a
//! module of `terraform_data`), the generated controller token, the lifecycle and name-length
//! rules by parsing the HCL, HAProxy's targets rendered by real terraform and checked by real
//! `haproxy -c` for every `env_name`, the plain manifests against the Terraform, and the
//! controller's `/readyz` over the real tenant workflow.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::support::{poll, terraform, Bootstrapper};

const CLUSTER_ID: &str = "rmq-prod-01";
const NAMESPACE: &str = "rocketmq-control-plane";
const DIGEST: &str = "@sha256:5f1c8a3b9e2d4c6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn parse(path: &Path) -> hcl::Body {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hcl::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.tf` file directly in a module directory, parsed.
fn module(dir: &Path) -> Vec<hcl::Body> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read module")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "tf"))
        .collect();
    files.sort();
    files.iter().map(|p| parse(p)).collect()
}

fn attr<'a>(body: &'a hcl::Body, key: &str) -> Option<&'a hcl::Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

fn block<'a>(body: &'a hcl::Body, ident: &str) -> Option<&'a hcl::Block> {
    body.blocks().find(|b| b.identifier() == ident)
}

/// The body at a path of nested block names.
fn at<'a>(body: &'a hcl::Body, path: &[&str]) -> Option<&'a hcl::Body> {
    path.iter()
        .try_fold(body, |b, ident| block(b, ident).map(|b| b.body()))
}

fn resources<'a>(bodies: &'a [hcl::Body], kind: &str) -> Vec<&'a hcl::Block> {
    bodies
        .iter()
        .flat_map(|b| b.blocks())
        .filter(|b| b.identifier() == "resource" && b.labels()[0].as_str() == kind)
        .collect()
}

/// A module of `terraform_data` and the given module's variable files, copied verbatim, so
/// that real terraform runs the very validations offline.
fn validation_module(files: &[PathBuf]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for file in files {
        fs::copy(file, dir.path().join(file.file_name().expect("name"))).expect("copy");
    }
    fs::write(
        dir.path().join("probe.tf"),
        "resource \"terraform_data\" \"probe\" {}\n",
    )
    .expect("write probe");
    terraform(dir.path(), &["init", "-input=false", "-no-color"]).assert_success();
    dir
}

/// `terraform plan` with `vars` written as a tfvars file (JSON); Ok or the error text.
fn plan(dir: &Path, vars: &Value) -> Result<(), String> {
    fs::write(
        dir.join("case.tfvars.json"),
        serde_json::to_string(vars).expect("vars"),
    )
    .expect("write vars");
    let out = terraform(
        dir,
        &[
            "plan",
            "-input=false",
            "-no-color",
            "-var-file=case.tfvars.json",
        ],
    );
    if out.code == Some(0) {
        Ok(())
    } else {
        Err(out.stderr.clone())
    }
}

fn with(base: &Value, key: &str, value: Value) -> Value {
    let mut v = base.clone();
    v[key] = value;
    v
}

fn jump_host_vars() -> Value {
    json!({
        "namespace": NAMESPACE,
        "cluster_id": CLUSTER_ID,
        "image": format!("registry.example.com/bootstrapper{DIGEST}"),
        "params": {"region": "cn-bj2"},
        "secret_params": {"consul_backend_root_password": "x"},
        "ucloud_public_key": "pub",
        "ucloud_private_key": "priv",
    })
}

#[track_caller]
fn refused(result: Result<(), String>, message: &str) {
    match result {
        Ok(()) => panic!("accepted, but should be refused with {message:?}"),
        // Terraform wraps its messages at any space.
        Err(e) => assert!(
            e.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .contains(message),
            "refused for another reason:\n{e}"
        ),
    }
}

#[test]
fn the_jump_host_variables_accept_the_defaults_and_refuse_what_would_fail_an_apply() {
    let jh = deploy().join("jump-host");
    let dir = validation_module(&[jh.join("variables.tf"), jh.join("generated-token.tf")]);
    let base = jump_host_vars();
    plan(dir.path(), &base).expect("the example's values with every default");

    // The longest cluster id whose object names still fit (see the name-length test).
    plan(
        dir.path(),
        &with(&base, "cluster_id", json!("a".repeat(40))),
    )
    .expect("40 characters");
    refused(
        plan(
            dir.path(),
            &with(&base, "cluster_id", json!("a".repeat(41))),
        ),
        "cluster_id must be a lowercase DNS label",
    );
    refused(
        plan(dir.path(), &with(&base, "cluster_id", json!("Rmq_01"))),
        "cluster_id must be a lowercase DNS label",
    );
    refused(
        plan(
            dir.path(),
            &with(
                &base,
                "image",
                json!("registry.example.com/bootstrapper:1.0"),
            ),
        ),
        "Pin the image by digest",
    );
    refused(
        plan(
            dir.path(),
            &with(&base, "params", json!({"root_password": "x"})),
        ),
        "belongs in secret_params",
    );
    refused(
        plan(
            dir.path(),
            &with(&base, "controller_tokens", json!(["short"])),
        ),
        "A controller token is one line of at least 32 characters",
    );
    plan(
        dir.path(),
        &with(&base, "controller_tokens", json!(["t".repeat(32)])),
    )
    .expect("a 32-character token");
    refused(
        plan(dir.path(), &with(&base, "storage_size", json!("2GB"))),
        "storage_size is a Kubernetes quantity",
    );
    plan(dir.path(), &with(&base, "storage_size", json!("20Gi"))).expect("20Gi");
}

#[test]
fn a_first_apply_without_tokens_generates_one_and_keeps_it() {
    let jh = deploy().join("jump-host");
    let dir = validation_module(&[jh.join("variables.tf"), jh.join("generated-token.tf")]);
    // What the tokens Secret is made of (tokens.tf joins these).
    fs::write(
        dir.path().join("tokens_out.tf"),
        "output \"tokens\" {\n  value     = local.controller_tokens\n  sensitive = true\n}\n",
    )
    .expect("write output");
    let apply = |vars: &Value| -> Map<String, Value> {
        fs::write(dir.path().join("case.tfvars.json"), vars.to_string()).expect("vars");
        terraform(
            dir.path(),
            &[
                "apply",
                "-auto-approve",
                "-input=false",
                "-no-color",
                "-var-file=case.tfvars.json",
            ],
        )
        .assert_success();
        let out = terraform(dir.path(), &["output", "-json"]);
        out.assert_success();
        let all: Value = serde_json::from_str(&out.stdout).expect("output -json");
        all.as_object()
            .expect("outputs")
            .iter()
            .map(|(k, v)| (k.clone(), v["value"].clone()))
            .collect()
    };
    let base = jump_host_vars();
    let first = apply(&base);
    let token = first["controller_token"]
        .as_str()
        .expect("a generated token")
        .to_owned();
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{token}");
    assert_eq!(first["tokens"], json!([token]));
    // `terraform output -raw controller_token` is where the README sends the operator.
    let raw = terraform(dir.path(), &["output", "-raw", "controller_token"]);
    assert_eq!(raw.stdout, token);

    let second = apply(&base);
    assert_eq!(
        second["controller_token"], first["controller_token"],
        "a second apply must keep the token its callers hold"
    );

    let given = "g".repeat(40);
    let third = apply(&with(&base, "controller_tokens", json!([given])));
    assert_eq!(third["tokens"], json!([given]));
    assert!(
        third.get("controller_token").is_none_or(Value::is_null),
        "{third:?}"
    );
}

fn control_plane_vars() -> Value {
    json!({
        "namespace": NAMESPACE,
        "cluster_id": CLUSTER_ID,
        "env_name": "public",
        "ipv6_api_url": "http://ipv6-api.example.internal",
        "region_id": "666",
        "haproxy_image": format!("docker.io/library/haproxy:2.8{DIGEST}"),
        "controller_image": format!("registry.example.com/bootstrapper{DIGEST}"),
        "backend_ip": "fd00:10::8500",
        "nomad_server_ip": "fd00:10::4646",
        "consul_access_ip": "fd00:10::8501",
        "region": "cn-bj2",
        "az": ["cn-bj2-03"],
        "project_id": "org-example",
        "vpc_id": "uvnet-1",
        "subnet_id": "subnet-1",
        "ucloud_pub_key": "pub",
        "ucloud_secret": "priv",
        "cloud_keys_secret": "keys",
        "tokens_secret": "tokens",
    })
}

#[test]
fn the_control_plane_variables_accept_the_defaults_and_refuse_what_would_fail_an_apply() {
    let dir = validation_module(&[deploy().join("control-plane/variables.tf")]);
    let base = control_plane_vars();
    plan(dir.path(), &base).expect("every default");
    plan(
        dir.path(),
        &with(&base, "cluster_id", json!("a".repeat(40))),
    )
    .expect("40 characters");
    refused(
        plan(
            dir.path(),
            &with(&base, "cluster_id", json!("a".repeat(41))),
        ),
        "cluster_id must be a lowercase DNS label",
    );
    refused(
        plan(dir.path(), &with(&base, "controller_replicas", json!(2))),
        "controller_replicas is 0 or 1",
    );
    plan(dir.path(), &with(&base, "controller_replicas", json!(0))).expect("stopped");
    refused(
        plan(
            dir.path(),
            &with(&base, "haproxy_image", json!("haproxy:2.8")),
        ),
        "Pin the image by digest",
    );
    // namesvr_lb_ip was an address no operator can know before the hosts exist.
    let declared: BTreeSet<String> = module(&deploy().join("control-plane"))
        .iter()
        .flat_map(|b| b.blocks().filter(|b| b.identifier() == "variable"))
        .map(|b| b.labels()[0].as_str().to_owned())
        .collect();
    assert!(
        !declared.contains("namesvr_lb_ip"),
        "namesvr_lb_ip is still a variable"
    );
    assert!(
        declared.contains("controller_storage_class") && declared.contains("image_pull_secret")
    );
}

/// The variables a resource's metadata and spec read, directly or through `local.name`.
fn vars_read(source: &str) -> BTreeSet<String> {
    let mut found: BTreeSet<String> = source
        .match_indices("var.")
        .map(|(at, _)| {
            source[at + 4..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    if source.contains("local.name") {
        found.insert("cluster_id".into());
    }
    found
}

#[test]
fn the_project_pvc_cannot_be_destroyed_by_a_plan_and_what_replaces_it_says_so() {
    let jh = module(&deploy().join("jump-host"));
    let pvcs = resources(&jh, "kubernetes_persistent_volume_claim_v1");
    assert_eq!(pvcs.len(), 1);
    let pvc = pvcs[0];
    let lifecycle = at(pvc.body(), &["lifecycle"]).expect("a lifecycle block on the PVC");
    assert_eq!(
        attr(lifecycle, "prevent_destroy"),
        Some(&hcl::Expression::Bool(true)),
        "the PVC holds control-network's only state"
    );
    // Every variable that names or shapes the claim replaces it when changed (storage_size
    // when it shrinks): each says so, and where to read how to move a control plane.
    let source = hcl::to_string(pvc.body()).expect("print PVC");
    let read = vars_read(&source);
    for expected in ["namespace", "cluster_id", "storage_class", "storage_size"] {
        assert!(read.contains(expected), "{expected} not in {read:?}");
    }
    let variables = parse(&deploy().join("jump-host/variables.tf"));
    for var in &read {
        let declared = variables
            .blocks()
            .find(|b| b.identifier() == "variable" && b.labels()[0].as_str() == var)
            .unwrap_or_else(|| panic!("variable {var}"));
        let description = attr(declared.body(), "description")
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            description.contains("prevent_destroy")
                && description.contains("Moving a control plane"),
            "variable {var} does not say that changing it replaces the PVC: {description}"
        );
    }
    let readme = fs::read_to_string(repo().join("README.md")).expect("README");
    let section = readme
        .split("\n### Moving a control plane")
        .nth(1)
        .expect("README section \"Moving a control plane\"");
    assert!(section.contains("terraform state rm"), "{section}");
    assert!(section.contains("bootstrapper destroy"), "{section}");
}

/// A name expression with the test's cluster id and the jump host's `local.name`.
fn name_with(expr: &str, cluster_id: &str, each_key: &str) -> String {
    expr.trim_matches('"')
        .replace("${local.name}", "bootstrapper-${var.cluster_id}")
        .replace("${var.cluster_id}", cluster_id)
        .replace("var.cluster_id", cluster_id)
        .replace("${each.key}", each_key)
}

/// The keys of a `for_each = local.<x>` whose local is an object literal in the module.
fn for_each_keys(bodies: &[hcl::Body], resource: &hcl::Block) -> Vec<String> {
    let Some(for_each) = attr(resource.body(), "for_each") else {
        return vec![String::new()];
    };
    let local = for_each
        .to_string()
        .strip_prefix("local.")
        .unwrap_or_else(|| panic!("for_each = {for_each}"))
        .to_owned();
    let value = bodies
        .iter()
        .flat_map(|b| b.blocks().filter(|b| b.identifier() == "locals"))
        .find_map(|l| attr(l.body(), &local).cloned())
        .unwrap_or_else(|| panic!("local.{local}"));
    match value {
        hcl::Expression::Object(o) => o
            .keys()
            .map(|k| k.to_string().trim_matches('"').to_owned())
            .collect(),
        other => panic!("local.{local} = {other}"),
    }
}

/// `(resource type, name)` of every Kubernetes object a module creates, named as it would be
/// with `cluster_id`.
fn terraform_objects(dir: &Path, cluster_id: &str) -> BTreeSet<(String, String)> {
    let bodies = module(dir);
    let mut objects = BTreeSet::new();
    for r in bodies.iter().flat_map(|b| b.blocks()).filter(|b| {
        b.identifier() == "resource" && b.labels()[0].as_str().starts_with("kubernetes_")
    }) {
        let kind = r.labels()[0].as_str().to_owned();
        let name = at(r.body(), &["metadata"])
            .and_then(|m| attr(m, "name"))
            .unwrap_or_else(|| panic!("{kind} has no metadata.name"))
            .to_string();
        for key in for_each_keys(&bodies, r) {
            objects.insert((kind.clone(), name_with(&name, cluster_id, &key)));
        }
    }
    objects
}

#[test]
fn every_object_name_fits_at_the_longest_cluster_id() {
    // The validation above accepts exactly 40 characters.
    let longest = "a".repeat(40);
    let mut seen = 0;
    for dir in ["jump-host", "control-plane"] {
        for (kind, name) in terraform_objects(&deploy().join(dir), &longest) {
            seen += 1;
            assert!(!name.contains("${"), "{kind} name {name} left unresolved");
            // A Service's name is a DNS label; the rest are DNS subdomains.
            let limit = if kind == "kubernetes_service_v1" {
                63
            } else {
                253
            };
            assert!(
                name.len() <= limit,
                "{kind} {name} is {} characters (at most {limit})",
                name.len()
            );
        }
    }
    assert!(seen >= 15, "{seen} objects");
    // The original's Service names, which anything may address the control plane by.
    let cp = terraform_objects(&deploy().join("control-plane"), CLUSTER_ID);
    for service in [
        CLUSTER_ID.to_owned(),
        format!("nomad-ctrl-service-{CLUSTER_ID}"),
    ] {
        assert!(
            cp.contains(&("kubernetes_service_v1".to_owned(), service.clone())),
            "no Service {service} in {cp:?}"
        );
    }
}

/// Renders the targets module, for `env_name`, into haproxy-config; returns the configuration
/// and the NAMESVR_INDEX_IP the controller is given.
fn render_targets(dir: &Path, env_name: &str) -> Result<(String, String), String> {
    let cp = deploy().join("control-plane");
    let main = format!(
        r#"module "targets" {{
  source   = "{targets}"
  env_name = "{env_name}"
  load_balancers = {{
    nomad          = {{ ipv6 = "fd00:10::4646", private_ip = "10.20.0.5" }}
    consul_backend = {{ ipv6 = "fd00:10::8500", private_ip = "10.10.0.5" }}
    consul_tenants = {{ ipv6 = "fd00:10::8501", private_ip = "10.20.0.6" }}
    namesvr        = {{ ipv6 = "fd00:10::9876", private_ip = "10.30.0.7" }}
  }}
}}

module "cfg" {{
  source   = "{cfg}"
  backends = module.targets.backends
}}

output "cfg" {{
  value = module.cfg.haproxy_cfg
}}

output "index" {{
  value = module.targets.namesvr_index_ip
}}
"#,
        targets = cp.join("targets").display(),
        cfg = cp.join("haproxy-config").display(),
    );
    fs::write(dir.join("main.tf"), main).expect("write main.tf");
    terraform(dir, &["init", "-input=false", "-no-color"]).assert_success();
    let out = terraform(
        dir,
        &["apply", "-auto-approve", "-input=false", "-no-color"],
    );
    if out.code != Some(0) {
        return Err(out.stderr.clone());
    }
    let cfg = terraform(dir, &["output", "-raw", "cfg"]);
    cfg.assert_success();
    let index = terraform(dir, &["output", "-raw", "index"]);
    index.assert_success();
    Ok((cfg.stdout.clone(), index.stdout.clone()))
}

#[test]
fn haproxy_relays_to_the_looked_up_load_balancers_the_same_for_every_env_name() {
    let mut configs = BTreeMap::new();
    for env_name in ["test", "private", "public"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cfg, index) = render_targets(dir.path(), env_name).expect("render");
        let file = dir.path().join("haproxy.cfg");
        fs::write(&file, &cfg).expect("write cfg");
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&file)
            .output()
            .expect("run haproxy (is it installed?)");
        assert!(
            check.status.success(),
            "haproxy -c refused the {env_name} configuration:\n{}\n{cfg}",
            String::from_utf8_lossy(&check.stderr)
        );
        let servers: BTreeSet<&str> = cfg
            .lines()
            .filter_map(|l| l.trim().strip_prefix("server lb "))
            .map(|s| s.split_whitespace().next().expect("address"))
            .collect();
        let expected: BTreeSet<&str> = [
            "fd00:10::4646:4646",
            "fd00:10::8500:8500",
            "fd00:10::8501:8500",
            "fd00:10::9876:9090",
            "fd00:10::9876:8080",
        ]
        .into();
        assert_eq!(servers, expected, "{env_name}:\n{cfg}");
        // What the tenant jobs advertise follows the original: IPv6 only where public.
        let want = if env_name == "public" {
            "fd00:10::9876"
        } else {
            "10.30.0.7"
        };
        assert_eq!(index, want, "{env_name}");
        configs.insert(env_name, cfg);
    }
    let distinct: BTreeSet<&String> = configs.values().collect();
    assert_eq!(distinct.len(), 1, "{configs:#?}");

    let dir = tempfile::tempdir().expect("temp dir");
    let err = render_targets(dir.path(), "staging").expect_err("an unknown env_name");
    assert!(err.contains("env_name is test, private or public"), "{err}");

    // The module takes HAProxy's targets from those lookups, and from no variable.
    let cp = module(&deploy().join("control-plane"));
    let haproxy_cfg = cp
        .iter()
        .flat_map(|b| b.blocks())
        .find(|b| b.identifier() == "module" && b.labels()[0].as_str() == "haproxy_config")
        .expect("module haproxy_config");
    assert_eq!(
        attr(haproxy_cfg.body(), "backends").map(|e| e.to_string()),
        Some("module.targets.backends".to_owned())
    );
    let targets = cp
        .iter()
        .flat_map(|b| b.blocks())
        .find(|b| b.identifier() == "module" && b.labels()[0].as_str() == "targets")
        .expect("module targets");
    let lbs = hcl::to_string(targets.body()).expect("print");
    assert!(lbs.contains("data.ucloud_lbs.relayed"), "{lbs}");
    let names: BTreeSet<String> = cp
        .iter()
        .flat_map(|b| b.blocks().filter(|b| b.identifier() == "locals"))
        .find_map(|l| attr(l.body(), "load_balancer_names").cloned())
        .map(|e| match e {
            hcl::Expression::Object(o) => o
                .values()
                .map(|v| name_with(&v.to_string(), CLUSTER_ID, ""))
                .collect(),
            other => panic!("{other}"),
        })
        .expect("local.load_balancer_names");
    // The names the tree gives its load balancers (control-network, consul-server, the root).
    let tree: BTreeSet<String> = [
        "consulBackendLb",
        "consulServer",
        "nomadServerLb",
        "nameServerInternalLb",
    ]
    .iter()
    .map(|n| format!("{n}-{CLUSTER_ID}"))
    .collect();
    assert_eq!(names, tree);
    let template = fs::read_to_string(repo().join("templates/bootstrap/control-plane.tfvars.tera"))
        .expect("template");
    assert!(!template.contains("namesvr_lb_ip"), "{template}");
}

// ---------------------------------------------------------------------------
// The plain manifests against the Terraform.

/// Every document of the manifests, parsed by PyYAML (the YAML library yamllint runs on).
fn manifests() -> Vec<Value> {
    let mut files: Vec<PathBuf> = fs::read_dir(deploy().join("k8s"))
        .expect("read k8s")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let out = Command::new("python3")
        .arg("-c")
        .arg("import json, sys, yaml\nprint(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]))")
        .args(&files)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python3 with PyYAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("JSON")
}

/// The Kubernetes kind a provider resource type creates.
fn kind(resource_type: &str) -> &'static str {
    match resource_type {
        "kubernetes_config_map_v1" => "ConfigMap",
        "kubernetes_secret_v1" => "Secret",
        "kubernetes_service_v1" => "Service",
        "kubernetes_service_account_v1" => "ServiceAccount",
        "kubernetes_role_v1" => "Role",
        "kubernetes_role_binding_v1" => "RoleBinding",
        "kubernetes_persistent_volume_claim_v1" => "PersistentVolumeClaim",
        "kubernetes_deployment_v1" => "Deployment",
        "kubernetes_network_policy_v1" => "NetworkPolicy",
        "kubernetes_labels" => "Namespace",
        other => panic!("map {other} to its kind here"),
    }
}

/// A variable's default, or the example's value for those without one.
fn var_value(vars: &BTreeMap<String, Value>, name: &str) -> Value {
    match name {
        "cluster_id" => json!(CLUSTER_ID),
        "namespace" => json!(NAMESPACE),
        // What the jump host passes the control-plane step (its params.json).
        "tokens_secret" => json!(format!("bootstrapper-{CLUSTER_ID}-controller-tokens")),
        "cloud_keys_secret" => json!(format!("bootstrapper-{CLUSTER_ID}-cloud-keys")),
        _ => vars
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("var.{name} has no default")),
    }
}

/// What an expression of the modules' comes to with the defaults: literals, `var.x`, names
/// templated from them, and `<resource>.metadata[0].name`.
fn value(
    expr: &hcl::Expression,
    vars: &BTreeMap<String, Value>,
    names: &BTreeMap<String, String>,
) -> Value {
    use hcl::Expression as E;
    match expr {
        E::Null => Value::Null,
        E::Bool(b) => json!(b),
        E::Number(n) => serde_json::to_value(n).expect("number"),
        E::String(s) => json!(s),
        E::Array(items) => items.iter().map(|i| value(i, vars, names)).collect(),
        E::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    (
                        k.to_string().trim_matches('"').to_owned(),
                        value(v, vars, names),
                    )
                })
                .collect(),
        ),
        _ => {
            let text = expr.to_string();
            if let Some(var) = text.strip_prefix("var.") {
                return var_value(vars, var);
            }
            // The jump host's one local name.
            if text == "local.name" {
                return json!(format!(
                    "bootstrapper-{}",
                    var_value(vars, "cluster_id").as_str().expect("id")
                ));
            }
            if let Some(resource) = text.strip_suffix(".metadata[0].name") {
                return json!(names
                    .get(resource)
                    .unwrap_or_else(|| panic!("no resource {resource}")));
            }
            if text.starts_with('"') && !text.contains("${each") {
                let mut s = text
                    .trim_matches('"')
                    .replace("${local.name}", "bootstrapper-${var.cluster_id}");
                while let Some(start) = s.find("${var.") {
                    let end = start + s[start..].find('}').expect("closing brace");
                    let v = var_value(vars, &s[start + 6..end]);
                    let v = v
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string());
                    s.replace_range(start..=end, &v);
                }
                return json!(s);
            }
            json!(format!("<{text}>"))
        }
    }
}

/// The facts of a workload or Service that both descriptions must agree on, as JSON.
fn facts_of_manifest(doc: &Value) -> Value {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let mut f = Map::new();
    match kind {
        "Deployment" => {
            let spec = &doc["spec"];
            let pod = &spec["template"]["spec"];
            f.insert("replicas".into(), spec["replicas"].clone());
            f.insert("strategy".into(), spec["strategy"]["type"].clone());
            f.insert(
                "run_as_user".into(),
                pod["securityContext"]["runAsUser"].clone(),
            );
            f.insert("service_account".into(), pod["serviceAccountName"].clone());
            let mut volumes = Map::new();
            for v in pod["volumes"].as_array().into_iter().flatten() {
                let source = if let Some(e) = v.get("emptyDir") {
                    json!({"emptyDir": e.get("sizeLimit")})
                } else if let Some(p) = v.get("persistentVolumeClaim") {
                    json!({"claim": p["claimName"]})
                } else if let Some(s) = v.get("secret") {
                    json!({"secret": s["secretName"]})
                } else {
                    json!({"configMap": v["configMap"]["name"]})
                };
                volumes.insert(v["name"].as_str().expect("name").into(), source);
            }
            f.insert("volumes".into(), Value::Object(volumes));
            let mut containers = Map::new();
            for c in pod["containers"].as_array().into_iter().flatten() {
                let ports: Map<String, Value> = c["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        (
                            p["name"].as_str().expect("port name").into(),
                            p["containerPort"].clone(),
                        )
                    })
                    .collect();
                let mounts: BTreeSet<String> = c["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        format!(
                            "{}:{}",
                            m["name"].as_str().expect("name"),
                            m["mountPath"].as_str().expect("path")
                        )
                    })
                    .collect();
                containers.insert(
                    c["name"].as_str().expect("name").into(),
                    json!({"resources": c["resources"], "ports": ports, "mounts": mounts, "run_as_non_root": c["securityContext"]["runAsNonRoot"]}),
                );
            }
            f.insert("containers".into(), Value::Object(containers));
        }
        "Service" => {
            let ports: Vec<Value> = doc["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| json!([p["name"], p["port"], p["targetPort"]]))
                .collect();
            f.insert("ports".into(), json!(ports));
        }
        "NetworkPolicy" => {
            let ports: Vec<Value> = doc["spec"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|i| i["ports"].as_array().cloned().unwrap_or_default())
                .map(|p| p["port"].clone())
                .collect();
            f.insert("ingress_ports".into(), json!(ports));
        }
        "Namespace" => {
            let labels: Map<String, Value> = doc["metadata"]["labels"]
                .as_object()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| k.starts_with("pod-security."))
                .collect();
            f.insert("labels".into(), Value::Object(labels));
        }
        _ => {}
    }
    Value::Object(f)
}

fn blocks_named<'a>(body: &'a hcl::Body, ident: &'a str) -> impl Iterator<Item = &'a hcl::Block> {
    body.blocks().filter(move |b| b.identifier() == ident)
}

fn facts_of_resource(
    r: &hcl::Block,
    vars: &BTreeMap<String, Value>,
    names: &BTreeMap<String, String>,
    locals: &BTreeMap<String, Value>,
) -> Value {
    let v = |e: Option<&hcl::Expression>| e.map_or(Value::Null, |e| value(e, vars, names));
    let mut f = Map::new();
    match r.labels()[0].as_str() {
        "kubernetes_deployment_v1" => {
            let spec = at(r.body(), &["spec"]).expect("spec");
            let pod = at(spec, &["template", "spec"]).expect("template.spec");
            f.insert("replicas".into(), v(attr(spec, "replicas")));
            f.insert(
                "strategy".into(),
                v(at(spec, &["strategy"]).and_then(|s| attr(s, "type"))),
            );
            f.insert(
                "run_as_user".into(),
                v(at(pod, &["security_context"]).and_then(|s| attr(s, "run_as_user"))),
            );
            f.insert(
                "service_account".into(),
                v(attr(pod, "service_account_name")),
            );
            let mut volumes = Map::new();
            for vol in blocks_named(pod, "volume") {
                let b = vol.body();
                let source = if let Some(e) = at(b, &["empty_dir"]) {
                    json!({"emptyDir": v(attr(e, "size_limit"))})
                } else if let Some(p) = at(b, &["persistent_volume_claim"]) {
                    json!({"claim": v(attr(p, "claim_name"))})
                } else if let Some(s) = at(b, &["secret"]) {
                    json!({"secret": v(attr(s, "secret_name"))})
                } else {
                    json!({"configMap": v(at(b, &["config_map"]).and_then(|c| attr(c, "name")))})
                };
                let name = v(attr(b, "name"));
                volumes.insert(name.as_str().expect("volume name").into(), source);
            }
            f.insert("volumes".into(), Value::Object(volumes));
            let mut containers = Map::new();
            for c in blocks_named(pod, "container") {
                let b = c.body();
                let mut ports = Map::new();
                for p in blocks_named(b, "port") {
                    ports.insert(
                        v(attr(p.body(), "name"))
                            .as_str()
                            .expect("port name")
                            .into(),
                        v(attr(p.body(), "container_port")),
                    );
                }
                // HAProxy's ports come from one map, a dynamic block each.
                for d in blocks_named(b, "dynamic").filter(|d| d.labels()[0].as_str() == "port") {
                    let each = attr(d.body(), "for_each").expect("for_each").to_string();
                    let map = locals
                        .get(each.trim_start_matches("local."))
                        .unwrap_or_else(|| panic!("{each}"));
                    for (k, n) in map.as_object().expect("port map") {
                        ports.insert(k.replace('_', "-"), n.clone());
                    }
                }
                let mounts: BTreeSet<String> = blocks_named(b, "volume_mount")
                    .map(|m| {
                        let name = v(attr(m.body(), "name"));
                        let path = v(attr(m.body(), "mount_path"));
                        format!(
                            "{}:{}",
                            name.as_str().unwrap_or("?"),
                            path.as_str().unwrap_or("?")
                        )
                    })
                    .collect();
                let resources = at(b, &["resources"]).map_or(Value::Null, |res| {
                    json!({"requests": v(attr(res, "requests")), "limits": v(attr(res, "limits"))})
                });
                let name = v(attr(b, "name"));
                containers.insert(
                    name.as_str().expect("container name").into(),
                    json!({
                        "resources": resources,
                        "ports": ports,
                        "mounts": mounts,
                        "run_as_non_root": v(at(b, &["security_context"]).and_then(|s| attr(s, "run_as_non_root"))),
                    }),
                );
            }
            f.insert("containers".into(), Value::Object(containers));
        }
        "kubernetes_service_v1" => {
            let spec = at(r.body(), &["spec"]).expect("spec");
            let mut ports = Vec::new();
            for p in blocks_named(spec, "port") {
                ports.push(json!([
                    v(attr(p.body(), "name")),
                    v(attr(p.body(), "port")),
                    v(attr(p.body(), "target_port"))
                ]));
            }
            if let Some(d) =
                blocks_named(spec, "dynamic").find(|d| d.labels()[0].as_str() == "port")
            {
                let each = attr(d.body(), "for_each").expect("for_each").to_string();
                let map = locals
                    .get(each.trim_start_matches("local."))
                    .unwrap_or_else(|| panic!("{each}"));
                for (k, n) in map.as_object().expect("port map") {
                    let name = k.replace('_', "-");
                    ports.push(json!([name, n, name]));
                }
            }
            f.insert("ports".into(), json!(ports));
        }
        "kubernetes_labels" => {
            let labels: Map<String, Value> = v(attr(r.body(), "labels"))
                .as_object()
                .cloned()
                .unwrap_or_default();
            f.insert("labels".into(), Value::Object(labels));
        }
        _ => {}
    }
    Value::Object(f)
}

/// Ports as a set, in whatever order each description lists them.
fn normalised(mut facts: Value) -> Value {
    for key in ["ports", "ingress_ports"] {
        if let Some(list) = facts.get_mut(key).and_then(|p| p.as_array_mut()) {
            list.sort_by_key(|p| p.to_string());
        }
    }
    facts
}

#[test]
fn the_manifests_describe_the_objects_the_terraform_creates() {
    let mut from_terraform = BTreeMap::new();
    for dir in ["jump-host", "control-plane"] {
        let bodies = module(&deploy().join(dir));
        let mut vars = BTreeMap::new();
        for b in bodies.iter().flat_map(|b| blocks_named(b, "variable")) {
            if let Some(d) = attr(b.body(), "default") {
                vars.insert(
                    b.labels()[0].as_str().to_owned(),
                    value(d, &BTreeMap::new(), &BTreeMap::new()),
                );
            }
        }
        let mut names = BTreeMap::new();
        for r in bodies.iter().flat_map(|b| blocks_named(b, "resource")) {
            if let Some(n) = at(r.body(), &["metadata"]).and_then(|m| attr(m, "name")) {
                let n = value(n, &vars, &BTreeMap::new());
                if let Some(n) = n.as_str() {
                    names.insert(
                        format!("{}.{}", r.labels()[0].as_str(), r.labels()[1].as_str()),
                        n.to_owned(),
                    );
                }
            }
        }
        // HAProxy's port map: the haproxy-config module's defaults.
        let mut locals = BTreeMap::new();
        let ports = module(&deploy().join("control-plane/haproxy-config"))
            .iter()
            .flat_map(|b| blocks_named(b, "variable"))
            .find(|b| b.labels()[0].as_str() == "ports")
            .and_then(|b| attr(b.body(), "default").cloned())
            .expect("haproxy-config's ports");
        locals.insert("haproxy_ports".to_owned(), value(&ports, &vars, &names));
        for r in bodies.iter().flat_map(|b| blocks_named(b, "resource")) {
            let rtype = r.labels()[0].as_str();
            if !rtype.starts_with("kubernetes_") {
                continue;
            }
            let facts = facts_of_resource(r, &vars, &names, &locals);
            let name_expr = at(r.body(), &["metadata"])
                .and_then(|m| attr(m, "name"))
                .expect("name")
                .to_string();
            for key in for_each_keys(&bodies, r) {
                let name = if rtype == "kubernetes_labels" {
                    NAMESPACE.to_owned()
                } else if key.is_empty() {
                    value(
                        at(r.body(), &["metadata"])
                            .and_then(|m| attr(m, "name"))
                            .expect("name"),
                        &vars,
                        &names,
                    )
                    .as_str()
                    .expect("name")
                    .to_owned()
                } else {
                    name_with(&name_expr, CLUSTER_ID, &key)
                };
                let mut facts = facts.clone();
                if rtype == "kubernetes_network_policy_v1" {
                    let ports = bodies
                        .iter()
                        .flat_map(|b| blocks_named(b, "locals"))
                        .find_map(|l| attr(l.body(), "ingress_ports").cloned())
                        .map(|e| value(&e, &vars, &names))
                        .expect("local.ingress_ports");
                    facts["ingress_ports"] = ports[&key].clone();
                }
                from_terraform.insert((kind(rtype).to_owned(), name), normalised(facts));
            }
        }
    }

    let mut from_manifests = BTreeMap::new();
    for doc in manifests() {
        let kind = doc["kind"].as_str().expect("kind").to_owned();
        let name = doc["metadata"]["name"].as_str().expect("name").to_owned();
        from_manifests.insert((kind, name), normalised(facts_of_manifest(&doc)));
    }

    let tf: BTreeSet<_> = from_terraform.keys().collect();
    let yaml: BTreeSet<_> = from_manifests.keys().collect();
    assert_eq!(
        tf,
        yaml,
        "only in the Terraform: {:?}\nonly in the manifests: {:?}",
        tf.difference(&yaml).collect::<Vec<_>>(),
        yaml.difference(&tf).collect::<Vec<_>>()
    );
    for (key, facts) in &from_terraform {
        assert_eq!(
            &from_manifests[key], facts,
            "{key:?}: the manifest (left) and the Terraform (right) differ"
        );
    }
    assert!(from_terraform.len() >= 19, "{}", from_terraform.len());
}

// ---------------------------------------------------------------------------
// The controller's readiness over the real tenant workflow.

fn readyz(env: &[(&str, &str)]) -> (u16, Value) {
    let b = Bootstrapper::new();
    let workflow = repo().join("workflows/rocketmq.toml");
    let mut cmd = b.command(&["serve", "--insecure-no-auth", "--listen", "127.0.0.1:0"]);
    // The shipped workflow where it ships: its templates are beside it.
    cmd.arg("--workflow").arg(&workflow);
    cmd.env_remove("BOOTSTRAPPER_CODE_GIT_URL")
        .env_remove("BOOTSTRAPPER_CODE_GIT_REF");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let running = crate::support::spawn_session(cmd, b.dir());
    let mut address = None;
    let started = poll(
        || {
            address = running
                .stderr()
                .split("listening on http://")
                .nth(1)
                .and_then(|rest| rest.split(';').next())
                .map(str::to_owned);
            address.is_some()
        },
        Duration::from_secs(30),
    );
    assert!(started, "serve did not start:\n{}", running.stderr());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut response = agent
        .get(format!("http://{}/readyz", address.expect("address")))
        .call()
        .expect("GET /readyz");
    let status = response.status().as_u16();
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string().expect("body"))
        .expect("JSON body");
    (status, body)
}

#[test]
fn readyz_names_tenant_code_that_can_be_neither_copied_nor_cloned() {
    // This machine's image has no /code/rocketmq-nomad, as the default image build has none.
    assert!(!Path::new("/code/rocketmq-nomad").exists());
    let (status, body) = readyz(&[]);
    assert_eq!(status, 503, "{body}");
    let problems = body["problems"].to_string();
    assert!(problems.contains("code is not found"), "{body}");
    assert!(problems.contains("/code/rocketmq-nomad"), "{body}");

    let (status, body) = readyz(&[(
        "BOOTSTRAPPER_CODE_GIT_URL",
        "https://git.example.com/platform/rocketmq-nomad.git",
    )]);
    assert!(
        !body["problems"].to_string().contains("code is not found"),
        "{body}"
    );
    assert_eq!(status, 200, "{body}");
}
