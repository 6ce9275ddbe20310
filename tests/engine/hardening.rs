//! The ways an operator breaks a pod that are not bad input: a full PVC, links out of the
//! code, two `destroy`s at once, an old terraform, secrets that terraform splits over lines,
//! and a log consumer that reads JSON only. Real terraform, PostgreSQL and git throughout;
//! a fake terraform only where the real one cannot be made to misbehave (an old version).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};

/// How long a test waits for something that takes seconds when all is well.
const PATIENCE: Duration = Duration::from_secs(120);

/// The four-step workflow on a fresh root and database, retries off, `extra` params merged
/// over `four_step_params`.
fn four_steps(extra: Value) -> (Bootstrapper, String) {
    let b = Bootstrapper::new();
    let conn_str = fresh_database();
    b.write_workflow(&format!(
        "[settings]\nretries = 0\n\n{}",
        four_step_workflow(&fixtures_dir())
    ));
    let mut params = four_step_params(&b.ledger_path(), &conn_str);
    for (key, value) in extra.as_object().expect("an object") {
        params[key] = value.clone();
    }
    b.write_params(&params);
    (b, conn_str)
}

fn count(ledger: &[String], line: &str) -> usize {
    ledger.iter().filter(|l| *l == line).count()
}

fn write_sh(path: &Path, body: &str) {
    crate::support::write_script(path, format!("#!/bin/sh\n{body}"));
}

/// A root whose code is one step `a` of `main_tf`, copied from an image directory.
fn one_step(main_tf: &str) -> Bootstrapper {
    let b = Bootstrapper::new();
    let image = b.dir().join("image");
    fs::create_dir_all(image.join("a")).expect("create image");
    fs::write(image.join("a/main.tf"), main_tf).expect("write main.tf");
    b.write_workflow(&format!(
        "[source]\ndir = \"code\"\nimage_dir = {image:?}\n\n[settings]\nretries = 0\n\n\
         [[step]]\nname = \"a\"\ndir = \"a\"\n"
    ));
    b.write_params(&json!({}));
    b
}

/// Every line of `stderr` as a JSON object.
#[track_caller]
fn json_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{stderr}"));
            assert!(value.is_object(), "not an object: {line}");
            value
        })
        .collect()
}

// ---------------------------------------------------------------------------
// A second destroy waits for the first; it never interrupts it.

#[test]
fn a_second_destroy_waits_for_the_first_instead_of_interrupting_it() {
    // destroy_sleep_* is read from the state at destroy time, so it is set when applying.
    let (b, conn_str) = four_steps(json!({ "destroy_sleep_system_job": 10 }));
    b.run(&["run"]).assert_success();

    let first = b.spawn(&["destroy"]);
    wait_for(
        || count(&b.ledger(), "destroying system-job/slow") == 1,
        PATIENCE,
    );
    let impatient = b.run(&["destroy", "--wait", "1s"]);
    impatient.assert_code(3);
    assert!(
        impatient
            .stderr
            .contains(&format!("pid {} on {}", first.pid(), nix_hostname()))
            && impatient.stderr.contains("running `bootstrapper destroy`"),
        "{impatient}"
    );
    let patient = b.spawn(&["destroy"]);

    let first = first.wait(PATIENCE);
    first.assert_success();
    let patient = patient.wait(PATIENCE);
    patient.assert_success();
    assert!(
        patient
            .stderr
            .contains("system-job: already destroyed: skipped"),
        "{patient}"
    );
    let ledger = b.ledger();
    assert_eq!(
        count(&ledger, "destroying system-job/slow"),
        1,
        "{ledger:#?}"
    );
    assert_eq!(count(&ledger, "destroy system-job/slow"), 1, "{ledger:#?}");
    for step in &FOUR_STEPS[1..] {
        assert!(
            pg_state_resources(&conn_str, step, "c1").is_empty(),
            "{step}"
        );
    }
}

fn nix_hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------------
// The terraform binary is checked before anything runs.

/// A terraform that claims `version` and, like terraform before 1.4, rejects `-or-create`;
/// every other call is recorded and handed to the real terraform.
fn old_terraform(dir: &Path, version: &str) -> (PathBuf, PathBuf) {
    let calls = dir.join("old-terraform-calls");
    let program = dir.join("bin/terraform");
    write_sh(
        &program,
        &format!(
            "if [ \"$1\" = version ]; then echo '{{\"terraform_version\":\"{version}\",\"platform\":\"linux_amd64\"}}'; exit 0; fi\n\
             echo \"$*\" >> '{calls}'\n\
             for arg in \"$@\"; do [ \"$arg\" = -or-create ] && {{ echo 'flag provided but not defined: -or-create' >&2; exit 1; }}; done\n\
             exec terraform \"$@\"\n",
            calls = calls.display()
        ),
    );
    (program, calls)
}

