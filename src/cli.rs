//! The command line: options (each also read from `BOOTSTRAPPER_<NAME>`) and the commands,
//! each mapped to the library and to an exit code.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::Level;

use crate::base::error::{exit, Error, Result};
use crate::base::log::{Format, Logger};
use crate::base::signals::Shutdown;
use crate::engine::core::Engine;
use crate::process::Supervisor;
use crate::terraform::command::Terraform;
use crate::workflow::load::{self, Loaded};

#[derive(Debug, Parser)]
#[command(
    name = "bootstrapper",
    version,
    about = "Bootstraps Terraform-managed infrastructure from inside a pod, resumably"
)]
pub struct Cli {
    /// The workflow file (TOML)
    #[arg(
        long,
        env = "BOOTSTRAPPER_WORKFLOW",
        default_value = "/etc/bootstrapper/workflow.toml",
        global = true
    )]
    pub workflow: PathBuf,
    /// A params file (a JSON object); repeatable, later files win key by key
    /// (BOOTSTRAPPER_PARAMS: a colon-separated list)
    #[arg(
        long,
        env = "BOOTSTRAPPER_PARAMS",
        default_value = "/etc/bootstrapper/params.json",
        value_delimiter = ':',
        global = true
    )]
    pub params: Vec<PathBuf>,
    /// A params file whose every value is secret (masked whatever its name), read after the
    /// --params files; repeatable (BOOTSTRAPPER_SECRET_PARAMS: a colon-separated list)
    #[arg(
        long,
        env = "BOOTSTRAPPER_SECRET_PARAMS",
        value_delimiter = ':',
        global = true
    )]
    pub secret_params: Vec<PathBuf>,
    /// The PVC mount: code, journal and lock live under it
    #[arg(
        long,
        env = "BOOTSTRAPPER_ROOT",
        default_value = "/project",
        global = true
    )]
    pub root: PathBuf,
    /// The terraform (or tofu) binary
    #[arg(
        long,
        env = "BOOTSTRAPPER_TERRAFORM",
        default_value = "terraform",
        global = true
    )]
    pub terraform: PathBuf,
    /// How logs are written to stderr
    #[arg(
        long,
        env = "BOOTSTRAPPER_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: Format,
    /// How long terraform waits for a state lock (overrides the workflow's settings.lock_timeout)
    #[arg(long, env = "BOOTSTRAPPER_LOCK_TIMEOUT", value_parser = duration, global = true)]
    pub lock_timeout: Option<Duration>,
    /// After SIGTERM, how long terraform may take to stop before its process group is killed
    #[arg(long, env = "BOOTSTRAPPER_GRACE", value_parser = duration, default_value = "25s", global = true)]
    pub grace: Duration,
    /// How many steps may run at once (overrides the workflow's settings.parallelism)
    #[arg(long, env = "BOOTSTRAPPER_PARALLELISM", value_parser = clap::value_parser!(u16).range(1..), global = true)]
    pub parallelism: Option<u16>,
    /// Where the command writes its result when it ends (exit code, error, each step's
    /// state, non-sensitive outputs; at most 4 KiB): a container's termination-message path
    #[arg(long, env = "BOOTSTRAPPER_RESULT_FILE", global = true)]
    pub result_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Apply every unfinished step in order
    Run {
        /// Afterwards keep running until SIGTERM (the container entrypoint)
        #[arg(long, env = "BOOTSTRAPPER_HOLD")]
        hold: bool,
        /// A workflow destroyed before is bootstrapped again from scratch (as `reset --all`
        /// then `run`, in one command); without it, `run` refuses a destroyed workflow
        #[arg(long)]
        recreate: bool,
        /// Apply exactly the plans the last `diff` saved (with DIFF_ID: only if that is the
        /// last diff), refusing (exit 2) when a step's inputs changed since; steps it did not
        /// plan are left out
        #[arg(long, value_name = "DIFF_ID", num_args = 0..=1, default_missing_value = "",
              conflicts_with = "recreate")]
        reviewed: Option<String>,
        /// First move the root to other code, keeping terraform's local state: `current`,
        /// the image's code when it differs from the code in place (the replaced code is kept);
        /// `previous`, back to the code the last upgrade replaced
        #[arg(long, value_name = "WHICH", value_parser = ["current", "previous"],
              conflicts_with = "reviewed")]
        code: Option<String>,
    },
    /// What terraform would change if `run` applied now, per step and resource; saves the
    /// plans for `run --reviewed`. Exit 0: nothing would change; 2: something would
    Diff {
        /// Only these steps (default: every step)
        steps: Vec<String>,
        #[arg(long)]
        json: bool,
        /// `current`: plan against the image's code, as `run --code current` would apply it,
        /// in a temporary copy that keeps the code in place untouched; its plans are not kept
        /// for `run --reviewed`
        #[arg(long, value_name = "WHICH", value_parser = ["current"])]
        code: Option<String>,
        /// Read earlier steps' outputs from their backends, not the journal: for a fresh
        /// root (a Job's emptyDir), where a step that uses them would otherwise be not known
        #[arg(long)]
        every_step: bool,
    },
    /// One line per step: state, attempts, duration, last error
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The dry run: what `run` (or `destroy`) would do, without running or writing anything
    Plan {
        /// What `destroy` would do instead
        #[arg(long)]
        destroy: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check workflow, templates and params; report every problem at once
    Validate,
    /// Stop a running `run` gracefully, then destroy in reverse every step that ever started
    Destroy {
        /// How long to wait for a running command to let go of the lock
        #[arg(long, env = "BOOTSTRAPPER_WAIT", value_parser = duration, default_value = "10m")]
        wait: Duration,
        /// Destroy every step of the workflow, whatever the journal says, reading earlier
        /// steps' outputs from their backends: for a fresh root (a Job's emptyDir). A step
        /// whose state is empty destroys nothing
        #[arg(long)]
        every_step: bool,
    },
    /// Forget a step so that the next run applies it again (`source`: the code on the PVC)
    Reset {
        /// A step name, or `source` for the code
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        step: Option<String>,
        /// Forget every step and the record of a destroy: the next run bootstraps from scratch
        #[arg(long)]
        all: bool,
    },
    /// The controller: an HTTP API that creates, destroys and describes clusters, each an
    /// instance of the tenant workflow (--workflow) under --root/clusters/<id>
    Serve(Box<ServeArgs>),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The address to listen on (port 0: any free port, named in the log)
    #[arg(long, env = "BOOTSTRAPPER_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,
    /// How many operations may run at once
    #[arg(long, env = "BOOTSTRAPPER_CONCURRENCY", default_value = "4",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// The bearer tokens, one per line (a mounted Secret); read again when it changes
    #[arg(long, env = "BOOTSTRAPPER_TOKENS")]
    pub tokens: Option<PathBuf>,
    /// Serve the API without tokens (only for a laptop or a test)
    #[arg(long, env = "BOOTSTRAPPER_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Once the tokens file cannot be read, how long the tokens read before still count
    #[arg(long, env = "BOOTSTRAPPER_TOKENS_GRACE", value_parser = duration, default_value = "30s")]
    pub tokens_grace: Duration,
    /// How long a client may take to send a request's line and headers
    #[arg(long, env = "BOOTSTRAPPER_HEADER_TIMEOUT", value_parser = positive_duration, default_value = "10s")]
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body, from its headers (else 408)
    #[arg(long, env = "BOOTSTRAPPER_BODY_TIMEOUT", value_parser = positive_duration, default_value = "30s")]
    pub body_timeout: Duration,
    /// How long an open connection may wait for its next request, or for its client to read
    /// more of an answer
    #[arg(long, env = "BOOTSTRAPPER_IDLE_TIMEOUT", value_parser = positive_duration, default_value = "60s")]
    pub idle_timeout: Duration,
    /// How many client connections may be open at once (default: as many as the open-file
    /// limit leaves room for beside the operations, at most 1024)
    #[arg(long, env = "BOOTSTRAPPER_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// How long a destroyed cluster's files are kept before they are removed (it then answers 404)
    #[arg(long, env = "BOOTSTRAPPER_KEEP_DESTROYED", value_name = "DUR",
          value_parser = positive_duration, default_value = "7d")]
    pub keep_destroyed: Duration,
    /// An operation running longer is stopped gracefully and its cluster failed
    #[arg(long, env = "BOOTSTRAPPER_OPERATION_TIMEOUT", value_name = "DUR",
          value_parser = positive_duration, default_value = "2h")]
    pub operation_timeout: Duration,
    /// Check each ready cluster for drift (a `diff` of its own params) when its last check
    /// is older than this (e.g. `6h`); off by default. Drift is reported, never corrected
    #[arg(long, env = "BOOTSTRAPPER_DRIFT_INTERVAL", value_name = "DUR",
          value_parser = positive_duration)]
    pub drift_interval: Option<Duration>,
    /// Where operations run: `local`, child processes of this controller; `kubernetes`, a
    /// Job each (with --namespace and --job-template; KUBECONFIG outside a cluster)
    #[arg(
        long,
        env = "BOOTSTRAPPER_EXECUTOR",
        value_enum,
        default_value = "local"
    )]
    pub executor: ExecutorKind,
    /// The namespace of the operations' Jobs and Secrets (kubernetes executor)
    #[arg(
        long,
        env = "BOOTSTRAPPER_NAMESPACE",
        required_if_eq("executor", "kubernetes")
    )]
    pub namespace: Option<String>,
    /// The batch/v1 Job manifest (YAML) each operation's Job is made from (kubernetes executor)
    #[arg(
        long,
        env = "BOOTSTRAPPER_JOB_TEMPLATE",
        required_if_eq("executor", "kubernetes")
    )]
    pub job_template: Option<PathBuf>,
    /// Jobs carry this Kueue queue's label and are created suspended, for Kueue to admit
    #[arg(long, env = "BOOTSTRAPPER_KUEUE_QUEUE")]
    pub kueue_queue: Option<String>,
    /// How long a finished Job stays (its ttlSecondsAfterFinished)
    #[arg(long, env = "BOOTSTRAPPER_JOB_TTL", value_name = "DUR",
          value_parser = positive_duration, default_value = "1h")]
    pub job_ttl: Duration,
    /// How often a followed Job and its pods are listed again besides their watches, in
    /// case a change was missed
    #[arg(long, env = "BOOTSTRAPPER_JOB_POLL", value_name = "DUR",
          value_parser = positive_duration, default_value = "1m")]
    pub job_poll: Duration,
    /// How long an operation's pod may stay Pending before its Job is deleted and the
    /// cluster fails, saying why
    #[arg(long, env = "BOOTSTRAPPER_JOB_PENDING_TIMEOUT", value_name = "DUR",
          value_parser = positive_duration, default_value = "10m")]
    pub job_pending_timeout: Duration,
    /// How long a request to the Kubernetes API may go unanswered before it fails and is
    /// tried again (kubernetes executor)
    #[arg(long, env = "BOOTSTRAPPER_KUBE_TIMEOUT", value_name = "DUR",
          value_parser = positive_duration, default_value = "30s")]
    pub kube_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorKind {
    Local,
    Kubernetes,
}

