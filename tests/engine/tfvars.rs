//! Rendered tfvars, in HCL or JSON, parsed and checked against each step's module before any
//! terraform starts: the real binary, real terraform behind a wrapper that records its calls,
//! and the four-step fixture's later steps in a real PostgreSQL server.

use std::fs;
use std::path::Path;

use crate::support::*;
use serde_json::{json, Value};

/// The four-step workflow with the fixture's JSON vars templates, without retries.
fn json_workflow() -> String {
    format!(
        "{}\n[settings]\nretries = 0\n",
        four_step_workflow(&fixtures_dir()).replace(".tfvars.tera\"", ".tfvars.json.tera\"")
    )
}

#[test]
fn json_vars_templates_apply_the_four_steps_end_to_end_and_a_rerun_skips_everything() {
    let mut b = Bootstrapper::new();
    let record = b.record_terraform();
    let conn_str = fresh_database();
    b.write_workflow(&json_workflow());
    b.write_params(&four_step_params(&b.ledger_path(), &conn_str));

    b.run(&["run"]).assert_success();

    let ledger = b.ledger();
    let creates = ledger.iter().filter(|l| l.starts_with("create ")).count();
    // 3 resources in each step but hosts, which has 4.
    assert_eq!(creates, 13, "{ledger:#?}");
    for step in FOUR_STEPS {
        let dir = b.root().join("code").join(step);
        let vars: Value = serde_json::from_str(
            &fs::read_to_string(dir.join("bootstrapper.tfvars.json")).expect("JSON vars written"),
        )
        .expect("the vars file is JSON");
        assert_eq!(vars["ledger"], b.ledger_path().to_str().unwrap(), "{step}");
        assert!(!dir.join("bootstrapper.tfvars").exists(), "{step}");
    }
    let applies: Vec<Vec<String>> = terraform_calls(&record)
        .into_iter()
        .filter(|call| call[1] == "apply")
        .collect();
    assert_eq!(applies.len(), 4, "{applies:#?}");
    for apply in &applies {
        assert!(
            apply.contains(&"-var-file=bootstrapper.tfvars.json".to_string()),
            "{apply:?}"
        );
    }
    // network's output reached hosts through a JSON template.
    let marker = |step: &str| -> Value {
        let path = b.root().join(format!(".bootstrapper/steps/{step}/inited"));
        serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
    };
    assert_eq!(
        marker("hosts")["outputs"]["network_id"],
        marker("network")["outputs"]["network_id"]
    );
    assert_eq!(
        pg_state_resources(&conn_str, "system-job", "c1").len(),
        3,
        "system-job's state in the backend"
    );

    let calls_before = terraform_calls(&record).len();
    let rerun = b.run(&["run"]);
    rerun.assert_success();
    assert_eq!(terraform_calls(&record).len(), calls_before, "{rerun}");
    for step in FOUR_STEPS {
        assert!(
            rerun
                .stderr
                .contains(&format!("{step}: done, inputs unchanged: skipped")),
            "{rerun}"
        );
    }
    assert_eq!(b.ledger(), ledger);
}

/// A root module with two required variables and one optional one, all from the vars.
const MODULE: &str = r#"
variable "cluster_id" {
  type = string
}

variable "region" {}

variable "zone" {
  default = "a"
}

resource "terraform_data" "network" {
  input = "${var.cluster_id}/${var.region}/${var.zone}"
}

output "where" {
  value = terraform_data.network.output
}
"#;

/// A one-step workflow over [`MODULE`], its vars from `template` (named `template_name`).
fn one_step(
    template_name: &str,
    template: &str,
    extra: &str,
) -> (Bootstrapper, std::path::PathBuf) {
    let mut b = Bootstrapper::new();
    let record = b.record_terraform();
    let code = b.dir().join("image/network");
    fs::create_dir_all(&code).unwrap();
    fs::write(code.join("main.tf"), MODULE).unwrap();
    fs::write(b.dir().join(template_name), template).unwrap();
    b.write_workflow(&format!(
        "[source]\ndir = \"code\"\nimage_dir = \"image\"\n\n[[step]]\nname = \"network\"\ndir = \"network\"\nvars = \"{template_name}\"\nretries = 0\n{extra}"
    ));
    b.write_params(&json!({"cluster_id": "c1", "region": "cn-bj2"}));
    (b, record)
}

