//! What a Kubernetes Job's engine needs beyond a pod's (issue 22): `destroy --every-step`,
//! which destroys from a fresh root (an emptyDir) by reading earlier steps' outputs from
//! their backends, and `--result-file`, the engine's result in at most 4 KiB for the
//! termination-message path. Real terraform, real PostgreSQL.

use std::fs;

use serde_json::json;

use crate::support::*;

/// A step of the two-step workflow: `base` hands `name` to `top`; both keep their state in
/// PostgreSQL, and each resource writes `create`/`destroy <step> <name>` to the ledger.
fn module(step: &str) -> String {
    let name = if step == "base" {
        "\"from-base\""
    } else {
        "var.name"
    };
    format!(
        r#"terraform {{
  backend "pg" {{}}
}}
variable "ledger" {{
  type = string
}}
variable "name" {{
  type    = string
  default = ""
}}
variable "big" {{
  type    = number
  default = 0
}}
variable "fail" {{
  type    = bool
  default = false
}}
resource "terraform_data" "fail" {{
  count = var.fail ? 1 : 0
  provisioner "local-exec" {{
    command = "echo 'asked to fail' >&2; exit 1"
  }}
}}
resource "terraform_data" "r" {{
  input = {{ ledger = var.ledger, line = "{step} ${{{name}}}" }}
  provisioner "local-exec" {{
    command     = "echo \"create $LINE\" >> \"$LEDGER\""
    environment = {{ LEDGER = var.ledger, LINE = self.input.line }}
  }}
  provisioner "local-exec" {{
    when        = destroy
    command     = "echo \"destroy $LINE\" >> \"$LEDGER\""
    environment = {{ LEDGER = self.input.ledger, LINE = self.input.line }}
  }}
}}
output "name" {{
  value = {name}
}}
output "password" {{
  value     = "hunter2-{step}"
  sensitive = true
}}
output "big" {{
  value = join("", [for i in range(var.big) : "xxxxxxxxxx"])
}}
"#
    )
}

/// The two-step workflow and its params, on a fresh root and database.
struct Fixture {
    b: Bootstrapper,
    conn_str: String,
}

impl Fixture {
    fn new() -> Self {
        let b = Bootstrapper::new();
        let image = b.dir().join("image");
        let templates = b.dir().join("templates");
        fs::create_dir_all(&templates).expect("create templates");
        for step in ["base", "top"] {
            fs::create_dir_all(image.join(step)).expect("create module dir");
            fs::write(image.join(step).join("main.tf"), module(step)).expect("write module");
        }
        fs::write(
            templates.join("base.tfvars.tera"),
            "ledger = \"{{ params.ledger }}\"\nbig = {{ params.big }}\n",
        )
        .expect("write template");
        fs::write(
            templates.join("top.tfvars.tera"),
            "ledger = \"{{ params.ledger }}\"\nname = \"{{ steps.base.outputs.name }}\"\nfail = {{ params.fail }}\n",
        )
        .expect("write template");
        let path = |p: &std::path::Path| serde_json::to_string(&p.to_str().unwrap()).unwrap();
        let mut workflow = format!(
            "[settings]\nretries = 0\n\n[source]\ndir = \"code\"\nimage_dir = {}\n",
            path(&image)
        );
        for step in ["base", "top"] {
            workflow.push_str(&format!(
                "\n[[step]]\nname = \"{step}\"\ndir = \"{step}\"\nvars = {}\n\
                 backend_config = {{ conn_str = \"{{{{ params.pg_conn_str }}}}\", schema_name = \"{step}\" }}\n",
                path(&templates.join(format!("{step}.tfvars.tera")))
            ));
        }
        b.write_workflow(&workflow);
        let conn_str = fresh_database();
        b.write_params(&json!({
            "ledger": b.ledger_path(),
            "pg_conn_str": conn_str,
            "big": 0,
            "fail": false,
        }));
        Fixture { b, conn_str }
    }

    fn set_params(&self, extra: serde_json::Value) {
        let mut params: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(self.b.params_path()).unwrap()).unwrap();
        for (key, value) in extra.as_object().unwrap() {
            params[key] = value.clone();
        }
        self.b.write_params(&params);
    }

    /// The result `--result-file` wrote, parsed, and its size.
    fn result(&self) -> (serde_json::Value, usize) {
        let text = fs::read_to_string(self.b.dir().join("result.json")).expect("result written");
        assert!(!text.contains("hunter2"), "a sensitive output in {text}");
        (
            serde_json::from_str(&text).expect("result is JSON"),
            text.len(),
        )
    }

    /// The root as a new pod finds it: empty.
    fn fresh_root(&self) {
        fs::remove_dir_all(self.b.root()).expect("remove root");
        fs::create_dir(self.b.root()).expect("create root");
    }

    fn resources(&self, step: &str) -> Vec<String> {
        pg_state_resources(&self.conn_str, step, "default")
    }
}