impl Cli {
    fn serve_options(&self, args: &ServeArgs) -> crate::controller::serve::Options {
        crate::controller::serve::Options {
            workflow: self.workflow.clone(),
            root: self.root.clone(),
            terraform: self.terraform.clone(),
            log_format: self.log_format,
            grace: self.grace,
            listen: args.listen,
            concurrency: args.concurrency,
            tokens: args.tokens.clone(),
            insecure_no_auth: args.insecure_no_auth,
            tokens_grace: args.tokens_grace,
            http: crate::controller::http::Limits {
                header_timeout: args.header_timeout,
                body_timeout: args.body_timeout,
                idle_timeout: args.idle_timeout,
                max_connections: args.max_connections,
            },
            keep_destroyed: args.keep_destroyed,
            operation_timeout: args.operation_timeout,
            drift_interval: args.drift_interval,
            kubernetes: (args.executor == ExecutorKind::Kubernetes).then(|| {
                crate::controller::executor::kubernetes::Options {
                    namespace: args.namespace.clone().expect("clap requires it"),
                    job_template: args.job_template.clone().expect("clap requires it"),
                    kueue_queue: args.kueue_queue.clone(),
                    job_ttl: args.job_ttl,
                    poll: args.job_poll,
                    pending_timeout: args.job_pending_timeout,
                    request_timeout: args.kube_timeout,
                }
            }),
        }
    }
}

