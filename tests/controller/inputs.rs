//! What the controller is given: secrets in every shape stay masked in its answers and logs,
//! params that fit nothing are refused before anything runs, and the tokens file is followed
//! through rotations in place, deletion and a byte order mark.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::controller::*;
use crate::support::*;
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(120);
const MASK: &str = "********";

/// A copy of the tenant fixture in `dir`, changed by `edit` (a file's path in the copy and
/// its text, to the new text), and the workflow that uses it.
fn fixture_copy(dir: &Path, edit: impl Fn(&str, String) -> String) -> String {
    let from = tenant_fixture_dir();
    let to = dir.join("tenant");
    for file in [
        "workflow.toml",
        "namesvr/main.tf",
        "broker/main.tf",
        "templates/namesvr.tfvars.tera",
        "templates/broker.tfvars.tera",
    ] {
        let target = to.join(file);
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        let text = fs::read_to_string(from.join(file)).unwrap();
        fs::write(&target, edit(file, text)).unwrap();
    }
    // As the fixture's own workflow is made to live anywhere, its paths made absolute.
    let quoted = serde_json::to_string(to.to_str().unwrap()).unwrap();
    fs::read_to_string(to.join("workflow.toml"))
        .unwrap()
        .replace("image_dir = \".\"", &format!("image_dir = {quoted}"))
        .replace(
            "\"templates/",
            &format!("\"{}/", to.join("templates").display()),
        )
}

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn log_lines(c: &Controller, id: &str) -> Vec<String> {
    let log = c.get(&format!("/v1/clusters/{id}/log"));
    assert_eq!(log.status, 200, "{log:?}");
    log.body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// Secrets in every shape

/// A TF_VAR_* whose name says it is secret; it reaches the broker's tag, so its output.
const ENV_TOKEN: &str = "tfv-tok-51c9e2";
/// Numeric, nested, and reaching a non-sensitive output.
const PIN: u64 = 91827364;

#[test]
fn secrets_of_every_type_and_length_stay_masked_in_documents_and_the_log() {
    let dir = temp();
    let workflow = fixture_copy(dir.path(), |file, text| match file {
        "broker/main.tf" => format!(
            "{text}\nvariable \"pin\" {{\n  type    = number\n  default = 0\n}}\n\noutput \"pin\" {{\n  value = var.pin\n}}\n"
        ),
        "templates/broker.tfvars.tera" => {
            format!("{text}pin             = {{{{ params.db.pin_password | default(value=0) }}}}\n")
        }
        _ => text,
    })
    .replace(
        "name = \"broker\"\ndir = \"broker\"\n",
        "name = \"broker\"\ndir = \"broker\"\napply_args = [\"-var=tag={{ env.TF_VAR_api_token }}\"]\n",
    );
    let bed = Bed::with_workflow(&workflow);
    let c = bed.start(
        &[],
        &[
            ("TF_VAR_api_token", ENV_TOKEN),
            ("TF_VAR_feature_enabled", "false"),
        ],
    );
    let params = json!({
        "namesvr_count": 1,
        "db": {"pin_password": PIN, "pwd": "abc"},
        "tag": "-t",
    });
    let reply = c.put("m1", &params);
    assert_eq!(reply.status, 202, "{reply:?}");
    c.wait_phase(&["m1".to_string()], "ready", CONVERGE);

    let one = c.cluster("m1");
    let list = c.get("/v1/clusters").body;
    let listed = list["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "m1")
        .unwrap()
        .clone();
    for document in [&one, &listed] {
        assert_eq!(
            document["params"]["db"]["pin_password"], MASK,
            "{document:#}"
        );
        assert_eq!(document["params"]["db"]["pwd"], MASK, "{document:#}");
        assert_eq!(document["params"]["tag"], "-t", "{document:#}");
        // The pin reached an output that is not sensitive; the env's token the broker's name.
        assert_eq!(document["outputs"]["broker"]["pin"], MASK, "{document:#}");
        assert_eq!(
            document["outputs"]["broker"]["broker"],
            format!("broker{MASK}"),
            "{document:#}"
        );
        assert_eq!(
            document["outputs"]["namesvr"]["address"], "m1-namesvr.internal:9876",
            "{document:#}"
        );
        let text = document.to_string();
        for secret in [&PIN.to_string(), "\"abc\"", ENV_TOKEN] {
            assert!(!text.contains(secret), "{secret} shown: {document:#}");
        }
    }

    // In the log, a TF_VAR_* value that is no secret (`false`) is left alone; a secret one is
    // masked.
    let lines = log_lines(&c, "m1");
    let apply = lines
        .iter()
        .find(|l| l.contains("terraform apply") && l.contains("-var=tag="))
        .unwrap_or_else(|| panic!("no apply of the broker in {lines:#?}"));
    assert!(apply.contains("-input=false"), "{apply}");
    assert!(apply.contains(&format!("-var=tag={MASK}")), "{apply}");
    let all = lines.join("\n") + &c.stderr();
    assert!(!all.contains(ENV_TOKEN), "{all}");
}

// ---------------------------------------------------------------------------
// Params that fit nothing

#[test]
fn params_that_fit_nothing_are_refused_before_anything_runs() {
    let dir = temp();
    let workflow = fixture_copy(dir.path(), |file, text| match file {
        "namesvr/main.tf" => {
            let declared = "variable \"namesvr_count\" {\n  type = number\n";
            assert!(text.contains(declared), "{text}");
            text.replace(
                declared,
                &format!("{declared}\n  validation {{\n    condition     = var.namesvr_count >= 1 && floor(var.namesvr_count) == var.namesvr_count\n    error_message = \"namesvr_count is a whole number, at least 1.\"\n  }}\n"),
            )
        }
        "templates/namesvr.tfvars.tera" => text.replace(
            "{{ params.namesvr_count }}",
            "{{ params.namesvr_count | json_encode() }}",
        ),
        _ => text,
    });
    let bed = Bed::with_workflow(&workflow);
    let c = bed.start(&[], &[]);
    let template = dir.path().join("tenant/templates/namesvr.tfvars.tera");
    let at_count = format!("{}:2:1", template.display());
    let cases: Vec<(Value, &str, Option<&str>)> = vec![
        (
            json!({"namesvr_count": 1, "namesvr_cuont": 2}),
            "param `namesvr_cuont` is read by no template",
            Some("did you mean `namesvr_count`?"),
        ),
        (
            json!({"namesvr_count": 1, "replicas": 3}),
            "param `replicas` is read by no template",
            None,
        ),
        (
            json!({"namesvr_count": -1}),
            "namesvr_count is a whole number, at least 1.",
            Some(&at_count),
        ),
        (
            json!({"namesvr_count": 1.5}),
            "namesvr_count is a whole number, at least 1.",
            Some(&at_count),
        ),
        (
            json!({"namesvr_count": "three"}),
            "a string that is not a number, where the type is `number`",
            Some(&at_count),
        ),
        (
            json!({"namesvr_count": true}),
            "a boolean, where the type is `number`",
            Some(&at_count),
        ),
        (
            json!({"namesvr_count": 1, "tag": ["a"]}),
            "a list, where the type is `string`",
            None,
        ),
    ];
    for (params, message, detail) in &cases {
        let reply = c.put("bad", params);
        assert_eq!(reply.status, 400, "{params}: {reply:?}");
        let problems = reply.body["problems"].as_array().unwrap();
        let problem = problems
            .iter()
            .find(|p| p["message"].as_str().unwrap().contains(message))
            .unwrap_or_else(|| panic!("{params}: no problem saying {message:?}: {reply:?}"));
        if let Some(detail) = detail {
            let shown = format!("{} {}", problem["location"], problem["hint"]);
            assert!(
                shown.contains(detail),
                "{params}: {detail:?} not in {problem:#}"
            );
        }
    }
    let clusters = bed.b.root().join("clusters");
    let kept: Vec<PathBuf> = fs::read_dir(&clusters)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "lock")
        .collect();
    assert!(kept.is_empty(), "a refused request kept {kept:?}");
    assert!(bed.b.ledger().is_empty(), "a refused request ran terraform");
    assert!(!c
        .request("GET", "/metrics", None, None)
        .text
        .contains("bootstrapper_operations_total{"));

    // Params that fit: accepted and applied.
    assert_eq!(c.put("good", &json!({"namesvr_count": "2"})).status, 202);
    c.wait_phase(&["good".to_string()], "ready", CONVERGE);
}

// ---------------------------------------------------------------------------
// Tokens

fn status(c: &Controller, token: &str) -> u16 {
    c.request(
        "GET",
        "/v1/clusters",
        None,
        Some(&format!("Bearer {token}")),
    )
    .status
}

fn stamp(path: &Path) -> (std::time::SystemTime, u64) {
    let meta = fs::metadata(path).unwrap();
    (meta.modified().unwrap(), meta.len())
}

fn run(program: &str, args: &[&Path]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?}");
}

