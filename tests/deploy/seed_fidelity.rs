//! The shipped workflows against the Terraform tree they were written for
//! (`nomad-ucloud-sample`, the seed's original repository): every variable a module declares
//! without a default is given, by the rendered tfvars or by a `TF_VAR_*` that the pod's
//! manifest sets; nothing the module does not declare is rendered; list, number and bool
//! variables get values of that shape; every `steps.<step>.outputs.<output>` names an output
//! the step's module has; and no backend setting but the address overrides the
//! tree's own `backend.tf`, so that its `terraform_remote_state` reads find the states.
//!
//! The tree is found at `$SEED_TREE`, else `../shared/seed/nomad-ucloud-sample` beside the
//! repository. The workflows run through `bootstrapper plan --json` with the tree as their
//! `image_dir`: exactly what the engine would write, nothing written.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::support::Bootstrapper;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn seed_tree() -> PathBuf {
    let tree = std::env::var_os("SEED_TREE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/seed/nomad-ucloud-sample"));
    assert!(
        tree.join("variables.tf").is_file(),
        "the nomad-ucloud-sample tree is not at {} (set SEED_TREE)",
        tree.display()
    );
    tree
}

/// What a module declares about one variable.
#[derive(Debug)]
struct Declared {
    has_default: bool,
    /// `list`, `set`, `tuple`, `map`, `object`, `number`, `bool`, `string`, or empty when the
    /// declaration has no type.
    kind: String,
}

/// Every `.tf` file directly in `dir` (a module is one directory), parsed.
fn module_bodies(dir: &Path) -> Vec<hcl::Body> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "tf"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .tf file in {}", dir.display());
    let mut bodies = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).expect("read .tf");
        let declares = text.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with("variable") || l.starts_with("output")
        });
        match hcl::parse(&text) {
            Ok(body) => bodies.push(body),
            // rocketmq-job-broker/main.tf repeats a key in an object, which HCL refuses; a
            // file that declares no variable or output does not matter here.
            Err(_) if !declares => {}
            Err(e) => panic!("parse {}: {e}", file.display()),
        }
    }
    bodies
}

/// The `variable` blocks of a module.
fn declared_variables(dir: &Path) -> BTreeMap<String, Declared> {
    let mut vars = BTreeMap::new();
    for body in module_bodies(dir) {
        for block in body.blocks().filter(|b| b.identifier() == "variable") {
            let name = block.labels()[0].as_str().to_owned();
            let attr = |key: &str| block.body().attributes().find(|a| a.key() == key);
            let kind = attr("type")
                .map(|a| type_kind(a.expr()))
                .unwrap_or_default();
            vars.insert(
                name,
                Declared {
                    has_default: attr("default").is_some(),
                    kind,
                },
            );
        }
    }
    vars
}

/// The names of a module's `output` blocks.
fn declared_outputs(dir: &Path) -> BTreeSet<String> {
    module_bodies(dir)
        .iter()
        .flat_map(|body| body.blocks().filter(|b| b.identifier() == "output"))
        .map(|b| b.labels()[0].as_str().to_owned())
        .collect()
}

/// Every `steps.<step>.outputs.<output>` a template text names.
fn output_refs(text: &str) -> BTreeSet<(String, String)> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut refs = BTreeSet::new();
    for (at, _) in text.match_indices("steps.") {
        let rest = &text[at + "steps.".len()..];
        let step = ident(rest);
        if let Some(rest) = rest[step.len()..].strip_prefix(".outputs.") {
            refs.insert((step, ident(rest)));
        }
    }
    refs
}

/// The outermost type constructor: `list(string)` is `list`; the pre-0.12 quoted `"string"`
/// is `string`.
fn type_kind(expr: &hcl::Expression) -> String {
    match expr {
        hcl::Expression::Variable(v) => v.as_str().to_owned(),
        hcl::Expression::FuncCall(call) => call.name.to_string(),
        hcl::Expression::String(s) => s.clone(),
        hcl::Expression::TemplateExpr(t) => t.to_string().trim_matches('"').to_owned(),
        other => panic!("unexpected type expression {other:?}"),
    }
}

/// Whether a rendered value has the shape the declared type asks for.
fn fits(kind: &str, value: &hcl::Expression) -> bool {
    use hcl::Expression as E;
    match kind {
        "list" | "set" | "tuple" => matches!(value, E::Array(_)),
        "map" | "object" => matches!(value, E::Object(_)),
        "number" => matches!(value, E::Number(_)),
        "bool" => matches!(value, E::Bool(_)),
        "string" => matches!(value, E::String(_) | E::TemplateExpr(_)),
        _ => true,
    }
}