#[test]
fn an_old_terraform_is_refused_by_validate_plan_and_run_before_anything_runs() {
    let (mut b, _) = four_steps(json!({}));
    let (program, calls) = old_terraform(b.dir(), "1.3.0");
    b.arg("--terraform").arg(&program);
    for command in [&["validate"][..], &["plan"], &["run"], &["destroy"]] {
        let out = b.run(command);
        out.assert_code(2);
        assert!(
            out.stderr
                .contains(&format!("{} is v1.3.0, older than 1.4", program.display())),
            "{command:?}\n{out}"
        );
        assert!(out.stderr.contains("OpenTofu (>= 1.6)"), "{out}");
    }
    assert!(!calls.exists(), "{}", fs::read_to_string(&calls).unwrap());
    assert!(b.ledger().is_empty());
    assert!(!b.root().join("code").exists());
}

#[test]
fn opentofu_from_1_6_and_terraform_from_1_4_are_accepted() {
    for version in ["1.6.2", "1.4.0"] {
        let mut b = one_step("");
        let (program, calls) = old_terraform(b.dir(), version);
        b.arg("--terraform").arg(&program);
        let out = b.run(&["validate"]);
        out.assert_success();
        assert!(out.stderr.contains(&format!("is v{version}")), "{out}");
        assert!(!calls.exists());
    }
}

#[test]
fn validate_and_plan_name_a_terraform_that_is_missing_a_directory_or_not_executable() {
    let bin = tempfile::tempdir().unwrap();
    let dir = bin.path().join("bin-dir");
    fs::create_dir(&dir).unwrap();
    let not_executable = bin.path().join("terraform-noexec");
    fs::write(&not_executable, "#!/bin/sh\n").unwrap();
    let missing = bin.path().join("no-such-terraform");
    for (program, why) in [
        (&dir, "is a directory"),
        (&not_executable, "is not executable"),
        (&missing, "not found"),
    ] {
        let mut b = one_step("");
        b.arg("--terraform").arg(program);
        let wanted = format!("terraform binary `{}` {why}", program.display());
        for command in ["validate", "run"] {
            let out = b.run(&[command]);
            out.assert_code(2);
            assert!(out.stderr.contains(&wanted), "{command}: {out}");
        }
        let plan = b.run(&["plan"]);
        plan.assert_success();
        assert!(plan.stdout.contains(&wanted), "{plan}");
    }
}

#[test]
fn a_failed_step_keeps_terraforms_first_error_and_its_detail_and_logs_it_as_an_error() {
    let mut b = one_step(
        r#"
resource "terraform_data" "a" {
  provisioner "local-exec" {
    command = "echo boom; for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42; do echo after-$i; done >&2; exit 3"
  }
}
"#,
    );
    b.arg("--log-format").arg("json");
    let out = b.run(&["run"]);
    out.assert_code(1);
    let lines = json_lines(&out.stderr);
    let error = lines
        .iter()
        .find(|l| {
            l["source"] == "terraform"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Error: local-exec provisioner error"))
        })
        .unwrap_or_else(|| panic!("no Error: line\n{out}"));
    assert_eq!(error["level"], "ERROR", "{error}");
    assert!(
        lines
            .iter()
            .filter(|l| l["source"] == "terraform" && l["level"] == "ERROR")
            .all(|l| l["message"].as_str().unwrap().starts_with("Error:")),
        "{out}"
    );

    let status = b.run(&["status", "--json"]);
    status.assert_success();
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    let last_error = status["steps"][0]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        last_error.contains("Error: local-exec provisioner error")
            && last_error.contains("exit status 3"),
        "{status:#}"
    );
}

// ---------------------------------------------------------------------------
// A full PVC: refused with the figures, and a state terraform could not save is set aside.

