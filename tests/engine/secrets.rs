//! No secret is ever shown: the demo, run with real terraform and known secret values (a
//! secret param, a `TF_VAR_*` value that terraform prints, a sensitive output), through every
//! command that prints something, in text and JSON. Every byte printed and every journal file
//! is searched for each secret in every form it could take (raw, JSON-escaped, HCL-escaped);
//! every file under the root that holds one must be readable by its owner only.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::support::{Bootstrapper, Outcome};
use serde_json::{json, Value};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A password with a quote and an HCL template sequence, so that its escaped forms differ.
const ROOT_PASSWORD: &str = "Sup3r\"Secret${x}Root-Pw";
/// A secret param that no template uses.
const API_TOKEN: &str = "tok-unused-7c1f9e";
/// A `TF_VAR_*` value that reaches terraform, which prints it in its plan; secret because
/// BOOTSTRAPPER_SECRET_ENV lists it (its name says nothing).
const TF_VAR_REGION: &str = "tfvar-region-9d2e41";

/// The demo, its paths made absolute, network's region taken from `TF_VAR_region`.
fn workflow() -> String {
    let text = fs::read_to_string(repo().join("workflows/demo.toml")).unwrap();
    let text = text.replace("\"../", &format!("\"{}/", repo().display()));
    let network = "name = \"network\"\ndir = \"network\"\n";
    assert!(text.contains(network));
    text.replace(
        network,
        &format!("{network}apply_args = [\"-var=region={{{{ env.TF_VAR_region }}}}\"]\n"),
    )
}

/// A step whose provisioner prints every secret the demo has (the root password, the
/// sensitive token, the `TF_VAR_*` value): `apply -json` prints no attribute values, so
/// without it a run's output could not leak one whatever the masking did.
const ECHO_MODULE: &str = r#"
variable "password" {
  type = string
}

variable "token" {
  type = string
}

resource "terraform_data" "echo" {
  input = var.token

  provisioner "local-exec" {
    command     = "printf 'echo:%s:%s:%s\\n' \"$P\" \"$T\" \"$TF_VAR_region\""
    environment = { P = var.password, T = var.token }
  }
}
"#;

/// The demo's workflow with the printing step added after hosts, its module and template
/// written beside the workflow.
fn workflow_with_echo(b: &Bootstrapper) -> String {
    let module = b.dir().join("echo-module");
    fs::create_dir_all(&module).unwrap();
    fs::write(module.join("main.tf"), ECHO_MODULE).unwrap();
    fs::write(
        b.dir().join("echo.tfvars.json.tera"),
        "{\"password\": {{ params.root_password | json_encode() }}, \
         \"token\": {{ steps.hosts.outputs.nomad_token | json_encode() }}}\n",
    )
    .unwrap();
    let text = workflow();
    let source = "[source]\n";
    assert!(text.contains(source));
    text.replacen(
        source,
        "[source]\noverlay = [{ from = \"echo-module\", into = \"echo\" }]\n",
        1,
    ) + "\n[[step]]\nname = \"echo\"\ndir = \"echo\"\nneeds = [\"hosts\"]\n\
         vars = \"echo.tfvars.json.tera\"\n"
}

fn params(nomad_client_count: u32) -> Value {
    let text = fs::read_to_string(repo().join("workflows/demo.params.json")).unwrap();
    let mut params: Value = serde_json::from_str(&text).unwrap();
    params["root_password"] = json!(ROOT_PASSWORD);
    params["api_token"] = json!(API_TOKEN);
    params["nomad_client_count"] = json!(nomad_client_count);
    params
}

/// Each secret as printed raw, inside a JSON string, and with HCL's escapes on top.
fn forms(secret: &str) -> Vec<String> {
    let quoted = serde_json::to_string(secret).unwrap();
    let json = quoted[1..quoted.len() - 1].to_string();
    let hcl = json.replace("${", "$${");
    let mut forms = vec![secret.to_string(), json, hcl];
    forms.dedup();
    forms
}

