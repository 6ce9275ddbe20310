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
  value = join("", [for i in range(var.big) : "x"])
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
            "ledger = \"{{ params.ledger }}\"\nname = \"{{ steps.base.outputs.name }}\"\n",
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
        }));
        Fixture { b, conn_str }
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