#[test]
fn tokens_are_followed_through_rotation_in_place_deletion_and_a_byte_order_mark() {
    use std::os::unix::fs::PermissionsExt;
    let bed = Bed::new();
    let tokens = bed.tokens_path();
    // Written by an editor that starts files with a byte order mark, and group-writable.
    fs::write(&tokens, format!("\u{feff}{TOKEN}\n")).unwrap();
    fs::set_permissions(&tokens, fs::Permissions::from_mode(0o660)).unwrap();
    let c = bed.start(&["--tokens-grace", "1s"], &[]);
    assert_eq!(status(&c, TOKEN), 200, "the first token, after the BOM");
    let stderr = c.stderr();
    assert!(
        stderr.contains("is writable by its group or others (mode 660)"),
        "{stderr}"
    );

    // Rotated with `cp -p` to a file of the same length and modification time.
    let rotated = "tok-0c8e5b2a9d147f36";
    assert_eq!(rotated.len(), TOKEN.len());
    let new = bed.b.dir().join("tokens.new");
    fs::write(&new, format!("\u{feff}{rotated}\n")).unwrap();
    run("touch", &[Path::new("-r"), &tokens, &new]);
    let before = stamp(&tokens);
    run("cp", &[Path::new("-p"), &new, &tokens]);
    assert_eq!(
        stamp(&tokens),
        before,
        "the rotation left no trace in the stamp"
    );
    wait_for(|| status(&c, rotated) == 200, Duration::from_secs(10));
    assert_eq!(status(&c, TOKEN), 401, "the old token still works");

    // Deleted: every request is refused after the grace, and /readyz says why.
    fs::remove_file(&tokens).unwrap();
    wait_for(|| status(&c, rotated) == 401, Duration::from_secs(10));
    let ready = c.request("GET", "/readyz", None, None);
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(
        ready.text.contains("the tokens file") && ready.text.contains("every request is refused"),
        "{ready:?}"
    );
    // Back: served again.
    fs::write(&tokens, format!("{rotated}\n")).unwrap();
    wait_for(|| status(&c, rotated) == 200, Duration::from_secs(10));
    assert_eq!(c.request("GET", "/readyz", None, None).status, 200);
}