/// Which secret, in which form, `bytes` holds, if any.
fn leak(bytes: &[u8], secrets: &[String]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    secrets
        .iter()
        .flat_map(|s| forms(s))
        .find(|form| text.contains(form.as_str()))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            files.extend(files_under(&entry.path()));
        } else if kind.is_file() {
            files.push(entry.path());
        }
    }
    files
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_demo_never_shows_a_secret_and_keeps_them_in_owner_only_files() {
    let mut b = Bootstrapper::new();
    b.write_workflow(&workflow_with_echo(&b));
    b.write_params(&params(2));
    b.env("TF_VAR_region", TF_VAR_REGION);
    b.env("BOOTSTRAPPER_SECRET_ENV", "TF_VAR_region");
    let mut printed: Vec<(String, Outcome)> = Vec::new();
    // Runs one command that must succeed, keeps what it printed, returns its stderr.
    let run = |printed: &mut Vec<(String, Outcome)>, b: &Bootstrapper, args: &[&str]| {
        let out = b.run(args);
        out.assert_success();
        let stderr = out.stderr.clone();
        printed.push((args.join(" "), out));
        stderr
    };

    run(&mut printed, &b, &["validate"]);
    run(&mut printed, &b, &["plan"]);
    run(&mut printed, &b, &["plan", "--json"]);
    let first_run = run(&mut printed, &b, &["--log-format", "json", "run"]);
    assert!(
        first_run.contains("\"event\":\"change_summary\""),
        "{first_run}"
    );
    // The echo step printed every secret, and the log shows each one masked.
    assert!(
        first_run.contains("echo:********:********:********"),
        "{first_run}"
    );

    let sensitive = b.root().join(".bootstrapper/steps/hosts/sensitive");
    let kept: Value = serde_json::from_str(&fs::read_to_string(&sensitive).unwrap()).unwrap();
    let token = kept["nomad_token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 64, "{kept}");
    let system_job_vars = b.root().join("demo/system-job/bootstrapper.tfvars");
    assert!(fs::read_to_string(&system_job_vars)
        .unwrap()
        .contains(&token));

    run(&mut printed, &b, &["status"]);
    run(&mut printed, &b, &["status", "--json"]);
    run(&mut printed, &b, &["plan"]);
    run(&mut printed, &b, &["plan", "--json"]);
    run(&mut printed, &b, &["plan", "--destroy"]);
    run(&mut printed, &b, &["plan", "--destroy", "--json"]);
    // After a restart, the next step still gets the sensitive output, read back from the
    // journal: system-job is applied again with the token while hosts is skipped.
    run(&mut printed, &b, &["reset", "system-job"]);
    fs::remove_file(&system_job_vars).unwrap();
    run(&mut printed, &b, &["run"]);
    assert!(fs::read_to_string(&system_job_vars)
        .unwrap()
        .contains(&token));
    let rerun = &printed.last().unwrap().1.stderr;
    assert!(
        rerun.contains("hosts: done, inputs unchanged: skipped"),
        "{rerun}"
    );
    // Hosts applied again: its sensitive output is learned anew, from `output -json`.
    b.write_params(&params(3));
    run(&mut printed, &b, &["plan"]);
    run(&mut printed, &b, &["--log-format", "json", "run"]);
    run(&mut printed, &b, &["status", "--json"]);
    run(&mut printed, &b, &["--log-format", "json", "destroy"]);
    run(&mut printed, &b, &["status"]);

    let secrets = vec![
        ROOT_PASSWORD.to_string(),
        API_TOKEN.to_string(),
        TF_VAR_REGION.to_string(),
        token.clone(),
    ];
    for (command, out) in &printed {
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            if let Some(form) = leak(bytes.as_bytes(), &secrets) {
                panic!("`{command}` printed {form:?} on {stream}:\n{out}");
            }
        }
    }

    // The journal: markers, attempts, the tombstone, the code's record, the lock. Sensitive
    // output values live in one file per step beside the marker, owner-only, and nowhere else.
    let journal = b.root().join(".bootstrapper");
    let mut holding = Vec::new();
    for file in files_under(&journal) {
        if leak(&fs::read(&file).unwrap(), &secrets).is_some() {
            holding.push(file);
        }
    }
    assert_eq!(
        holding,
        std::slice::from_ref(&sensitive),
        "journal files holding a secret"
    );
    assert_eq!(mode(&sensitive), 0o600);
    let marker = fs::read_to_string(journal.join("steps/hosts/inited")).unwrap();
    assert!(marker.contains("\"nomad_token\""), "{marker}");

    // Everywhere under the root (vars files, terraform's states and backend settings): a
    // file holding a secret is its owner's alone.
    let mut checked = 0;
    for file in files_under(&b.root()) {
        if leak(&fs::read(&file).unwrap(), &secrets).is_some() {
            checked += 1;
            assert_eq!(
                mode(&file) & 0o077,
                0,
                "{} is {:o}",
                file.display(),
                mode(&file)
            );
        }
    }
    // The hosts and system-job vars files and hosts' state, at least.
    assert!(checked >= 4, "only {checked} files hold a secret");
    assert_eq!(mode(&system_job_vars), 0o600);
    assert_eq!(
        mode(&b.root().join("demo/hosts/bootstrapper.tfvars")),
        0o600
    );
}