#[test]
fn destroy_every_step_from_a_fresh_root_destroys_in_reverse_with_outputs_from_the_backends() {
    let f = Fixture::new();
    f.b.run(&["run"]).assert_success();
    assert_eq!(
        f.b.ledger(),
        ["create base from-base", "create top from-base"]
    );
    assert_eq!(f.resources("top"), ["terraform_data.r"]);

    // Without the option, a fresh root's journal knows of nothing to destroy.
    f.fresh_root();
    f.b.run(&["destroy"]).assert_success();
    assert_eq!(f.resources("top"), ["terraform_data.r"], "plain destroy");

    f.fresh_root();
    let destroy = f.b.run(&["destroy", "--every-step"]);
    destroy.assert_success();
    assert_eq!(
        f.b.ledger()[2..],
        ["destroy top from-base", "destroy base from-base"],
        "{destroy}"
    );
    assert!(f.resources("top").is_empty(), "{destroy}");
    assert!(f.resources("base").is_empty(), "{destroy}");

    // Again, over empty states: nothing more is destroyed, and it succeeds.
    f.fresh_root();
    f.b.run(&["destroy", "--every-step"]).assert_success();
    assert_eq!(f.b.ledger().len(), 4);
}

#[test]
fn destroy_every_step_of_a_workflow_never_applied_destroys_nothing() {
    let f = Fixture::new();
    let destroy = f.b.run(&["destroy", "--every-step"]);
    destroy.assert_success();
    assert!(f.b.ledger().is_empty(), "{destroy}");
    assert!(
        destroy
            .stderr
            .contains("steps.base.outputs.name not in any backend"),
        "{destroy}"
    );
}

#[test]
fn the_result_file_holds_states_and_non_sensitive_outputs_within_4_kib() {
    let f = Fixture::new();
    f.set_params(json!({"big": 500}));
    let result_file = f.b.dir().join("result.json");
    let result_file = result_file.to_str().unwrap();
    let run = f.b.run(&["--result-file", result_file, "run"]);
    run.assert_success();
    let (result, size) = f.result();
    assert!(size <= 4096, "{size} bytes");
    assert_eq!(result["exit_code"], 0, "{result}");
    assert_eq!(result["error"], serde_json::Value::Null);
    let states: Vec<_> = result["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("base", "done"), ("top", "done")]);
    assert_eq!(result["outputs"]["base"]["name"], "from-base");
    assert_eq!(result["outputs"]["top"]["name"], "from-base");
    assert!(result["outputs"]["base"].get("password").is_none());
    assert!(result["outputs"]["base"].get("big").is_none(), "{result}");
    assert_eq!(result["outputs_left_out"], json!(["base.big"]));
    assert!(result["note"].as_str().unwrap().contains("4 KiB"));
    // The code the root ran, for a controller that cannot read the journal.
    assert!(
        result["code"]
            .as_str()
            .is_some_and(|c| c.starts_with("sha256:")),
        "{result}"
    );

    // A failure: its exit code, what failed, and how.
    f.set_params(json!({"big": 0, "fail": true}));
    let run = f.b.run(&["--result-file", result_file, "run"]);
    run.assert_code(1);
    let (result, _) = f.result();
    assert_eq!(result["exit_code"], 1, "{result}");
    assert!(
        result["error"].as_str().unwrap().contains("top"),
        "{result}"
    );
    assert_eq!(result["failure"], "resource", "{result}");
    // Applied before with other inputs: `changed`, with its last attempt's failure.
    assert_eq!(result["steps"][1]["state"], "changed", "{result}");
    assert_eq!(result["steps"][1]["failure"], "resource", "{result}");

    // A command that cannot even load its inputs still says why.
    fs::write(f.b.params_path(), "not json").unwrap();
    let run = f.b.run(&["--result-file", result_file, "run"]);
    run.assert_code(2);
    let (result, _) = f.result();
    assert_eq!(result["exit_code"], 2, "{result}");
    assert!(
        result["error"].as_str().unwrap().contains("params"),
        "{result}"
    );
}

#[test]
fn diff_every_step_from_a_fresh_root_plans_the_steps_that_use_earlier_outputs() {
    let f = Fixture::new();
    f.b.run(&["run"]).assert_success();

    // A fresh root's journal knows no output of `base`: `top` cannot be planned.
    f.fresh_root();
    let plain = f.b.run(&["diff", "--json"]);
    let document: serde_json::Value = serde_json::from_str(&plain.stdout).expect("JSON");
    assert_eq!(document["steps"][1]["status"], "not_known", "{plain}");

    // Read from the backend, they are: nothing would change, so a drift check finds none.
    f.fresh_root();
    let diff = f.b.run(&["diff", "--json", "--every-step"]);
    assert_eq!(diff.code, Some(0), "{diff}");
    let document: serde_json::Value = serde_json::from_str(&diff.stdout).expect("JSON");
    for step in document["steps"].as_array().unwrap() {
        assert_eq!(step["status"], "no_changes", "{diff}");
    }

    // And a change that needs those outputs is planned.
    f.set_params(json!({"fail": true}));
    f.fresh_root();
    let diff = f.b.run(&["diff", "--json", "--every-step"]);
    assert_eq!(diff.code, Some(2), "{diff}");
    let document: serde_json::Value = serde_json::from_str(&diff.stdout).expect("JSON");
    assert_eq!(document["steps"][1]["step"], "top", "{diff}");
    assert_eq!(document["steps"][1]["status"], "changes", "{diff}");
    assert_eq!(f.b.ledger().len(), 2, "a diff applied something");
}
