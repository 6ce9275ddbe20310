//! The corpus of bad inputs under `tests/bad-inputs/`: one directory per case, holding the
//! files the operator got wrong (`workflow.toml`, `params.json`, templates, a `code/` tree,
//! a `journal/` tree copied to `<root>/.bootstrapper`, a `root/` tree copied to the root) and
//! an `expect.toml` saying which commands to run and what they must answer.
//!
//! Every case must end with its exit code (2, or 3 for the lock), exactly the expected number
//! of `error:` messages, each substring it lists (the file, line and column, the step, the
//! variable), no panic, nothing on stdout, and terraform never started: `--terraform` is a
//! script that leaves a file behind if anything runs it.
//!
//! Also here: values that would change a command's meaning reach terraform as one argument.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions, TryLockError};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{copy_tree, spawn_session, wait_for, Outcome, Running, BIN, FAKE_VERSION};
use serde::Deserialize;

const CORPUS: &str = "tests/bad-inputs";
const MIN_CASES: usize = 40;
/// Only bounds a hung command: a bad input is refused in milliseconds.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// What is wrong, in a line.
    about: String,
    /// The commands that must refuse it.
    commands: Vec<String>,
    #[serde(default = "input_error")]
    exit: i32,
    /// How many `error:` lines: one per problem, so one unless the case has several.
    #[serde(default = "one")]
    errors: usize,
    /// Substrings of stderr; `{root}` stands for the root's path.
    stderr: Vec<String>,
    #[serde(default)]
    terraform: TerraformKind,
    #[serde(default)]
    root: RootKind,
    #[serde(default)]
    lock: LockKind,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

fn input_error() -> i32 {
    2
}

