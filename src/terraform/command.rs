//! The terraform (or OpenTofu) command lines for a rendered step, as argv: no shell ever sees
//! an interpolated value.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::base::error::{Error, Problem, Problems};
use crate::process::{Command, Options, Supervisor};
use crate::terraform::diagnostics;
use crate::workflow::render::RenderedStep;

/// The oldest terraform whose command lines and `-json` stream the engine is written for.
const MIN_VERSION: (u64, u64) = (1, 4);

const INSTALL_HINT: &str =
    "install terraform (>= 1.4) or OpenTofu (>= 1.6), or pass --terraform BIN (BOOTSTRAPPER_TERRAFORM)";

/// What `terraform version -json` says (OpenTofu answers in the same shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub text: String,
    /// Major and minor.
    pub number: (u64, u64),
}

impl Version {
    fn parse(stdout: &[u8]) -> Result<Version, String> {
        #[derive(serde::Deserialize)]
        struct Answer {
            terraform_version: String,
        }
        let answer: Answer = serde_json::from_slice(stdout).map_err(|e| {
            let shown = String::from_utf8_lossy(stdout);
            let shown: String = shown.trim().chars().take(200).collect();
            format!("it answered {shown:?}, not a JSON object with `terraform_version` ({e})")
        })?;
        let text = answer.terraform_version;
        let mut parts = text
            .trim_start_matches('v')
            .split(|c: char| !c.is_ascii_digit())
            .map(str::parse::<u64>);
        match (parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor))) => Ok(Version {
                number: (major, minor),
                text,
            }),
            _ => Err(format!(
                "it reports version {text:?}, which is not a version number"
            )),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}", self.text.trim_start_matches('v'))
    }
}

#[derive(Debug, Clone)]
pub struct Terraform {
    pub program: PathBuf,
    pub lock_timeout: Duration,
    pub color: bool,
}

impl Terraform {
    pub fn new(program: PathBuf, lock_timeout: Duration) -> Self {
        Terraform {
            program,
            lock_timeout,
            color: std::io::stderr().is_terminal(),
        }
    }

    /// The full path of the binary, or an input error saying how to fix it.
    pub fn resolve(&self) -> Result<PathBuf, Error> {
        crate::process::find_program(&self.program).ok_or_else(|| {
            Error::Input(Problems::one(
                Problem::new(format!(
                    "terraform binary `{}` {}",
                    self.program.display(),
                    if self.program.components().count() == 1 {
                        "not found in PATH"
                    } else if self.program.is_dir() {
                        "is a directory"
                    } else if self.program.is_file() {
                        "is not executable"
                    } else {
                        "not found"
                    }
                ))
                .hint(INSTALL_HINT),
            ))
        })
    }