/// Reports a command line clap could not parse (or `--help`, `--version`) and returns the
/// exit code; under `--log-format json` the error is one JSON log line like every other.
pub fn usage_error(e: clap::Error) -> i32 {
    let from_env = std::env::var("BOOTSTRAPPER_LOG_FORMAT").ok();
    if !e.use_stderr() || requested_format(std::env::args(), from_env) != Format::Json {
        let _ = e.print();
        return e.exit_code();
    }
    let message = e.render().to_string();
    crate::base::log::init(Format::Json);
    Logger::new(Format::Json, Default::default()).error(None, message.trim_end());
    e.exit_code()
}

/// The log format asked for, read without clap, whose parse just failed.
fn requested_format(args: impl Iterator<Item = String>, from_env: Option<String>) -> Format {
    let mut asked = None;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if arg == "--log-format" {
            asked = args.next();
        } else if let Some(value) = arg.strip_prefix("--log-format=") {
            asked = Some(value.to_string());
        }
    }
    match asked.or(from_env).as_deref() {
        Some("json") => Format::Json,
        _ => Format::Text,
    }
}

fn duration(text: &str) -> std::result::Result<Duration, String> {
    crate::base::clock::parse_duration(text)
}

fn positive_duration(text: &str) -> std::result::Result<Duration, String> {
    match duration(text)? {
        d if d.is_zero() => Err(format!("`{text}` must be more than zero")),
        d => Ok(d),
    }
}

