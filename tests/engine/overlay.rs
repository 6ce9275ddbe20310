//! `[source] overlay`: a module that ships beside the workflow, not with the Terraform tree, is
//! put into the code in the same atomic copy, and is a step like any other: with real
//! terraform, it runs after the steps before it, with their outputs, and is destroyed first.

use std::fs;

use crate::support::Bootstrapper;
use serde_json::json;

fn module(name: &str, extra: &str) -> String {
    format!(
        r#"
variable "ledger" {{
  type = string
}}
{extra}
resource "terraform_data" "it" {{
  input = {{ ledger = var.ledger }}

  provisioner "local-exec" {{
    command     = "echo 'create {name}' >> \"$LEDGER\""
    environment = {{ LEDGER = var.ledger }}
  }}

  provisioner "local-exec" {{
    when        = destroy
    command     = "echo 'destroy {name}' >> \"$LEDGER\""
    environment = {{ LEDGER = self.input.ledger }}
  }}
}}
"#
    )
}

const WORKFLOW: &str = r#"[source]
dir = "code"
image_dir = "tree"
overlay = [{ from = "extra/plane", into = "added/plane" }]

[[step]]
name = "one"
dir = "one"
vars = "one.tfvars.tera"

[[step]]
name = "plane"
dir = "added/plane"
vars = "plane.tfvars.tera"
"#;

fn fixture() -> Bootstrapper {
    let b = Bootstrapper::new();
    let write = |rel: &str, text: &str| {
        let path = b.dir().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    };
    write(
        "tree/one/main.tf",
        &(module("one", "") + "output \"address\" {\n  value = \"10.9.8.7\"\n}\n"),
    );
    write(
        "extra/plane/main.tf",
        &module("plane", "variable \"address\" {\n  type = string\n}\n"),
    );
    write("one.tfvars.tera", "ledger = \"{{ params.ledger }}\"\n");
    write(
        "plane.tfvars.tera",
        "ledger = \"{{ params.ledger }}\"\naddress = \"{{ steps.one.outputs.address }}\"\n",
    );
    b.write_workflow(WORKFLOW);
    b.write_params(&json!({ "ledger": b.ledger_path() }));
    b
}

fn code_entries(b: &Bootstrapper) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(b.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn an_overlaid_step_runs_last_with_the_outputs_before_it_and_is_destroyed_first() {
    let b = fixture();
    b.run(&["validate"]).assert_success();
    b.run(&["run"]).assert_success();
    assert_eq!(b.ledger(), ["create one", "create plane"]);

    let code = b.root().join("code");
    assert!(code.join("added/plane/main.tf").is_file());
    // The image's tree is left as it was.
    assert!(!b.dir().join("tree/added").exists());
    let vars = fs::read_to_string(code.join("added/plane/bootstrapper.tfvars")).unwrap();
    assert!(vars.contains("address = \"10.9.8.7\""), "{vars}");
    let record = fs::read_to_string(b.root().join(".bootstrapper/source")).unwrap();
    assert!(record.contains("+added/plane=sha256:"), "{record}");

    // Nothing to do the second time: the overlay is part of the code, not re-added.
    let again = b.run(&["run"]);
    again.assert_success();
    assert!(
        again
            .stderr
            .contains("plane: done, inputs unchanged: skipped"),
        "{again}"
    );

    b.run(&["destroy"]).assert_success();
    assert_eq!(
        b.ledger(),
        ["create one", "create plane", "destroy plane", "destroy one"]
    );
}

#[test]
fn the_overlaid_module_is_checked_before_the_code_is_in_place() {
    let b = fixture();
    fs::write(
        b.dir().join("plane.tfvars.tera"),
        "ledger = \"{{ params.ledger }}\"\nadress = \"{{ steps.one.outputs.address }}\"\n",
    )
    .unwrap();
    for command in ["validate", "run"] {
        let out = b.run(&[command]);
        out.assert_code(2);
        assert!(
            out.stderr.contains("adress") && out.stderr.contains("plane"),
            "{out}"
        );
    }
    // `run` checks once the code is in place, and stops before any step.
    assert!(b.ledger().is_empty());
}

/// With `new_overlay` as the workflow's overlay line (line 4), every command stops with the
/// problem at `4:column` of the workflow file, and nothing is run or written.
fn assert_refused(b: &Bootstrapper, new_overlay: &str, column: usize, says: &str) {
    let workflow = WORKFLOW.replace(
        "overlay = [{ from = \"extra/plane\", into = \"added/plane\" }]",
        new_overlay,
    );
    b.write_workflow(&workflow);
    for command in ["validate", "plan", "run"] {
        let out = b.run(&[command]);
        out.assert_code(2);
        let at = format!("{}:4:{column}", b.workflow_path().display());
        assert!(
            out.stderr.contains(&at) && out.stderr.contains(says),
            "{command}: want {at} and {says:?}\n{out}"
        );
    }
    assert!(b.ledger().is_empty());
    assert!(code_entries(b).iter().all(|n| n != "code"));
}

#[test]
fn an_overlay_that_leaves_the_code_or_comes_from_nowhere_is_refused_at_its_place() {
    let b = fixture();
    assert_refused(
        &b,
        "overlay = [{ from = \"extra/plane\", into = \"../plane\" }]",
        43,
        "climbs out",
    );
    assert_refused(
        &b,
        "overlay = [{ from = \"extra/plane\", into = \"/plane\" }]",
        43,
        "is absolute",
    );
    assert_refused(
        &b,
        "overlay = [{ from = \"extra/nowhere\", into = \"added/plane\" }]",
        21,
        "is not a directory",
    );
    assert_refused(
        &b,
        "overlay = [{ from = \"extra/plane\", into = \"added\" }, { from = \"extra/plane\", into = \"added/plane\" }]",
        85,
        "overlaps",
    );
}

#[test]
fn an_overlay_never_replaces_what_the_tree_has() {
    let b = fixture();
    b.write_workflow(&WORKFLOW.replace("into = \"added/plane\"", "into = \"one\""));
    let out = b.run(&["run"]);
    out.assert_code(2);
    assert!(out.stderr.contains("already has one"), "{out}");
    assert!(b.ledger().is_empty());
    // No code, and no half-built copy beside it.
    assert_eq!(code_entries(&b), [".bootstrapper"]);
}
