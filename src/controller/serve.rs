//! `serve`: the controller. Checks its inputs, listens, resumes every unfinished cluster, and
//! on SIGTERM stops accepting, passes the signal to every running operation, waits up to the
//! grace period, and exits 143.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::base::error::{Error, Problem, Problems, Result};
use crate::base::log::Format;
use crate::controller::api::{self, App};
use crate::controller::executor::{Executor, Local, LocalConfig};
use crate::controller::http::{self, Limits};
use crate::controller::metrics::Metrics;
use crate::controller::reconcile::{Config, Reconciler};
use crate::controller::tokens::Tokens;

/// Everything `serve` is started with, from the command line or the environment.
#[derive(Debug, Clone)]
pub struct Options {
    /// The tenant workflow; every cluster is one instance of it.
    pub workflow: PathBuf,
    /// Where `clusters/<id>/` live.
    pub root: PathBuf,
    pub terraform: PathBuf,
    pub log_format: Format,
    /// How long a stop waits for the running operations.
    pub grace: Duration,
    pub listen: SocketAddr,
    /// How many operations may run at once.
    pub concurrency: u16,
    /// The bearer tokens' file, one per line.
    pub tokens: Option<PathBuf>,
    /// Serve without tokens.
    pub insecure_no_auth: bool,
    /// How long the tokens read last still count once the tokens file cannot be read.
    pub tokens_grace: Duration,
    /// Timeouts and the connection limit.
    pub http: Limits,
    /// How long a destroyed cluster's files are kept.
    pub keep_destroyed: Duration,
    /// How long an operation may run before it is stopped and its cluster failed.
    pub operation_timeout: Duration,
    /// How old a ready cluster's last drift check may get; None: no drift checks.
    pub drift_interval: Option<Duration>,
    /// Operations as Kubernetes Jobs rather than child processes.
    pub kubernetes: Option<crate::controller::executor::kubernetes::Options>,
}

/// Runs the controller until a signal stops it; returns the exit code.
pub fn command(options: &Options) -> i32 {
    install_tracing(options.log_format);
    match serve(options) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{}", prefixed(&e));
            e.exit_code()
        }
    }
}

fn prefixed(e: &Error) -> String {
    match e {
        Error::Input(_) => e.to_string(),
        _ => format!("error: {e}"),
    }
}

/// The controller logs through `tracing`, a span per cluster; one place sets it up.
pub fn install_tracing(format: Format) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BOOTSTRAPPER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        // Flat, as the engine's own JSON lines are: one shape for every line a reader parses.
        Format::Json => builder.json().flatten_event(true).try_init(),
        Format::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

fn serve(options: &Options) -> Result<i32> {
    let options = &absolute(options)?;
    let app = prepare(options)?;
    // Two controllers on one root would run operations on the same clusters side by side.
    let _lock = crate::controller::layout::lock(&options.root)?;
    crate::controller::layout::migrate(&options.root)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the async runtime", e))?;
    runtime.block_on(run(app, options))
}

/// `options` with every path absolute: each engine runs in its cluster's directory, and is
/// handed them. A bare `--terraform` name stays a name, looked up on the PATH.
fn absolute(options: &Options) -> Result<Options> {
    let absolute = |path: &PathBuf| {
        std::path::absolute(path)
            .map_err(|e| Error::io(format!("cannot resolve the path {}", path.display()), e))
    };
    let terraform = if options.terraform.to_string_lossy().contains('/') {
        absolute(&options.terraform)?
    } else {
        options.terraform.clone()
    };
    Ok(Options {
        workflow: absolute(&options.workflow)?,
        root: absolute(&options.root)?,
        terraform,
        tokens: options.tokens.as_ref().map(absolute).transpose()?,
        ..options.clone()
    })
}