/// Runs the command line and returns the process's exit code.
pub fn run(cli: Cli) -> i32 {
    if let Verb::Serve(args) = &cli.command {
        return crate::controller::serve::command(&cli.serve_options(args));
    }
    crate::base::log::init(cli.log_format);
    let shutdown = match Shutdown::install() {
        Ok(s) => s,
        Err(e) => {
            Logger::new(cli.log_format, Default::default())
                .error(None, &format!("cannot install signal handlers: {e}"));
            return exit::STEP_FAILED;
        }
    };
    let mut loaded = match load::load(&cli.workflow, &cli.params, &cli.secret_params) {
        Ok(loaded) => loaded,
        Err(e) => {
            write_result(&cli, None, Err(&e));
            return report(&e, None, cli.log_format);
        }
    };
    if let Some(n) = cli.parallelism {
        loaded.workflow.settings.parallelism = n.into();
    }
    crate::base::log::mask_with(&loaded.redactor);
    let logger = Logger::new(cli.log_format, loaded.redactor.clone());
    let result = dispatch(&cli, loaded.clone(), logger.clone(), shutdown);
    write_result(&cli, Some(&loaded), result.as_ref().map(|c| *c));
    match result {
        Ok(code) => code,
        Err(e) => report(&e, Some(&loaded), cli.log_format),
    }
}

/// Writes `--result-file`, if asked for; failing to is said, and changes no exit code.
fn write_result(cli: &Cli, loaded: Option<&Loaded>, ended: std::result::Result<i32, &Error>) {
    let Some(path) = &cli.result_file else {
        return;
    };
    let result = crate::engine::result::collect(loaded, &cli.root, ended);
    if let Err(e) = result.write(path) {
        Logger::new(cli.log_format, Default::default()).warn(
            None,
            &format!("cannot write the result to {}: {e}", path.display()),
        );
    }
}