/// The `TF_VAR_*` names a manifest gives its containers (`- name: TF_VAR_x`).
fn manifest_tf_vars(manifest: &Path) -> BTreeSet<String> {
    let text =
        fs::read_to_string(manifest).unwrap_or_else(|e| panic!("read {}: {e}", manifest.display()));
    text.lines()
        .filter_map(|l| {
            l.trim()
                .trim_start_matches("- ")
                .strip_prefix("name: TF_VAR_")
        })
        .map(|n| n.trim().trim_matches('"').to_owned())
        .collect()
}

/// A step as the workflow file writes it.
struct Step {
    name: String,
    dir: String,
    /// Its module: in the tree, or in the overlay that the workflow adds to the code there.
    module: PathBuf,
    /// The backend address template, unrendered.
    address: Option<String>,
    /// The vars template, as the copy names it.
    vars: Option<PathBuf>,
}

/// The backend address that the controller's environment gives, and the template naming it.
const ENV_URL: &str = "http://[fd00::8500]:8500";
const ENV_URL_TEMPLATE: &str = "{{ env.TF_VAR_remote_state_backend_url }}";

/// A copy of a shipped workflow whose code comes from the tree, with its template paths made
/// absolute (the copy lives elsewhere) or taken from `templates` when given.
fn workflow_on_tree(workflow: &str, templates: Option<&Path>) -> (String, Vec<Step>) {
    let path = repo().join("workflows").join(workflow);
    let mut doc: toml::Table = fs::read_to_string(&path)
        .expect("read workflow")
        .parse()
        .expect("parse workflow");
    let source = doc["source"].as_table_mut().expect("[source]");
    source.insert("image_dir".into(), seed_tree().display().to_string().into());
    // Overlays ship beside the workflow: their `from` is relative to its directory.
    let mut overlays = Vec::new();
    for overlay in source
        .get_mut("overlay")
        .and_then(|o| o.as_array_mut())
        .into_iter()
        .flatten()
    {
        let overlay = overlay.as_table_mut().expect("overlay table");
        let from = path
            .parent()
            .expect("workflows dir")
            .join(overlay["from"].as_str().expect("from"));
        overlay.insert("from".into(), from.display().to_string().into());
        overlays.push((PathBuf::from(overlay["into"].as_str().expect("into")), from));
    }
    let mut steps = Vec::new();
    for step in doc["step"].as_array_mut().expect("[[step]]") {
        let step = step.as_table_mut().expect("step table");
        if let Some(vars) = step.get("vars").and_then(|v| v.as_str()) {
            let vars = match templates {
                Some(dir) => dir.join(Path::new(vars).file_name().expect("file name")),
                None => path.parent().expect("workflows dir").join(vars),
            };
            step.insert("vars".into(), vars.display().to_string().into());
        }
        let vars = step.get("vars").and_then(|v| v.as_str()).map(PathBuf::from);
        let dir = step["dir"].as_str().expect("dir").to_owned();
        let module = overlays
            .iter()
            .find_map(|(into, from)| Some(from.join(Path::new(&dir).strip_prefix(into).ok()?)))
            .unwrap_or_else(|| seed_tree().join(&dir));
        steps.push(Step {
            name: step["name"].as_str().expect("name").to_owned(),
            dir,
            module,
            address: step
                .get("backend_config")
                .and_then(|b| b.get("address"))
                .and_then(|a| a.as_str())
                .map(str::to_owned),
            vars,
        });
    }
    (toml::to_string(&doc).expect("serialize workflow"), steps)
}