    /// What identifies the resolved binary: the same file, unchanged since its version was
    /// found good, need not be asked again.
    pub fn identity(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&self.program).ok()?;
        Some(format!(
            "{} dev={} ino={} size={} mtime={}.{:09}\n",
            self.program.display(),
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        ))
    }

    /// Resolves the binary and asks it for its version, once: the command lines need
    /// terraform >= 1.4; OpenTofu starts at 1.6.
    pub fn verify(&mut self, supervisor: &Supervisor) -> Result<Version, Error> {
        self.program = self.resolve()?;
        let command = Command {
            program: self.program.clone(),
            args: vec!["version".into(), "-json".into()],
            // Nowhere near the code: `version` reports the providers of its directory.
            cwd: PathBuf::from("/"),
            env: vec![("CHECKPOINT_DISABLE".into(), "1".into())],
            label: "terraform".into(),
        };
        let unusable = |why: String| {
            Error::Input(Problems::one(
                Problem::new(format!(
                    "`{}` is not a usable terraform: {why}",
                    command.display()
                ))
                .hint(INSTALL_HINT),
            ))
        };
        let finished = supervisor
            .run(
                &command,
                Options {
                    capture_stdout: true,
                    ..diagnostics::options()
                },
            )
            .map_err(|e| unusable(format!("cannot start it: {e}")))?;
        if let Some(signal) = supervisor.shutdown.requested() {
            return Err(crate::base::signals::interrupted(signal));
        }
        if !finished.success() {
            return Err(unusable(finished.reason()));
        }
        let version = Version::parse(&finished.stdout).map_err(unusable)?;
        if version.number < MIN_VERSION {
            return Err(Error::Input(Problems::one(
                Problem::new(format!(
                    "{} is {version}, older than {}.{}, the oldest the engine works with",
                    self.program.display(),
                    MIN_VERSION.0,
                    MIN_VERSION.1
                ))
                .hint(INSTALL_HINT),
            )));
        }
        supervisor.logger.info(
            None,
            &format!("terraform: {} is {version}", self.program.display()),
        );
        Ok(version)
    }

    /// The commands that apply a step, in order; `output -json` comes after them.
    pub fn apply_commands(&self, step: &RenderedStep, cwd: &Path) -> Vec<Command> {
        let mut commands = self.prepare_commands(step, cwd);
        let mut apply = vec![
            "apply".to_string(),
            "-json".to_string(),
            "-auto-approve".to_string(),
            "-input=false".to_string(),
            self.lock_timeout_arg(),
        ];
        if step.vars.is_some() {
            apply.push(format!("-var-file={}", step.vars_file()));
        }
        apply.extend(step.apply_args.iter().cloned());
        commands.push(self.command(step, cwd, apply));
        commands
    }

    /// `plan` with the vars and args `apply` would get, saving the plan to `out`: exit 0
    /// when nothing would change, 2 when something would (`-detailed-exitcode`).
    pub fn plan_command(&self, step: &RenderedStep, cwd: &Path, out: &Path) -> Command {
        let mut args = vec![
            "plan".to_string(),
            "-json".to_string(),
            "-input=false".to_string(),
            self.lock_timeout_arg(),
            "-detailed-exitcode".to_string(),
            format!("-out={}", out.display()),
        ];
        if step.vars.is_some() {
            args.push(format!("-var-file={}", step.vars_file()));
        }
        args.extend(step.apply_args.iter().cloned());
        self.command(step, cwd, args)
    }

    /// `show -json` of a saved plan: what it would change, sensitive values in the clear.
    pub fn show_plan_command(&self, step: &RenderedStep, cwd: &Path, plan: &Path) -> Command {
        self.command(
            step,
            cwd,
            vec!["show".into(), "-json".into(), plan.display().to_string()],
        )
    }

    /// `apply` of a saved plan. Terraform refuses planning options beside a saved plan (the
    /// vars, `-target`, `-replace`… are in it already): of `apply_args` only those that
    /// steer the apply itself are passed on.
    pub fn apply_plan_command(&self, step: &RenderedStep, cwd: &Path, plan: &Path) -> Command {
        let mut args = vec![
            "apply".to_string(),
            "-json".to_string(),
            "-auto-approve".to_string(),
            "-input=false".to_string(),
            self.lock_timeout_arg(),
        ];
        args.extend(apply_only_args(&step.apply_args));
        args.push(plan.display().to_string());
        self.command(step, cwd, args)
    }

    /// `init`. A step's workspace needs no command of its own: every later command of the
    /// step gets it as `TF_WORKSPACE`, and creates it when it does not exist yet.
    pub fn prepare_commands(&self, step: &RenderedStep, cwd: &Path) -> Vec<Command> {
        let mut init = vec![
            "init".to_string(),
            "-input=false".to_string(),
            self.lock_timeout_arg(),
        ];
        for (key, value) in &step.backend_config {
            init.push(format!("-backend-config={key}={value}"));
        }
        init.extend(step.init_args.iter().cloned());
        vec![self.command(step, cwd, init)]
    }

    /// `destroy` with the same vars the step was applied with.
    pub fn destroy_command(&self, step: &RenderedStep, cwd: &Path) -> Command {
        let mut args = vec![
            "destroy".to_string(),
            "-json".to_string(),
            "-auto-approve".to_string(),
            "-input=false".to_string(),
            self.lock_timeout_arg(),
        ];
        if step.vars.is_some() {
            args.push(format!("-var-file={}", step.vars_file()));
        }
        args.extend(step.apply_args.iter().cloned());
        self.command(step, cwd, args)
    }

    /// Pushes a state file that terraform could not upload (`errored.tfstate`) to the backend.
    pub fn state_push_command(&self, step: &RenderedStep, cwd: &Path, file: &str) -> Command {
        self.command(
            step,
            cwd,
            vec![
                "state".into(),
                "push".into(),
                self.lock_timeout_arg(),
                file.into(),
            ],
        )
    }

    pub fn output_command(&self, step: &RenderedStep, cwd: &Path) -> Command {
        self.command(step, cwd, vec!["output".into(), "-json".into()])
    }

    fn lock_timeout_arg(&self) -> String {
        format!(
            "-lock-timeout={}",
            crate::base::clock::terraform_duration(self.lock_timeout)
        )
    }

    fn command(&self, step: &RenderedStep, cwd: &Path, mut args: Vec<String>) -> Command {
        // Global-style flags go after the subcommand; `state push` takes them before its
        // argument.
        if !self.color {
            let at = match args[0].as_str() {
                "state" => 2,
                _ => 1,
            };
            args.insert(at, "-no-color".into());
        }
        let mut env = vec![
            ("TF_IN_AUTOMATION".into(), "1".into()),
            ("TF_INPUT".into(), "0".into()),
        ];
        if let Some(workspace) = &step.workspace {
            // `init` refuses a workspace that does not exist yet when others do; `default`
            // always exists. Every later command creates the step's own when it is missing.
            let workspace = match args[0].as_str() {
                "init" => "default",
                _ => workspace,
            };
            env.push(("TF_WORKSPACE".into(), workspace.to_string()));
        }
        Command {
            program: self.program.clone(),
            args,
            cwd: cwd.to_path_buf(),
            env,
            label: step.name.clone(),
        }
    }
}

