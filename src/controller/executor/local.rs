//! The `local` executor: each operation a child `bootstrapper` process of this controller,
//! over the cluster's own root, through the one process runner.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::{Ending, Executor, OnEnd, Operation};
use crate::base::error::exit;
use crate::base::log::{Format, Logger};
use crate::controller::cluster::{Cluster, Kind};
use crate::process::{Command, Options, Stop, Supervisor};
use crate::root::journal::AttemptState;
use crate::terraform::diagnostics::FirstError;
use crate::workflow::file::Workflow;

/// What every child engine is started with.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub root: PathBuf,
    pub workflow_path: PathBuf,
    pub workflow: Workflow,
    /// This very binary: an operation is the engine's own command.
    pub exe: PathBuf,
    pub terraform: PathBuf,
    pub grace: Duration,
    /// The controller's own, passed on to the operations.
    pub log_format: Format,
}

/// Each running operation by cluster, and the signal its child is to get next (0: none).
type Running = Arc<Mutex<HashMap<String, (Operation, Arc<AtomicI32>)>>>;

pub struct Local {
    config: Arc<LocalConfig>,
    running: Running,
}

impl Local {
    pub fn new(config: LocalConfig) -> Self {
        Local {
            config: Arc::new(config),
            running: Default::default(),
        }
    }
}

impl Executor for Local {
    fn start(&self, operation: Operation, on_end: OnEnd) {
        let stop = Arc::new(AtomicI32::new(0));
        self.running
            .lock()
            .expect("executor lock")
            .insert(operation.cluster.clone(), (operation.clone(), stop.clone()));
        let config = self.config.clone();
        let running = self.running.clone();
        tokio::task::spawn_blocking(move || {
            let cluster = Cluster::new(&config.root, &operation.cluster);
            let ending = execute(&config, &cluster, operation.kind, &stop);
            running
                .lock()
                .expect("executor lock")
                .remove(&operation.cluster);
            on_end(ending);
        });
    }

    fn stop(&self, cluster: &str, signal: Signal) {
        if let Some((_, stop)) = self.running.lock().expect("executor lock").get(cluster) {
            // A stop asked for earlier (SIGTERM) is not weakened into a hand-over (SIGUSR1).
            if signal == Signal::SIGUSR1 {
                stop.compare_exchange(0, signal as i32, Ordering::SeqCst, Ordering::SeqCst)
                    .ok();
            } else {
                stop.store(signal as i32, Ordering::SeqCst);
            }
        }
    }

    fn running(&self) -> Vec<Operation> {
        let running = self.running.lock().expect("executor lock");
        running.values().map(|(op, _)| op.clone()).collect()
    }

    fn problems(&self) -> Vec<String> {
        match crate::process::find_program(&self.config.terraform) {
            Some(_) => Vec::new(),
            None => vec![format!(
                "terraform `{}` is not found",
                self.config.terraform.display()
            )],
        }
    }
}

/// Runs the engine command of one operation in the cluster's root, its output into the
/// cluster's log.
fn execute(config: &LocalConfig, cluster: &Cluster, kind: Kind, stop: &AtomicI32) -> Ending {
    let failed = |error: String| Ending::Failed {
        exit_code: None,
        failure: None,
        error,
    };
    // The intent's params, for the secrets to mask in the log: those written to the
    // params file just before, unless a newer intent came since (then the operation is
    // stopped and runs again anyway).
    let params = match cluster.intent() {
        Ok(Some(intent)) => intent.params,
        Ok(None) => Default::default(),
        Err(e) => return failed(format!("cannot read the cluster's intent: {e}")),
    };
    let loaded = cluster.loaded(&config.workflow, &params);
    let supervisor = Supervisor {
        logger: Logger::new(config.log_format, loaded.redactor.clone()),
        shutdown: Default::default(),
        grace: config.grace,
    };
    let mut log = match std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(cluster.log_path())
    {
        Ok(file) => std::io::LineWriter::new(file),
        Err(e) => {
            return failed(format!(
                "cannot write {}: {e}",
                cluster.log_path().display()
            ))
        }
    };
    let args = engine_args(kind);
    let command = command(config, cluster, &args);
    let stop_signal = || match stop.load(Ordering::SeqCst) {
        0 => None,
        n => Signal::try_from(n).ok(),
    };
    let _ = writeln!(log, "$ {}", command.display());
    let mut on_line = |line: &str| {
        let _ = writeln!(log, "{line}");
    };
    let options = Options {
        name: "its child engine",
        stop: Stop::By(&stop_signal),
        on_line: Some(&mut on_line),
        // An engine passes terraform's lines on tagged with their step, so few open an error
        // here; one that does is still the best reason a failure can give.
        errors: Some(Box::new(FirstError::default())),
        ..Options::default()
    };
    let finished = match supervisor.run(&command, options) {
        Ok(finished) => finished,
        Err(e) => return failed(format!("cannot start {}: {e}", command.program.display())),
    };
    match finished.status.code() {
        Some(exit::OK) => Ending::Succeeded,
        Some(exit::LOCKED) => Ending::Later,
        Some(code) if code > 128 => Ending::Interrupted,
        None => Ending::Interrupted,
        Some(code) => Ending::Failed {
            exit_code: Some(code),
            failure: recorded_failure(config, cluster),
            error: format!("`{}` failed: {}", args.join(" "), finished.reason()),
        },
    }
}

/// The engine's own command for an operation: one invocation, whatever the root holds.
fn engine_args(kind: Kind) -> Vec<String> {
    match kind {
        // A cluster created again after a destroy is bootstrapped afresh.
        Kind::Apply => vec!["run".to_string(), "--recreate".to_string()],
        Kind::Destroy => vec!["destroy".to_string()],
    }
}

/// The kind of failure the failed step's last attempt recorded in the cluster's journal.
fn recorded_failure(
    config: &LocalConfig,
    cluster: &Cluster,
) -> Option<crate::base::error::FailureKind> {
    let journal = cluster.journal();
    config.workflow.steps.iter().find_map(|step| {
        let attempt = journal.attempt(&step.name).ok().flatten()?;
        (attempt.state == AttemptState::Failed)
            .then_some(attempt.failure)
            .flatten()
    })
}

fn command(config: &LocalConfig, cluster: &Cluster, args: &[String]) -> Command {
    // The engine stops its terraform within its own grace; ours kills what is left after.
    let child_grace = config
        .grace
        .saturating_sub(Duration::from_secs(2))
        .max(Duration::from_secs(1));
    let mut argv = vec![
        "--workflow".to_string(),
        config.workflow_path.display().to_string(),
        "--params".to_string(),
        cluster.params_path().display().to_string(),
        "--root".to_string(),
        cluster.dir.display().to_string(),
        "--terraform".to_string(),
        config.terraform.display().to_string(),
        format!("--grace={}s", child_grace.as_secs()),
        "--log-format".to_string(),
        match config.log_format {
            Format::Text => "text",
            Format::Json => "json",
        }
        .to_string(),
    ];
    argv.extend(args.iter().cloned());
    Command {
        program: config.exe.clone(),
        args: argv,
        cwd: cluster.dir.clone(),
        // The controller's own environment (its TF_VAR_* above all) is inherited; an
        // operation must end, not hold like an entrypoint.
        env: vec![("BOOTSTRAPPER_HOLD".to_string(), "false".to_string())],
        label: cluster.id.clone(),
    }
}