/// Everything wrong between a workflow's rendered steps and the tree's modules.
fn problems(workflow: &str, params: &str, manifest: &str, templates: Option<&Path>) -> Vec<String> {
    let (toml, steps) = workflow_on_tree(workflow, templates);
    let from_env = manifest_tf_vars(&repo().join(manifest));
    assert!(
        !from_env.is_empty(),
        "{manifest} sets no TF_VAR_*: the cloud keys must reach terraform"
    );

    let mut bootstrapper = Bootstrapper::new();
    bootstrapper.write_workflow(&toml);
    let params: Value = serde_json::from_str(
        &fs::read_to_string(repo().join("workflows").join(params)).expect("read params"),
    )
    .expect("params are JSON");
    bootstrapper.write_params(&params);
    for name in &from_env {
        let value = if name == "remote_state_backend_url" {
            ENV_URL.to_owned()
        } else {
            format!("value-of-{name}")
        };
        bootstrapper.env(format!("TF_VAR_{name}"), value);
    }
    // The engine's own checks come first: a name the module lacks, or a required variable
    // left without a value, stops `validate` with exit 2 and one `error:` line each.
    let validated = bootstrapper.run(&["validate"]);
    if validated.code != Some(0) {
        validated.assert_code(2);
        return validated
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .map(str::to_owned)
            .collect();
    }
    let out = bootstrapper.run(&["plan", "--json"]);
    out.assert_success();
    let plan: Value = serde_json::from_str(&out.stdout).expect("plan --json is JSON");

    let mut problems = Vec::new();
    let planned = plan["steps"].as_array().expect("steps");
    assert_eq!(planned.len(), steps.len(), "{}", out.stdout);
    let mut workspaces = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    let mut backend_urls = BTreeSet::new();
    // Outputs named by the workflow or a template exist in the module of the step they name
    // (in templates `-` reads `_`).
    let mut texts =
        vec![fs::read_to_string(repo().join("workflows").join(workflow)).expect("read workflow")];
    texts.extend(
        steps
            .iter()
            .filter_map(|s| s.vars.as_ref())
            .map(|p| fs::read_to_string(p).expect("read template")),
    );
    for (step, output) in texts.iter().flat_map(|t| output_refs(t)) {
        match steps.iter().find(|s| s.name.replace('-', "_") == step) {
            None => problems.push(format!("`steps.{step}` names no step")),
            Some(s) if !declared_outputs(&s.module).contains(&output) => problems.push(format!(
                "`steps.{step}.outputs.{output}` is not an output of {}",
                s.dir
            )),
            Some(_) => {}
        }
    }
    for (
        Step {
            name,
            dir,
            module,
            address,
            ..
        },
        step,
    ) in steps.iter().zip(planned)
    {
        assert_eq!(step["step"], name.as_str());
        let declared = declared_variables(module);
        let content = step["vars_file"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("step {name} renders no vars file"));
        let rendered = hcl::parse(content)
            .unwrap_or_else(|e| panic!("step {name}: rendered tfvars are not HCL: {e}\n{content}"));
        let mut given = BTreeSet::new();
        for attr in rendered.attributes() {
            let key = attr.key().to_owned();
            match declared.get(&key) {
                None => problems.push(format!("{name}: `{key}` is not declared by {dir}")),
                Some(d) if !fits(&d.kind, attr.expr()) => problems.push(format!(
                    "{name}: `{key}` is declared {} but rendered as {}",
                    d.kind,
                    attr.expr()
                )),
                Some(_) => {}
            }
            if key == "remote_state_backend_url" {
                backend_urls.insert(attr.expr().to_string().trim_matches('"').to_owned());
            }
            given.insert(key);
        }
        for (var, d) in &declared {
            if !d.has_default && !given.contains(var) && !from_env.contains(var) {
                problems.push(format!(
                    "{name}: `{var}` ({dir}) has no default and is neither rendered nor set as TF_VAR_{var} in {manifest}"
                ));
            }
        }

        // The tree's backend.tf sets type, scheme and path; only the address may be ours.
        let backend = step["backend_config"].as_object().expect("backend_config");
        for key in backend.keys().filter(|k| k.as_str() != "address") {
            problems.push(format!(
                "{name}: backend_config overrides `{key}` of {dir}/backend.tf"
            ));
        }
        // A TF_VAR_* value may be masked in a plan (by its name, or BOOTSTRAPPER_SECRET_ENV),
        // so an address taken from one is known by its template.
        match (
            address.as_deref(),
            backend.get("address").and_then(Value::as_str),
        ) {
            (Some(ENV_URL_TEMPLATE), _) => {
                addresses.insert(ENV_URL.to_owned());
            }
            (_, Some(rendered)) => {
                addresses.insert(rendered.to_owned());
            }
            _ => {}
        }
        if let Some(ws) = step["workspace"].as_str() {
            workspaces.insert(ws.to_owned());
        }
    }
    // The remote-state reads find a state only where it was written: one Consul, one
    // workspace (the cluster id) for every step.
    if workspaces.len() > 1 {
        problems.push(format!("steps use different workspaces: {workspaces:?}"));
    }
    if addresses.len() > 1 {
        problems.push(format!(
            "steps use different backend addresses: {addresses:?}"
        ));
    }
    let env_url = from_env
        .contains("remote_state_backend_url")
        .then(|| ENV_URL.to_owned());
    for url in backend_urls.iter().chain(env_url.iter()) {
        if !addresses.contains(url) {
            problems.push(format!(
                "remote_state_backend_url {url} is not the backend address {addresses:?}"
            ));
        }
    }
    problems
}