#[test]
fn bad_vars_stop_validate_plan_and_run_with_exit_2_before_terraform_starts() {
    struct Case {
        about: &'static str,
        name: &'static str,
        template: &'static str,
        wants: &'static [&'static str],
    }
    let cases = [
        Case {
            about: "an HCL syntax error",
            name: "network.tfvars.tera",
            template: "cluster_id = \"{{ params.cluster_id }}\"\nregion = \"{{ params.region }}\"\nzone = \"b\" \"c\"\n",
            wants: &["network.tfvars.tera:3:12", "not valid HCL"],
        },
        Case {
            about: "invalid JSON",
            name: "network.tfvars.json.tera",
            template: "{\n  \"cluster_id\": {{ params.cluster_id | json_encode() }},\n  \"region\": {{ params.region }}\n}\n",
            wants: &[
                "network.tfvars.json.tera:3:3",
                "not valid JSON",
                "it renders as: \"region\": cn-bj2",
            ],
        },
        Case {
            about: "a name the module does not declare",
            name: "network.tfvars.tera",
            template: "cluster_id = \"{{ params.cluster_id }}\"\nregion = \"{{ params.region }}\"\nregoin = \"x\"\n",
            wants: &[
                "network.tfvars.tera:3:1",
                "sets `regoin`, which the module",
                "did you mean `region`?",
            ],
        },
        Case {
            about: "a required variable with no value",
            name: "network.tfvars.json.tera",
            template: "{\"cluster_id\": {{ params.cluster_id | json_encode() }}}\n",
            wants: &[
                "network.tfvars.json.tera",
                "required variable `region`",
                "network/main.tf:6:1",
            ],
        },
    ];
    for case in &cases {
        let (b, record) = one_step(case.name, case.template, "");
        for command in ["validate", "plan", "run"] {
            let out = b.run(&[command]);
            assert_eq!(out.code, Some(2), "{} `{command}`\n{out}", case.about);
            for want in case.wants.iter().chain(&["step `network`"]) {
                assert!(
                    out.stderr.contains(want),
                    "{} `{command}`: stderr lacks {want:?}\n{out}",
                    case.about
                );
            }
            assert!(
                terraform_calls(&record).is_empty(),
                "{} `{command}` started terraform: {:?}",
                case.about,
                terraform_calls(&record)
            );
        }
    }

    // The same step with its vars right runs, through the same wrapper.
    let (b, record) = one_step(
        "network.tfvars.json.tera",
        "{\"cluster_id\": {{ params.cluster_id | json_encode() }}, \"region\": {{ params.region | json_encode() }}}\n",
        "",
    );
    b.run(&["validate"]).assert_success();
    b.run(&["run"]).assert_success();
    assert!(
        terraform_calls(&record).iter().any(|c| c[1] == "apply"),
        "{:?}",
        terraform_calls(&record)
    );
}

fn output_where(b: &Bootstrapper) -> Value {
    let path = b.root().join(".bootstrapper/steps/network/inited");
    let marker: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    marker["outputs"]["where"].clone()
}

#[test]
fn a_required_variable_from_tf_var_or_a_var_argument_is_accepted() {
    let template = "cluster_id = \"{{ params.cluster_id }}\"\n";

    let (mut b, _) = one_step("network.tfvars.tera", template, "");
    let refused = b.run(&["validate"]);
    refused.assert_code(2);
    assert!(
        refused.stderr.contains("required variable `region`"),
        "{refused}"
    );
    b.env("TF_VAR_region", "from-env");
    b.run(&["validate"]).assert_success();
    b.run(&["plan"]).assert_success();
    b.run(&["run"]).assert_success();
    assert_eq!(output_where(&b), "c1/from-env/a");

    for args in [
        r#"apply_args = ["-var=region={{ params.region }}"]"#,
        r#"apply_args = ["-var", "region={{ params.region }}"]"#,
    ] {
        let (b, _) = one_step("network.tfvars.tera", template, args);
        b.run(&["validate"]).assert_success();
        b.run(&["run"]).assert_success();
        assert_eq!(output_where(&b), "c1/cn-bj2/a", "{args}");
    }
}

#[test]
fn check_variables_false_leaves_a_step_to_terraform() {
    let (b, record) = one_step(
        "network.tfvars.tera",
        "cluster_id = \"{{ params.cluster_id }}\"\nregion = \"r\"\nextra = 1\n",
        "check_variables = false\n",
    );
    b.run(&["validate"]).assert_success();
    let out = b.run(&["run"]);
    out.assert_success();
    // Terraform only warns about a value for an undeclared variable.
    assert!(out.stderr.contains("extra"), "{out}");
    assert!(!terraform_calls(&record).is_empty());
    assert_eq!(output_where(&b), "c1/r/a");
}

#[test]
fn without_the_code_validate_and_plan_say_the_variables_were_not_checked() {
    let b = Bootstrapper::new();
    fs::write(
        b.dir().join("network.tfvars.tera"),
        "nothing_declares_this = 1\n",
    )
    .unwrap();
    b.write_workflow(
        "[source]\ndir = \"code\"\ngit_url = \"https://git.invalid/infra.git\"\n\n[[step]]\nname = \"network\"\ndir = \"network\"\nvars = \"network.tfvars.tera\"\n",
    );
    b.write_params(&json!({}));
    let validate = b.run(&["validate"]);
    validate.assert_success();
    assert!(
        validate
            .stderr
            .contains("variables were not checked against their modules: the code is not under"),
        "{validate}"
    );
    let plan = b.run(&["plan"]);
    plan.assert_success();
    assert!(plan.stdout.contains("were not checked"), "{plan}");
    assert!(!Path::new(&b.root().join("code")).exists());
}
