//! The terraform (or OpenTofu) command lines for a rendered step, as argv: no shell ever sees
//! an interpolated value.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::{Error, Problem, Problems};
use crate::process::Command;
use crate::render::RenderedStep;

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
        find_program(&self.program).ok_or_else(|| {
            Error::Input(Problems::one(
                Problem::new(format!(
                    "terraform binary `{}` {}",
                    self.program.display(),
                    if self.program.components().count() == 1 {
                        "not found in PATH"
                    } else if self.program.is_file() {
                        "is not executable"
                    } else {
                        "not found"
                    }
                ))
                .hint("install terraform (>= 1.4) or OpenTofu, or pass --terraform BIN (BOOTSTRAPPER_TERRAFORM)"),
            ))
        })
    }

    /// The commands that apply a step, in order; `output -json` comes after them.
    pub fn apply_commands(&self, step: &RenderedStep, cwd: &Path) -> Vec<Command> {
        let mut commands = self.prepare_commands(step, cwd);
        let mut apply = vec![
            "apply".to_string(),
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

    /// `init` and, with a workspace, `workspace select -or-create`.
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
        let mut commands = vec![self.command(step, cwd, init)];
        if let Some(workspace) = &step.workspace {
            commands.push(self.command(
                step,
                cwd,
                vec![
                    "workspace".into(),
                    "select".into(),
                    "-or-create".into(),
                    workspace.clone(),
                ],
            ));
        }
        commands
    }

    /// `destroy` with the same vars the step was applied with.
    pub fn destroy_command(&self, step: &RenderedStep, cwd: &Path) -> Command {
        let mut args = vec![
            "destroy".to_string(),
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
            crate::clock::terraform_duration(self.lock_timeout)
        )
    }

    fn command(&self, step: &RenderedStep, cwd: &Path, mut args: Vec<String>) -> Command {
        // Global-style flags go after the subcommand; `workspace select` takes them before NAME.
        // `state push` takes no -no-color flag; every other subcommand does.
        if !self.color && args[0] != "state" {
            let at = if args[0] == "workspace" { 3 } else { 1 };
            args.insert(at, "-no-color".into());
        }
        Command {
            program: self.program.clone(),
            args,
            cwd: cwd.to_path_buf(),
            env: vec![
                ("TF_IN_AUTOMATION".into(), "1".into()),
                ("TF_INPUT".into(), "0".into()),
            ],
            label: step.name.clone(),
        }
    }
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

fn find_program(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.components().count() > 1 {
        return executable(program).then(|| program.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| executable(p))
    })
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
        assert_eq!(
            argv,
            [
                "init -no-color -input=false -lock-timeout=180s -backend-config=conn_str=postgres://h/db -upgrade",
                "workspace select -or-create -no-color c1",
                "apply -no-color -auto-approve -input=false -lock-timeout=180s -var-file=bootstrapper.tfvars -parallelism=2",
            ]
        );
    }

    #[test]
    fn outputs_keep_values_and_sensitivity() {
        let json = br#"{"conn_str":{"sensitive":false,"type":"string","value":"pg://x"},"token":{"sensitive":true,"type":"string","value":"s3"}}"#;
        let (values, sensitive) = parse_outputs(json).unwrap();
        assert_eq!(values["conn_str"], "pg://x");
        assert_eq!(sensitive, ["token"]);
    }
}