/// A tmpfs mounted for the length of a test; unmounted on drop, even when the test fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs at {} (this test needs root and the right to mount): {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_root_refuses_to_start_terraform_and_a_state_it_could_not_save_is_set_aside() {
    let b = one_step("");
    let flag = b.dir().join("fill-once");
    fs::write(&flag, "").unwrap();
    let filler = b.root().join("filler");
    // The first apply fills the volume while terraform works, as a runaway provisioner would.
    fs::write(
        b.dir().join("image/a/main.tf"),
        format!(
            r#"
resource "terraform_data" "a" {{
  provisioner "local-exec" {{
    command = "if [ -e '{flag}' ]; then rm '{flag}'; dd if=/dev/zero of='{filler}' bs=64k count=64 2>/dev/null; fi; echo create >> '{ledger}'"
  }}
}}
"#,
            flag = flag.display(),
            filler = filler.display(),
            ledger = b.ledger_path().display()
        ),
    )
    .unwrap();
    let workflow = fs::read_to_string(b.workflow_path()).unwrap();
    b.write_workflow(
        &workflow.replace("[settings]\n", "[settings]\nmin_free_space = \"256KiB\"\n"),
    );
    let _tmpfs = Tmpfs::mount(&b.root(), "2m");
    let step_dir = b.root().join("code/a");
    let errored = step_dir.join("errored.tfstate");

    let full = b.run(&["run"]);
    full.assert_code(1);
    assert!(
        errored.exists(),
        "terraform left no errored.tfstate\n{full}"
    );
    assert_eq!(b.ledger(), ["create"]);

    let refused = b.run(&["run"]);
    refused.assert_code(1);
    assert!(
        refused.stderr.contains(&format!(
            "free on the filesystem of {}, less than settings.min_free_space (256 KiB): no terraform was started",
            b.root().display()
        )),
        "{refused}"
    );
    assert!(!refused.stderr.contains(" init "), "{refused}");
    assert!(errored.exists());

    fs::remove_file(&filler).unwrap();
    let planned = b.run(&["plan"]);
    planned.assert_success();
    assert!(
        planned.stdout.contains("holds no complete state (terraform could not save one): it would be set aside, not pushed"),
        "{planned}"
    );
    assert!(!planned.stdout.contains("state push"), "{planned}");
    let freed = b.run(&["run"]);
    freed.assert_success();
    assert!(
        freed
            .stderr
            .contains("terraform could not save the state of an earlier attempt")
            && freed.stderr.contains("may be recorded nowhere"),
        "{freed}"
    );
    assert!(!freed.stderr.contains("state push"), "{freed}");
    assert!(!errored.exists());
    let kept: Vec<String> = fs::read_dir(&step_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("errored.tfstate.incomplete-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(freed.stderr.contains(&kept[0]), "{freed}");

    let again = b.run(&["run"]);
    again.assert_success();
    assert!(
        again.stderr.contains("a: done, inputs unchanged: skipped"),
        "{again}"
    );
    for out in [&full, &refused, &freed, &again] {
        assert!(
            !out.stderr.contains('\u{1b}'),
            "colour codes in the log\n{out}"
        );
    }
}

// ---------------------------------------------------------------------------
// Nothing is written outside the root, whatever links the code holds.

fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `dir`, recursively.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            files.extend(files_in(&entry.path()));
        } else {
            files.push(entry.path());
        }
    }
    files
}

#[test]
fn a_cloned_step_dir_that_links_out_of_the_root_is_refused_naming_the_step_and_the_link() {
    let b = Bootstrapper::new();
    let outside = b.dir().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("main.tf"), "variable \"secret\" {}\n").unwrap();
    let repo = b.dir().join("repo");
    fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::os::unix::fs::symlink(&outside, repo.join("a")).unwrap();
    git(&repo, &["add", "a"]);
    git(&repo, &["commit", "-q", "-m", "a step dir that is a link"]);
    let templates = b.dir().join("a.tfvars.tera");
    fs::write(&templates, "secret = \"{{ params.db_password }}\"\n").unwrap();
    b.write_workflow(&format!(
        "[source]\ndir = \"code\"\ngit_url = \"file://{}\"\ngit_ref = \"main\"\n\n\
         [[step]]\nname = \"a\"\ndir = \"a\"\nvars = {:?}\n",
        repo.display(),
        templates.display()
    ));
    b.write_params(&json!({ "db_password": "link-leak-secret-1" }));

    let run = b.run(&["run"]);
    run.assert_code(2);
    let link = b.root().join("code/a");
    for out in [&run, &b.run(&["validate"]), &b.run(&["plan"])] {
        out.assert_code(2);
        assert!(
            out.stderr.contains("step `a`: its directory")
                && out.stderr.contains(&format!(
                    "leads outside the root {}: {} is a link to {}",
                    b.root().display(),
                    link.display(),
                    outside.display()
                )),
            "{out}"
        );
    }
    assert_eq!(files_in(&outside), [outside.join("main.tf")]);
}