fn report(e: &Error, loaded: Option<&Loaded>, format: Format) -> i32 {
    let text = e.to_string();
    let text = match loaded {
        Some(l) => l.redactor.mask(&text).into_owned(),
        None => crate::base::secrets::mask_url_userinfo(text.as_str().into()).into_owned(),
    };
    let step = match e {
        Error::StepFailed { step, .. } | Error::TerraformFailed { step, .. } => Some(step.as_str()),
        _ => None,
    };
    let logger = Logger::new(format, Default::default());
    match (format, e) {
        // In JSON, the last word is a log line like every other: one object, masked above.
        (Format::Json, _) => logger.error(step, &text),
        (Format::Text, Error::Input(_)) => logger.as_is(Level::ERROR, step, &text),
        (Format::Text, _) => logger.as_is(Level::ERROR, step, &format!("error: {text}")),
    }
    e.exit_code()
}

fn dispatch(cli: &Cli, loaded: Loaded, logger: Logger, shutdown: Shutdown) -> Result<i32> {
    let mut engine = engine(cli, loaded, logger, shutdown);
    match &cli.command {
        // Dispatched before a params file is loaded, in `main`; kept here for completeness.
        Verb::Serve(args) => Ok(crate::controller::serve::command(&cli.serve_options(args))),
        Verb::Validate => crate::commands::validate::command(&mut engine),
        Verb::Status { json } => crate::engine::status::command(&engine, *json),
        Verb::Plan { destroy, json } => {
            crate::commands::plan::command(&mut engine, *destroy, *json)
        }
        Verb::Reset { all: true, .. } => crate::commands::reset::all(&engine),
        Verb::Reset { step, .. } => crate::commands::reset::step(
            &engine,
            step.as_deref().expect("clap requires STEP without --all"),
        ),
        Verb::Destroy { wait, every_step } => engine.destroy(*wait, *every_step).map(|_| exit::OK),
        Verb::Run {
            hold,
            recreate,
            reviewed,
            code,
        } => {
            // Checked here, not by clap: `BOOTSTRAPPER_HOLD=false` in the environment (as the
            // controller sets for its operations) is no request to hold.
            if *hold && reviewed.is_some() {
                return Err(Error::Input(crate::base::error::Problems::one(
                    crate::base::error::Problem::new(
                        "`run --reviewed` cannot be used with --hold: it applies the reviewed plans and ends",
                    )
                    .hint("leave out --hold (and BOOTSTRAPPER_HOLD)"),
                )));
            }
            let reviewed = reviewed
                .as_deref()
                .map(|id| Some(id).filter(|id| !id.is_empty()));
            if let Some(code) = code {
                let change = match code.as_str() {
                    "previous" => crate::root::source::Change::Previous,
                    _ => crate::root::source::Change::Current,
                };
                crate::commands::code::change(&engine, change)?;
            }
            crate::engine::run::command(&mut engine, *hold, *recreate, reviewed)
        }
        Verb::Diff {
            steps,
            json,
            code,
            every_step,
        } => crate::engine::diff::command(&mut engine, steps, *json, code.is_some(), *every_step),
    }
}

fn engine(cli: &Cli, loaded: Loaded, logger: Logger, shutdown: Shutdown) -> Engine {
    let lock_timeout = cli
        .lock_timeout
        .unwrap_or(loaded.workflow.settings.lock_timeout);
    Engine {
        terraform: Terraform::new(cli.terraform.clone(), lock_timeout),
        root: cli.root.clone(),
        supervisor: Supervisor {
            logger,
            shutdown,
            grace: cli.grace,
        },
        loaded,
        init_turn: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_format_is_found_in_a_command_line_that_does_not_parse() {
        let format = |args: &[&str], env: Option<&str>| {
            requested_format(args.iter().map(|a| a.to_string()), env.map(str::to_string))
        };
        assert_eq!(
            format(&["b", "--log-format", "json", "x"], None),
            Format::Json
        );
        assert_eq!(
            format(&["b", "run", "--log-format=json"], None),
            Format::Json
        );
        assert_eq!(format(&["b", "x"], Some("json")), Format::Json);
        assert_eq!(
            format(&["b", "--log-format=text"], Some("json")),
            Format::Text
        );
        assert_eq!(
            format(&["b", "--", "--log-format=json"], None),
            Format::Text
        );
        assert_eq!(format(&["b", "--log-format"], None), Format::Text);
    }
}