fn one() -> usize {
    1
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum TerraformKind {
    /// A script that records that it ran.
    #[default]
    Fake,
    /// A name found nowhere in PATH.
    Missing,
    /// A file that is there but not executable.
    NotExecutable,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RootKind {
    #[default]
    Dir,
    /// A regular file where the root directory should be.
    File,
    /// A path below a regular file.
    UnderFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum LockKind {
    #[default]
    None,
    /// `flock(1)` holds the lock file.
    Flock,
    /// A real `bootstrapper run`, blocked in a terraform that never returns, holds it.
    Run,
}

/// One case, laid out in a temp directory: `case/` (its files), `root`, `bin/`.
struct Setup {
    dir: tempfile::TempDir,
    root: PathBuf,
    terraform: PathBuf,
    /// Keeps whatever holds the lock alive until the case is over.
    holder: Option<Running>,
}

impl Setup {
    fn case_dir(&self) -> PathBuf {
        self.dir.path().join("case")
    }

    fn ran_marker(&self) -> PathBuf {
        self.dir.path().join("terraform-ran")
    }

    fn command(&self, expect: &Expect, command: &str) -> Command {
        self.command_with(expect, command, &self.terraform)
    }

    fn command_with(&self, expect: &Expect, command: &str, terraform: &Path) -> Command {
        let mut cmd = bootstrapper();
        cmd.arg("--workflow")
            .arg(self.case_dir().join("workflow.toml"))
            .arg("--params")
            .arg(self.case_dir().join("params.json"))
            .arg("--root")
            .arg(&self.root)
            .arg("--terraform")
            .arg(terraform)
            .arg(command)
            .envs(&expect.env);
        cmd
    }
}

/// The binary, with the developer's own `BOOTSTRAPPER_*` settings out of the way.
fn bootstrapper() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BOOTSTRAPPER_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn write_sh(path: &Path, body: &str) {
    crate::support::write_script(path, format!("#!/bin/sh\n{FAKE_VERSION}{body}"));
}

fn setup(source: &Path, expect: &Expect) -> Setup {
    let dir = tempfile::Builder::new()
        .prefix("bad-input-")
        .tempdir()
        .unwrap();
    let case = dir.path().join("case");
    fs::create_dir(&case).unwrap();
    for entry in fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let target = case.join(&name);
        match name.to_str().unwrap() {
            "expect.toml" | "journal" | "root" => {}
            _ if entry.file_type().unwrap().is_dir() => copy_tree(&entry.path(), &target),
            _ => {
                fs::copy(entry.path(), &target).unwrap();
            }
        }
    }

    let root = match expect.root {
        RootKind::Dir => {
            let root = dir.path().join("root");
            fs::create_dir(&root).unwrap();
            if source.join("root").is_dir() {
                copy_tree(&source.join("root"), &root);
            }
            if source.join("journal").is_dir() {
                copy_tree(&source.join("journal"), &root.join(".bootstrapper"));
            }
            root
        }
        RootKind::File => {
            let root = dir.path().join("root");
            fs::write(&root, "a file, not the PVC\n").unwrap();
            root
        }
        RootKind::UnderFile => {
            let file = dir.path().join("file");
            fs::write(&file, "a file, not the PVC\n").unwrap();
            file.join("root")
        }
    };

    let ran = dir.path().join("terraform-ran");
    let terraform = match expect.terraform {
        TerraformKind::Fake => {
            let path = dir.path().join("bin/terraform");
            write_sh(
                &path,
                &format!("printf '%s\\n' \"$*\" >> '{}'\nexit 1\n", ran.display()),
            );
            path
        }
        TerraformKind::Missing => PathBuf::from("terraform-not-installed-here"),
        TerraformKind::NotExecutable => {
            let path = dir.path().join("bin/terraform-noexec");
            write_sh(&path, &format!(": > '{}'\n", ran.display()));
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            path
        }
    };

    let mut setup = Setup {
        root,
        terraform,
        holder: None,
        dir,
    };
    setup.holder = match expect.lock {
        LockKind::None => None,
        LockKind::Flock => Some(hold_with_flock(&setup)),
        LockKind::Run => Some(hold_with_run(&setup, expect)),
    };
    setup
}

fn lock_file(root: &Path) -> PathBuf {
    root.join(".bootstrapper/lock")
}

/// Whether some process holds the lock file, seen the way the engine sees it.
fn lock_is_held(path: &Path) -> bool {
    let Ok(file) = OpenOptions::new().read(true).open(path) else {
        return false;
    };
    matches!(file.try_lock(), Err(TryLockError::WouldBlock))
}

fn hold_with_flock(setup: &Setup) -> Running {
    let lock = lock_file(&setup.root);
    fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let mut cmd = Command::new("flock");
    cmd.arg(&lock).arg("sleep").arg("600");
    let holder = spawn_session(cmd, setup.dir.path());
    wait_for(|| lock_is_held(&lock), TIMEOUT);
    holder
}

fn hold_with_run(setup: &Setup, expect: &Expect) -> Running {
    let started = setup.dir.path().join("holder-terraform-started");
    let blocking = setup.dir.path().join("bin/terraform-blocks");
    write_sh(
        &blocking,
        &format!(": > '{}'\nexec sleep 600\n", started.display()),
    );
    let holder = spawn_session(
        setup.command_with(expect, "run", &blocking),
        setup.dir.path(),
    );
    wait_for(|| started.exists(), TIMEOUT);
    assert!(lock_is_held(&lock_file(&setup.root)));
    holder
}

/// Everything wrong with one command's answer to one case.
fn check(name: &str, command: &str, expect: &Expect, setup: &Setup, out: &Outcome) -> Vec<String> {
    let mut wrong = Vec::new();
    if out.code != Some(expect.exit) {
        wrong.push(format!("exit {:?}, expected {}", out.code, expect.exit));
    }
    if out.stderr.contains("panicked") {
        wrong.push("it panicked".into());
    }
    if !out.stdout.is_empty() {
        wrong.push("it printed on stdout".into());
    }
    let errors = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .count();
    if errors != expect.errors {
        wrong.push(format!(
            "{errors} `error:` lines, expected {}",
            expect.errors
        ));
    }
    for want in &expect.stderr {
        let want = want.replace("{root}", &setup.root.display().to_string());
        if !out.stderr.contains(&want) {
            wrong.push(format!("stderr lacks {want:?}"));
        }
    }
    if setup.ran_marker().exists() {
        wrong.push(format!(
            "terraform was started: {}",
            fs::read_to_string(setup.ran_marker()).unwrap_or_default()
        ));
    }
    wrong
        .into_iter()
        .map(|w| format!("{name} ({}) `{command}`: {w}\n{out}\n", expect.about))
        .collect()
}

#[test]
fn every_bad_input_is_refused_clearly_before_anything_runs() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join(CORPUS);
    let mut cases: Vec<PathBuf> = fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= MIN_CASES,
        "only {} cases in {}",
        cases.len(),
        corpus.display()
    );

    let mut failures = Vec::new();
    let mut checked = 0;
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(case.join("expect.toml"))
            .unwrap_or_else(|e| panic!("{name}: expect.toml: {e}"));
        let expect: Expect =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: expect.toml: {e}"));
        assert!(!expect.commands.is_empty(), "{name}: no commands");
        let setup = setup(case, &expect);
        for command in &expect.commands {
            let out =
                spawn_session(setup.command(&expect, command), setup.dir.path()).wait(TIMEOUT);
            failures.extend(check(&name, command, &expect, &setup, &out));
            checked += 1;
        }
        if let Some(holder) = setup.holder {
            holder.kill_session();
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} checks failed:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A fake terraform that records each argv element on its own line, NUL-terminated, so that
/// an argument holding a newline would still show as one. `output -json` prints `{}`.
fn argv_recorder(path: &Path, log: &Path) {
    write_sh(
        path,
        &format!(
            "for arg in \"$@\"; do printf '%s\\0' \"$arg\"; done >> '{log}'\nprintf '\\n' >> '{log}'\nif [ \"$1\" = output ]; then echo '{{}}'; fi\n",
            log = log.display()
        ),
    );
}

#[test]
fn values_with_shell_syntax_reach_terraform_as_one_literal_argument() {
    let dir = tempfile::tempdir().unwrap();
    let pwned = dir.path().join("pwned");
    let nasty = format!(
        "a b; touch {p} $(touch {p}) `touch {p}` \"q\" 'q' | & > {p}",
        p = pwned.display()
    );
    let code = dir.path().join("code/a");
    fs::create_dir_all(&code).unwrap();
    fs::write(
        dir.path().join("workflow.toml"),
        r#"
[source]
dir = "code"
image_dir = "code"

[[step]]
name = "a"
dir = "a"
backend_config = { conn_str = "{{ params.conn_str }}" }
init_args = ["-backend-config=path={{ params.conn_str }}"]
apply_args = ["-var=x={{ params.conn_str }}", "{{ params.dash }}"]
"#,
    )
    .unwrap();
    let params = serde_json::json!({"conn_str": nasty, "dash": "-parallelism=1"});
    fs::write(dir.path().join("params.json"), params.to_string()).unwrap();
    let log = dir.path().join("argv");
    let terraform = dir.path().join("bin/terraform");
    argv_recorder(&terraform, &log);

    let mut cmd = bootstrapper();
    cmd.arg("--workflow")
        .arg(dir.path().join("workflow.toml"))
        .arg("--params")
        .arg(dir.path().join("params.json"))
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--terraform")
        .arg(&terraform)
        .arg("run");
    let out = spawn_session(cmd, dir.path()).wait(TIMEOUT);
    out.assert_success();

    let recorded = fs::read_to_string(&log).unwrap();
    let calls: Vec<Vec<&str>> = recorded
        .lines()
        .map(|line| {
            line.strip_suffix('\0')
                .unwrap_or(line)
                .split('\0')
                .collect()
        })
        .collect();
    let init = calls
        .iter()
        .find(|argv| argv[0] == "init")
        .expect("init ran");
    assert!(
        init.contains(&format!("-backend-config=conn_str={nasty}").as_str()),
        "{init:?}"
    );
    assert!(
        init.contains(&format!("-backend-config=path={nasty}").as_str()),
        "{init:?}"
    );
    let apply = calls
        .iter()
        .find(|argv| argv[0] == "apply")
        .expect("apply ran");
    assert!(
        apply.contains(&format!("-var=x={nasty}").as_str()),
        "{apply:?}"
    );
    // A param with a leading `-` is the operator's own argument, passed as they wrote it; it
    // cannot split into more arguments or reach a shell.
    assert_eq!(apply.last(), Some(&"-parallelism=1"), "{apply:?}");
    assert!(!pwned.exists(), "a shell ran part of a value");
}