#[test]
fn the_bootstrap_workflow_satisfies_every_module_of_the_tree() {
    let problems = problems(
        "bootstrap.toml",
        "bootstrap.params.example.json",
        "deploy/k8s/bootstrapper.yaml",
        None,
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_rocketmq_workflow_satisfies_the_namesvr_and_broker_modules() {
    let problems = problems(
        "rocketmq.toml",
        "rocketmq.params.example.json",
        "deploy/k8s/controller.yaml",
        None,
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn dropped_renamed_and_mistyped_variables_and_a_missing_output_are_all_reported() {
    let broken = |network: bool, mistyped: bool, renamed: bool| {
        let templates = tempfile::tempdir().expect("temp dir");
        for entry in fs::read_dir(repo().join("templates/bootstrap")).expect("templates") {
            let path = entry.expect("entry").path();
            let text = fs::read_to_string(&path).expect("read template");
            let text = match path.file_name().and_then(|n| n.to_str()) {
                Some("network.tfvars.tera") if network => text
                    .lines()
                    .filter(|l| !l.starts_with("legacy_subnet_id"))
                    .map(|l| match l.strip_prefix("mgrVpcCidr") {
                        Some(rest) => format!("mgr_vpc_cidr{rest}"),
                        None => l.to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
                Some("hosts.tfvars.tera") => {
                    let mut text = text;
                    if mistyped {
                        text = text.replace(
                            "broker_count                = {{ params.broker_count | json_encode() }}",
                            "broker_count                = 3",
                        );
                    }
                    if renamed {
                        text = text.replace("outputs.backend_ip", "outputs.consul_address");
                    }
                    text
                }
                _ => text,
            };
            fs::write(templates.path().join(path.file_name().expect("name")), text)
                .expect("write template");
        }
        let problems = problems(
            "bootstrap.toml",
            "bootstrap.params.example.json",
            "deploy/k8s/bootstrapper.yaml",
            Some(templates.path()),
        );
        (problems.join("\n"), problems.len())
    };

    // What the engine's `validate` itself refuses: names against the module's variables.
    let (report, count) = broken(true, false, false);
    for expected in [
        "sets `mgr_vpc_cidr`, which the module",
        "required variable `mgrVpcCidr`",
        "required variable `legacy_subnet_id`",
    ] {
        assert!(
            report.contains(expected),
            "missing {expected:?} in:\n{report}"
        );
    }
    assert_eq!(count, 3, "{report}");

    // And a value against its variable's type.
    let (report, count) = broken(false, true, false);
    assert!(
        report.contains("sets `broker_count` to a number, where the type is `list(number)`"),
        "{report}"
    );
    assert_eq!(count, 1, "{report}");

    // What only this test sees: the outputs a template names.
    let (report, count) = broken(false, false, true);
    for expected in [
        "`steps.control_network.outputs.consul_address` is not an output of control-network",
        // The hosts template's backend URL now differs from the backend address, too.
        "is not the backend address",
    ] {
        assert!(
            report.contains(expected),
            "missing {expected:?} in:\n{report}"
        );
    }
    assert_eq!(count, 2, "{report}");
}

/// The `TF_VAR_*` names a file mentions (a manifest's env, a module's env blocks and maps).
fn tf_var_names(path: &Path) -> BTreeSet<String> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.match_indices("TF_VAR_")
        .map(|(at, _)| {
            text[at + "TF_VAR_".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// The Terraform that creates the pods gives them what the manifests (checked above against
/// the tree) give.
#[test]
fn the_terraform_pods_get_the_same_tf_vars_as_the_manifests() {
    for (module, manifest) in [
        ("deploy/jump-host/main.tf", "deploy/k8s/bootstrapper.yaml"),
        (
            "deploy/control-plane/controller.tf",
            "deploy/k8s/controller.yaml",
        ),
    ] {
        let from_module = tf_var_names(&repo().join(module));
        let from_manifest = manifest_tf_vars(&repo().join(manifest));
        assert!(!from_module.is_empty(), "{module} sets no TF_VAR_*");
        assert_eq!(from_module, from_manifest, "{module} against {manifest}");
    }
}