/// The options of `apply_args` that `apply` takes beside a saved plan, with their values.
fn apply_only_args(args: &[String]) -> Vec<String> {
    const WITH_VALUE: [&str; 3] = ["-parallelism", "-lock-timeout", "-state-out"];
    const FLAGS: [&str; 3] = ["-lock", "-compact-warnings", "-no-color"];
    let mut kept = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let name = arg.split('=').next().unwrap_or(arg).replacen("--", "-", 1);
        if WITH_VALUE.contains(&name.as_str()) {
            kept.push(arg.clone());
            if !arg.contains('=') {
                kept.extend(args.next().cloned());
            }
        } else if FLAGS.contains(&name.as_str()) {
            kept.push(arg.clone());
        } else if !arg.contains('=') && arg.starts_with('-') && takes_value(&name) {
            // A planning option and its value, both left to the plan.
            args.next();
        }
    }
    kept
}

/// Planning options written as two arguments (`-var x=1`).
fn takes_value(name: &str) -> bool {
    ["-var", "-var-file", "-target", "-replace"].contains(&name)
}

/// A step's output values, and the names of those terraform marked sensitive.
pub type Outputs = (Map<String, Value>, Vec<String>);

/// Parses `terraform output -json`.
pub fn parse_outputs(stdout: &[u8]) -> Result<Outputs, String> {
    let all: Map<String, Value> = serde_json::from_slice(stdout).map_err(|e| {
        format!("`terraform output -json` printed something that is not a JSON object: {e}")
    })?;
    let mut values = Map::new();
    let mut sensitive = Vec::new();
    for (name, output) in all {
        if output.get("sensitive").and_then(Value::as_bool) == Some(true) {
            sensitive.push(name.clone());
        }
        values.insert(name, output.get("value").cloned().unwrap_or(Value::Null));
    }
    Ok((values, sensitive))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> RenderedStep {
        RenderedStep {
            name: "network".into(),
            dir: "net".into(),
            workspace: Some("c1".into()),
            backend_config: vec![("conn_str".into(), "postgres://h/db".into())],
            vars: Some("a = 1".into()),
            vars_source: None,
            init_args: vec!["-upgrade".into()],
            apply_args: vec!["-parallelism=2".into()],
            unknown_outputs: vec![],
        }
    }

    #[test]
    fn commands_follow_the_contract() {
        let mut tf = Terraform::new("terraform".into(), Duration::from_secs(180));
        tf.color = false;
        let commands = tf.apply_commands(&step(), Path::new("/r/code/net"));
        let argv: Vec<String> = commands.iter().map(|c| c.args.join(" ")).collect();
        let workspace = |c: &Command| {
            c.env
                .iter()
                .find(|(k, _)| k == "TF_WORKSPACE")
                .map(|(_, v)| v.clone())
        };
        assert_eq!(workspace(&commands[0]).as_deref(), Some("default"));
        assert_eq!(workspace(&commands[1]).as_deref(), Some("c1"));
        assert_eq!(
            argv,
            [
                "init -no-color -input=false -lock-timeout=180s -backend-config=conn_str=postgres://h/db -upgrade",
                "apply -no-color -json -auto-approve -input=false -lock-timeout=180s -var-file=bootstrapper.tfvars -parallelism=2",
            ]
        );
        let push = tf.state_push_command(&step(), Path::new("/r/code/net"), "errored.tfstate");
        assert_eq!(
            push.args.join(" "),
            "state push -no-color -lock-timeout=180s errored.tfstate"
        );
    }

    #[test]
    fn a_saved_plan_is_applied_without_planning_options() {
        let mut tf = Terraform::new("terraform".into(), Duration::from_secs(180));
        tf.color = false;
        let mut s = step();
        s.apply_args = [
            "-var",
            "a=1",
            "-parallelism",
            "3",
            "-target=x",
            "-lock=false",
            "-var-file=f",
        ]
        .map(String::from)
        .to_vec();
        let cwd = Path::new("/r/code/net");
        let apply = tf.apply_plan_command(&s, cwd, Path::new("/r/p.tfplan"));
        assert_eq!(
            apply.args.join(" "),
            "apply -no-color -json -auto-approve -input=false -lock-timeout=180s -parallelism 3 -lock=false /r/p.tfplan"
        );
        let plan = tf.plan_command(&s, cwd, Path::new("/r/p.tfplan"));
        assert_eq!(
            plan.args.join(" "),
            "plan -no-color -json -input=false -lock-timeout=180s -detailed-exitcode -out=/r/p.tfplan -var-file=bootstrapper.tfvars -var a=1 -parallelism 3 -target=x -lock=false -var-file=f"
        );
    }

    #[test]
    fn versions_are_read_from_terraform_and_opentofu_answers() {
        let parse = |json: &str| Version::parse(json.as_bytes()).map(|v| v.number);
        assert_eq!(
            parse(r#"{"terraform_version":"1.11.4","platform":"linux_amd64"}"#),
            Ok((1, 11))
        );
        assert_eq!(parse(r#"{"terraform_version":"1.6.0-beta1"}"#), Ok((1, 6)));
        assert_eq!(parse(r#"{"terraform_version":"1.3.0"}"#), Ok((1, 3)));
        assert!(parse(r#"{"terraform_version":"dev"}"#).is_err());
        assert!(parse("Terraform v1.3.0").is_err());
        assert!((1, 3) < MIN_VERSION && (1, 4) >= MIN_VERSION && (2, 0) > MIN_VERSION);
    }

    #[test]
    fn outputs_keep_values_and_sensitivity() {
        let json = br#"{"conn_str":{"sensitive":false,"type":"string","value":"pg://x"},"token":{"sensitive":true,"type":"string","value":"s3"}}"#;
        let (values, sensitive) = parse_outputs(json).unwrap();
        assert_eq!(values["conn_str"], "pg://x");
        assert_eq!(sensitive, ["token"]);
    }
}