#[test]
fn credentials_in_a_git_url_are_masked_in_every_report_and_error() {
    let secret = "gh-pat-Secr3tValue";
    let mut b = Bootstrapper::new();
    b.write_workflow(&format!(
        r#"
[source]
dir = "code"
git_url = "https://deploy-user:{secret}@127.0.0.1:9/org/repo.git"
git_ref = "main"

[settings]
retries = 0

[[step]]
name = "a"
dir = "a"
"#
    ));
    b.write_params(&json!({}));
    b.arg("--terraform").arg("terraform");
    let mut outs = vec![("validate", b.run(&["validate"]))];
    outs[0].1.assert_success();
    let plan = b.run(&["plan"]);
    plan.assert_success();
    assert!(
        plan.stdout
            .contains("would clone https://********@127.0.0.1:9/org/repo.git at main"),
        "{plan}"
    );
    outs.push(("plan", plan));
    let plan_json = b.run(&["plan", "--json"]);
    plan_json.assert_success();
    outs.push(("plan --json", plan_json));
    // Nothing listens there: the clone fails, and says so without the credentials.
    let run = b.run(&["run"]);
    assert_ne!(run.code, Some(0), "{run}");
    assert!(run.stderr.contains("127.0.0.1:9"), "{run}");
    let code = run.code;
    outs.push(("run", run));
    let run_json = b.run(&["--log-format", "json", "run"]);
    assert_eq!(run_json.code, code, "{run_json}");
    assert!(run_json.stderr.contains("127.0.0.1:9"), "{run_json}");
    outs.push(("run --log-format json", run_json));
    let status = b.run(&["status", "--json"]);
    status.assert_success();
    outs.push(("status --json", status));
    for (command, out) in &outs {
        assert!(
            !out.stdout.contains(secret) && !out.stderr.contains(secret),
            "`{command}` showed the credentials:\n{out}"
        );
    }
}

/// Not secret by its name: masked only because it comes from a secret params file.
const SECRET_REGION: &str = "region-from-a-secret-5e1a9c";