#[test]
fn an_image_link_out_of_the_tree_is_refused_and_links_inside_it_are_kept() {
    let b = one_step("");
    let image = b.dir().join("image");
    fs::rename(image.join("a"), image.join("real")).unwrap();
    std::os::unix::fs::symlink("real", image.join("a")).unwrap();
    let run = b.run(&["run"]);
    run.assert_success();
    assert_eq!(
        fs::read_link(b.root().join("code/a")).unwrap(),
        Path::new("real")
    );
    assert!(b.root().join("code/real/terraform.tfstate").is_file());

    let b = one_step("");
    let image = b.dir().join("image");
    let leaving = image.join("a/terraform.tfstate.d");
    std::os::unix::fs::symlink("../../elsewhere", &leaving).unwrap();
    let run = b.run(&["run"]);
    run.assert_code(2);
    assert!(
        run.stderr.contains(&format!(
            "the link {} points to ../../elsewhere, outside the copied tree {}",
            leaving.display(),
            image.display()
        )),
        "{run}"
    );
    assert!(!b.root().join("code").exists());
}

// ---------------------------------------------------------------------------
// Secrets that terraform splits: word-wrapped in a diagnostic, or cut by the 64 KiB split.

/// A secret with spaces, longer than terraform's 78-column wrap: it always reaches the log
/// in parts. Every word is long enough to be masked on its own.
const WRAPPED: &str =
    "qzcorrect1 qzhorsebat qzstaple99 qzzebrafish qzquokka12 qzwombat77 qzplatypus qzmarmoset";
/// Printed at offsets around 64 KiB on very long lines. Terraform passes a provisioner's lines
/// on only up to 64 KiB, and prefixes them, so the engine's own split falls just inside them.
const LONG_LINE_SECRET: &str = "tok-64k-split-secret-9f3a";

