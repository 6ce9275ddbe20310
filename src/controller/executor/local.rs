//! The `local` executor: each operation a child `bootstrapper` process of this controller,
//! over the cluster's own root, through the one process runner.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::report::EngineReport;
use super::{Ending, Executor, OnEnd, Operation};
use crate::base::error::exit;
use crate::base::log::{Child, Format, Logger};
use crate::controller::cluster::{Cluster, Kind};
use crate::process::{Command, Options, Stop, Supervisor};
use crate::root::journal::AttemptState;
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
            let ending = execute(&config, &cluster, &operation, &stop);
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
        let mut problems = Vec::new();
        if crate::process::find_program(&self.config.terraform).is_none() {
            problems.push(format!(
                "terraform `{}` is not found",
                self.config.terraform.display()
            ));
        }
        // Every engine refuses to start terraform under its free-space floor.
        let (root, floor) = (
            &self.config.root,
            self.config.workflow.settings.min_free_space,
        );
        let human = crate::base::size::human;
        match crate::root::disk::free_space(root) {
            Ok(free) if free < floor => problems.push(format!(
                "only {} free on the filesystem of {}, less than the tenant workflow's settings.min_free_space ({}): every operation would fail",
                human(free),
                root.display(),
                human(floor)
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!(
                "cannot tell how much space is free at {}: {e}",
                root.display()
            )),
        }
        problems
    }
}

/// Runs the engine command of one operation in the cluster's root, its output into the
/// cluster's log.
fn execute(
    config: &LocalConfig,
    cluster: &Cluster,
    operation: &Operation,
    stop: &AtomicI32,
) -> Ending {
    let kind = operation.kind;
    // The intent's params, for the secrets to mask in the log: those written to the
    // params file just before, unless a newer intent came since (then the operation is
    // stopped and runs again anyway).
    let params = if kind == Kind::Plan {
        // A preview's params are not the intent's: its own file, for the engine and the mask.
        match crate::base::json::read(&cluster.plan_params_path()) {
            Ok(params) => params.unwrap_or_default(),
            Err(crate::base::json::ReadError::Io(e)) if starved(&e) => return Ending::Later,
            Err(_) => return Ending::failed("cannot read the plan's params".to_string()),
        }
    } else {
        match cluster.intent() {
            Ok(Some(intent)) => intent.params,
            Ok(None) => Default::default(),
            Err(e) if starved(&e) => return Ending::Later,
            Err(e) => return Ending::failed(format!("cannot read the cluster's intent: {e}")),
        }
    };
    let loaded = cluster.loaded(&config.workflow, &params);
    let supervisor = Supervisor {
        logger: Logger::new(config.log_format, loaded.redactor.clone()),
        shutdown: Default::default(),
        grace: config.grace,
    };
    let log_path = match kind {
        Kind::Plan => cluster.plan_log_path(),
        Kind::Apply | Kind::Destroy => cluster.log_path(),
    };
    let mut log = match std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&log_path)
    {
        Ok(file) => std::io::LineWriter::new(file),
        Err(e) if starved(&e) => return Ending::Later,
        Err(e) => return Ending::failed(format!("cannot write {}: {e}", log_path.display())),
    };
    if kind != Kind::Plan {
        // The journal here says how it went from now on, not a Job's result from before.
        crate::controller::job_result::forget(&cluster.dir);
    }
    let engine_root = cluster.engine_root();
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&engine_root)
    {
        return Ending::failed(format!("cannot create {}: {e}", engine_root.display()));
    }
    let mut args = engine_args(kind, operation.reviewed.as_deref());
    // A plan's is `current` only: a rollout's review of the image's code.
    if let (Kind::Apply | Kind::Plan, Some(code)) = (kind, operation.code) {
        args.push(format!("--code={}", code.as_str()));
    }
    let params_path = match kind {
        Kind::Plan => cluster.plan_params_path(),
        Kind::Apply | Kind::Destroy => cluster.params_path(),
    };
    // A diff exits 2 for "changes" and for a bad input alike: only a new record says which.
    let diff_before = (kind == Kind::Plan).then(|| diff_id(cluster));
    let command = command(config, cluster, &engine_root, &params_path, &args);
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
        errors: Some(Box::new(EngineReport::default())),
        child: Child::Engine,
        ..Options::default()
    };
    let finished = match supervisor.run(&command, options) {
        Ok(finished) => finished,
        // Out of open files, processes or memory for a moment: not the operation's fault.
        Err(e) if starved(&e) => return Ending::Later,
        Err(e) => {
            return Ending::failed(format!("cannot start {}: {e}", command.program.display()))
        }
    };
    if let Some(before) = diff_before {
        let planned = matches!(finished.status.code(), Some(exit::OK | exit::CHANGES))
            && diff_id(cluster).is_some_and(|now| Some(&now) != before.as_ref());
        if planned {
            return Ending::Succeeded;
        }
    }
    match finished.status.code() {
        Some(exit::OK) if kind == Kind::Plan => Ending::failed(format!(
            "`{}` ended without recording its diff",
            args.join(" ")
        )),
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

/// Whether `e` says the system lacked a resource for a moment, rather than that the
/// operation cannot run.
pub fn starved(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM)
    )
}

/// The engine's own command for an operation: one invocation, whatever the root holds.
fn engine_args(kind: Kind, reviewed: Option<&str>) -> Vec<String> {
    match (kind, reviewed) {
        (Kind::Apply, Some(id)) => vec!["run".to_string(), format!("--reviewed={id}")],
        // A cluster created again after a destroy is bootstrapped afresh.
        (Kind::Apply, None) => vec!["run".to_string(), "--recreate".to_string()],
        (Kind::Destroy, _) => vec!["destroy".to_string()],
        (Kind::Plan, _) => vec!["diff".to_string(), "--json".to_string()],
    }
}

/// The id of the last diff the cluster's engine recorded, if any.
pub fn diff_id(cluster: &Cluster) -> Option<String> {
    last_diff(cluster).map(|d| d.id)
}

/// The last diff the cluster's engine recorded, if any can be read: here, or in a plan Job
/// of the `kubernetes` executor.
pub fn last_diff(cluster: &Cluster) -> Option<crate::engine::diff::Document> {
    super::kubernetes::results::last_diff(cluster)
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

fn command(
    config: &LocalConfig,
    cluster: &Cluster,
    engine_root: &Path,
    params: &Path,
    args: &[String],
) -> Command {
    // The engine stops its terraform within its own grace; ours kills what is left after.
    let child_grace = config
        .grace
        .saturating_sub(Duration::from_secs(2))
        .max(Duration::from_secs(1));
    let mut argv = vec![
        "--workflow".to_string(),
        config.workflow_path.display().to_string(),
        "--params".to_string(),
        params.display().to_string(),
        "--root".to_string(),
        engine_root.display().to_string(),
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
        cwd: engine_root.to_path_buf(),
        // The controller's own environment (its TF_VAR_* above all) is inherited; an
        // operation must end, not hold like an entrypoint.
        env: vec![("BOOTSTRAPPER_HOLD".to_string(), "false".to_string())],
        label: cluster.id.clone(),
    }
}