#[test]
fn every_value_of_a_secret_params_file_is_masked_whatever_its_name() {
    let mut b = Bootstrapper::new();
    b.write_workflow(&workflow().replace(
        "apply_args = [\"-var=region={{ env.TF_VAR_region }}\"]\n",
        "",
    ));
    // Two plain files, the second winning key by key, then two secret files (one given in
    // the environment as a colon-separated list).
    let mut plain = params(2);
    plain.as_object_mut().unwrap().remove("root_password");
    plain.as_object_mut().unwrap().remove("api_token");
    b.write_params(&plain);
    let file = |name: &str, value: Value| {
        let path = b.dir().join(name);
        fs::write(&path, value.to_string()).unwrap();
        path
    };
    let more = file("more.json", json!({ "mgr_vpc_cidr": "10.99.0.0/16" }));
    let secret_a = file("secret-a.json", json!({ "region": SECRET_REGION }));
    let secret_b = file("secret-b.json", json!({ "root_password": ROOT_PASSWORD }));
    b.arg("--params").arg(&more);
    b.env(
        "BOOTSTRAPPER_SECRET_PARAMS",
        format!("{}:{}", secret_a.display(), secret_b.display()),
    );

    // Given with BOOTSTRAPPER_PARAMS as a colon-separated list instead of --params, the
    // files merge the same way: the plan shows the later files' values.
    let cmd = b.command(&["plan"]);
    let mut args = Vec::new();
    let mut given = cmd.get_args();
    while let Some(arg) = given.next() {
        match arg == "--params" {
            true => drop(given.next()),
            false => args.push(arg.to_owned()),
        }
    }
    let mut by_env = std::process::Command::new(crate::support::BIN);
    by_env
        .args(args)
        .env_remove("BOOTSTRAPPER_SECRET_PARAMS")
        .env(
            "BOOTSTRAPPER_PARAMS",
            format!(
                "{}:{}:{}:{}",
                b.params_path().display(),
                more.display(),
                secret_a.display(),
                secret_b.display()
            ),
        );
    let out = by_env.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("10.99.0.0/16") && stdout.contains(SECRET_REGION),
        "{stdout}"
    );

    let mut printed = Vec::new();
    for args in [
        &["validate"][..],
        &["plan"],
        &["--log-format", "json", "run"],
        &["status", "--json"],
        &["plan", "--destroy"],
        &["destroy"],
    ] {
        let out = b.run(args);
        out.assert_success();
        printed.push((args.join(" "), out));
    }
    // The later plain file won, and a secret file's value reached the module.
    let network_vars =
        fs::read_to_string(b.root().join("demo/network/bootstrapper.tfvars")).unwrap();
    assert!(network_vars.contains("10.99.0.0/16") && !network_vars.contains("10.20.0.0/16"));
    assert!(network_vars.contains(SECRET_REGION), "{network_vars}");

    let secrets = [SECRET_REGION.to_string(), ROOT_PASSWORD.to_string()];
    for (command, out) in &printed {
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            if let Some(form) = leak(bytes.as_bytes(), &secrets) {
                panic!("`{command}` printed {form:?} on {stream}:\n{out}");
            }
        }
    }
    let mut holding = 0;
    for path in files_under(&b.root()) {
        if leak(&fs::read(&path).unwrap(), &secrets).is_some() {
            holding += 1;
            assert_eq!(
                mode(&path) & 0o077,
                0,
                "{} is {:o}",
                path.display(),
                mode(&path)
            );
        }
    }
    // network's and hosts' vars files and states, at least: the value reached terraform.
    assert!(holding >= 4, "only {holding} files hold a secret");
}

/// A secret param that a step's vars template reads.
const DB_PASSWORD: &str = "db-pw-raw-3e9f1c";

#[test]
fn status_masks_a_secret_that_an_older_journal_holds_raw() {
    let b = Bootstrapper::new();
    let tree = b.dir().join("tree/a");
    fs::create_dir_all(&tree).unwrap();
    fs::write(
        tree.join("main.tf"),
        "variable \"db_password\" {\n  type = string\n}\n\n\
         resource \"terraform_data\" \"x\" {\n  provisioner \"local-exec\" {\n    \
         command = \"exit 3\"\n  }\n}\n",
    )
    .unwrap();
    fs::write(
        b.dir().join("a.tfvars.tera"),
        "db_password = \"{{ params.db_password }}\"\n",
    )
    .unwrap();
    b.write_workflow(
        "[source]\ndir = \"code\"\nimage_dir = \"tree\"\n\n[settings]\nretries = 0\n\n\
         [[step]]\nname = \"a\"\ndir = \"a\"\nvars = \"a.tfvars.tera\"\n",
    );
    b.write_params(&json!({ "db_password": DB_PASSWORD }));
    b.run(&["run"]).assert_code(1);

    // As a version that did not mask the recorded error, or a hand edit, would leave it.
    let attempt_path = b.root().join(".bootstrapper/steps/a/attempt");
    let mut attempt: Value =
        serde_json::from_str(&fs::read_to_string(&attempt_path).unwrap()).unwrap();
    attempt["last_error"] = json!(format!("connection refused for password {DB_PASSWORD}"));
    fs::write(&attempt_path, attempt.to_string()).unwrap();

    for args in [&["status"][..], &["status", "--json"]] {
        let out = b.run(args);
        out.assert_success();
        let command = args.join(" ");
        assert!(
            !out.stdout.contains(DB_PASSWORD) && !out.stderr.contains(DB_PASSWORD),
            "`{command}` showed the password:\n{out}"
        );
        // The error itself is shown, with the secret masked in it.
        assert!(
            out.stdout
                .contains("connection refused for password ********"),
            "`{command}`:\n{out}"
        );
    }
}