/// Everything checked and loaded before the controller listens.
fn prepare(options: &Options) -> Result<Arc<App>> {
    let mut problems = Problems::default();
    let workflow = crate::workflow::file::load(&options.workflow).map_err(|p| problems.extend(p));
    let tokens = match (&options.tokens, options.insecure_no_auth) {
        (Some(path), _) => Tokens::load(path, options.tokens_grace)
            .map(Some)
            .map_err(|e| problems.push(Problem::new(e.to_string()))),
        (None, true) => Ok(None),
        (None, false) => {
            problems.push(
                Problem::new("serve needs bearer tokens: anyone who reaches it could create and destroy clusters")
                    .hint("pass --tokens FILE (one token per line, e.g. a mounted Secret), or --insecure-no-auth on a laptop"),
            );
            Err(())
        }
    };
    let clusters = crate::controller::cluster::clusters_dir(&options.root);
    if let Err(e) = std::fs::create_dir_all(&clusters) {
        problems.push(
            Problem::new(format!("cannot create {}: {e}", clusters.display()))
                .hint("--root must be a writable directory (the PVC mount)"),
        );
    }
    let exe =
        std::env::current_exe().map_err(|e| Error::io("cannot find this program's own path", e))?;
    let (Ok(workflow), Ok(tokens), true) = (workflow, tokens, problems.is_empty()) else {
        return Err(Error::Input(problems));
    };
    let workflow_path = std::path::absolute(&options.workflow)
        .map_err(|e| Error::io("cannot resolve the workflow's path", e))?;
    let executor: Arc<dyn Executor> = match &options.kubernetes {
        None => Arc::new(Local::new(LocalConfig {
            root: options.root.clone(),
            workflow_path: workflow_path.clone(),
            workflow: workflow.clone(),
            exe,
            terraform: options.terraform.clone(),
            grace: options.grace,
            log_format: options.log_format,
        })),
        Some(kube) => Arc::new(crate::controller::executor::kubernetes::executor_for(
            kube,
            &workflow,
            &workflow_path,
            &crate::controller::executor::kubernetes::Common {
                root: options.root.clone(),
                terraform: options.terraform.clone(),
                grace: options.grace,
                operation_timeout: options.operation_timeout,
                log_format: options.log_format,
            },
        )?),
    };
    for problem in executor.problems() {
        warn!("{problem}: /readyz says so until it is");
    }
    match crate::controller::code::compute_current(&workflow) {
        Some(code) => info!("the tenant code this controller ships is {code}"),
        None => warn!("the tenant code's identity is unknown: no cluster can be upgraded"),
    }
    let config = Config {
        root: options.root.clone(),
        workflow_path,
        workflow,
        concurrency: options.concurrency.into(),
        operation_timeout: options.operation_timeout,
    };
    if tokens.is_none() {
        warn!("serving without tokens (--insecure-no-auth): anyone who reaches the port may create and destroy clusters");
    }
    Ok(Arc::new(App {
        reconciler: Reconciler::new(config, Arc::new(Metrics::new()), executor),
        tokens,
        writes: tokio::sync::Mutex::new(()),
    }))
}

async fn run(app: Arc<App>, options: &Options) -> Result<i32> {
    let (listen, grace, limits): (SocketAddr, Duration, Limits) =
        (options.listen, options.grace, options.http);
    // Installed first: a SIGTERM from here on is a graceful stop, never the default death.
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| Error::io("cannot handle SIGTERM", e))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| Error::io("cannot handle SIGINT", e))?;
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        Error::Input(Problems::one(
            Problem::new(format!("cannot listen on {listen}: {e}"))
                .hint("pass a free address with --listen or BOOTSTRAPPER_LISTEN"),
        ))
    })?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::io("cannot read the listening address", e))?;
    let reconciler = app.reconciler.clone();
    crate::controller::purge::remove_leftovers(&reconciler.config.root);
    let resumed = reconciler
        .enqueue_all()
        .map_err(|e| Error::io("cannot read the clusters under the root", e))?;
    info!(
        "listening on http://{address}; {resumed} cluster(s) on record, concurrency {}",
        reconciler.config.concurrency
    );
    let (allowed, files) = http::allowed_connections(&limits, reconciler.config.concurrency);
    info!("at most {allowed} connection(s) at once (open-file limit {files})");
    let worker = tokio::spawn(reconciler.clone().work());
    let housekeeping = tokio::spawn(crate::controller::purge::housekeeping(
        app.clone(),
        options.keep_destroyed,
    ));
    let rollouts = tokio::spawn(api::drive_rollouts(app.clone()));
    let drift = options.drift_interval.map(|interval| {
        info!(
            "checking every ready cluster for drift when its last check is {} old",
            crate::controller::reconcile::spoken(interval)
        );
        tokio::spawn(reconciler.clone().watch_drift(interval))
    });

    let stopped = Arc::new(std::sync::Mutex::new(None::<Signal>));
    let on_signal = {
        let stopped = stopped.clone();
        let reconciler = reconciler.clone();
        async move {
            let signal = tokio::select! {
                _ = terminate.recv() => Signal::SIGTERM,
                _ = interrupt.recv() => Signal::SIGINT,
            };
            info!("{signal}: no longer accepting requests; stopping the running operations");
            // Each operation gets SIGTERM, whatever stopped us: an engine takes it as the
            // graceful stop, and gives its terraform one SIGINT. Operations that outlive
            // the controller (Jobs) are left running instead.
            reconciler.executor.detach();
            reconciler.stop(Signal::SIGTERM);
            *stopped.lock().expect("signal lock") = Some(signal);
        }
    };
    let metrics = reconciler.metrics.clone();
    let router = api::router(app);
    let stopping = http::serve(listener, router, limits, allowed, metrics, on_signal, grace).await;
    let deadline = stopping + grace + Duration::from_secs(1);
    let left = reconciler.drained(deadline).await;
    worker.abort();
    housekeeping.abort();
    rollouts.abort();
    if let Some(drift) = drift {
        drift.abort();
    }
    if left > 0 {
        warn!("{left} operation(s) still running after the grace period; exiting anyway");
    } else {
        info!("every operation stopped; unfinished ones resume on the next start");
    }
    let signal = stopped
        .lock()
        .expect("signal lock")
        .unwrap_or(Signal::SIGTERM);
    Ok(128 + signal as i32)
}