#[test]
fn secrets_split_over_lines_or_by_the_long_line_split_are_masked_everywhere() {
    let b = Bootstrapper::new();
    let named = [
        ("db_passwd", "pw-passwd-31f0"),
        ("admin_pwd", "pw-pwd-82ce"),
        ("pass_phrase", "pw-pass-5b17"),
        ("cloud_credential", "cred-value-77aa"),
        ("private_blob", "priv-value-03d9"),
        ("tls_cert", "cert-value-c4e2"),
    ];
    let mut params = json!({ "wrapped_token": WRAPPED, "api_token": LONG_LINE_SECRET });
    for (name, value) in named {
        params[name] = json!(value);
    }
    b.write_params(&params);
    let image = b.dir().join("image/a");
    fs::create_dir_all(&image).unwrap();
    let names: Vec<&str> = named
        .iter()
        .map(|(n, _)| *n)
        .chain(["wrapped_token", "api_token"])
        .collect();
    let mut main_tf = String::new();
    let mut vars = String::new();
    for name in &names {
        main_tf.push_str(&format!("variable \"{name}\" {{ type = string }}\n"));
        vars.push_str(&format!("{name} = \"{{{{ params.{name} }}}}\"\n"));
    }
    let echo_named: String = named
        .iter()
        .map(|(n, _)| format!("echo \"${{var.{n}}}\"; "))
        .collect();
    main_tf.push_str(&format!(
        r#"
resource "terraform_data" "a" {{
  input = {{ {inputs} }}
  # Each long line in one write: terraform passes on what a provisioner printed so far when
  # the rest of its line is slow to come, which would cut it wherever that happened to be.
  provisioner "local-exec" {{
    environment = {{ LONG = var.api_token }}
    command     = <<-EOT
      {echo_named}
      E=$(yes '€' | head -n 21840 | tr -d '\n')
      for k in 0 1 2; do printf '%s%s\n' "$(head -c $k /dev/zero | tr '\0' y)" "$E"; done
      i=65400; while [ $i -lt 65510 ]; do printf '%s%s\n' "$(head -c $i /dev/zero | tr '\0' x)" "$LONG"; i=$((i+7)); done
      yes 'terraform keeps the end of the output for its diagnostic' | head -n 300
      exit 1 # ${{var.wrapped_token}}
    EOT
  }}
}}
"#,
        inputs = names
            .iter()
            .map(|n| format!("{n} = var.{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    fs::write(image.join("main.tf"), main_tf).unwrap();
    let template = b.dir().join("a.tfvars.tera");
    fs::write(&template, vars).unwrap();
    b.write_workflow(&format!(
        "[source]\ndir = \"code\"\nimage_dir = {:?}\n\n[settings]\nretries = 0\n\n\
         [[step]]\nname = \"a\"\ndir = \"a\"\nvars = {:?}\n",
        b.dir().join("image"),
        template
    ));

    // Every scanned command must have run to its end: one that died early printed nothing
    // to scan.
    let mut outs = Vec::new();
    for args in [&["validate"][..], &["plan"], &["plan", "--json"]] {
        let out = b.run(args);
        out.assert_success();
        outs.push(out);
    }
    let text = b.run(&["run"]);
    text.assert_code(1);
    let json = b.run(&["--log-format", "json", "run"]);
    json.assert_code(1);
    json_lines(&json.stderr);
    assert!(
        text.stderr.contains(&format!("{}\n", "€".repeat(100))),
        "the long lines were not printed\n{}",
        &text.stderr[text.stderr.len().saturating_sub(3000)..]
    );
    assert!(
        text.stderr.contains("exit 1 # ********"),
        "the diagnostic was not printed"
    );
    outs.extend([text, json]);
    for args in [&["status"][..], &["status", "--json"]] {
        let out = b.run(args);
        out.assert_success();
        outs.push(out);
    }

    let mut needles: Vec<String> = named.iter().map(|(_, v)| v.to_string()).collect();
    needles.push(LONG_LINE_SECRET.to_string());
    needles.extend(WRAPPED.split(' ').map(str::to_string));
    let leaks = |text: &str| -> Vec<String> {
        needles
            .iter()
            .filter(|n| text.contains(n.as_str()))
            .cloned()
            .collect()
    };
    for out in &outs {
        for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            let leaked = leaks(text);
            assert!(leaked.is_empty(), "{stream} shows {leaked:?}");
            if let Some(at) = text.find('\u{fffd}') {
                let from = text[..at]
                    .char_indices()
                    .rev()
                    .nth(80)
                    .map_or(0, |(i, _)| i);
                let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                panic!(
                    "{stream} has a character cut in two, {} bytes into its line: {:?}",
                    at - line_start,
                    &text[from..at + 3]
                );
            }
        }
    }
    let mut checked = 0;
    for file in files_in(&b.root()) {
        let mode = fs::metadata(&file).unwrap().permissions().mode();
        if mode & 0o077 == 0 {
            continue;
        }
        checked += 1;
        let bytes = fs::read(&file).unwrap();
        let leaked = leaks(&String::from_utf8_lossy(&bytes));
        assert!(
            leaked.is_empty(),
            "{} ({mode:o}) holds {leaked:?}",
            file.display()
        );
    }
    assert!(
        checked > 0,
        "no file outside the owner-only ones was checked"
    );
}

// ---------------------------------------------------------------------------
// Under --log-format json, every line is JSON: usage errors too.

#[test]
fn usage_errors_are_json_lines_under_log_format_json() {
    let mut by_flag = one_step("");
    by_flag.arg("--log-format").arg("json");
    let mut by_env = one_step("");
    by_env.env("BOOTSTRAPPER_LOG_FORMAT", "json");
    for (b, args, says) in [
        (&by_flag, &["bogus"][..], "unrecognized subcommand 'bogus'"),
        (&by_flag, &["run", "--nope"], "unexpected argument '--nope'"),
        (
            &by_env,
            &["destroy", "--wait", "soon"],
            "invalid value 'soon'",
        ),
        (&by_env, &["reset"], "required arguments were not provided"),
    ] {
        let out = b.run(args);
        out.assert_code(2);
        assert!(out.stdout.is_empty(), "{out}");
        let lines = json_lines(&out.stderr);
        assert_eq!(lines.len(), 1, "{out}");
        assert_eq!(lines[0]["level"], "ERROR", "{out}");
        assert!(
            lines[0]["message"].as_str().unwrap().contains(says),
            "{args:?}: {out}"
        );
    }
    let help = by_flag.run(&["--help"]);
    help.assert_success();
    assert!(help.stdout.contains("Usage: bootstrapper"), "{help}");
}
