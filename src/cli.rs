//! The command line: options (each also read from `BOOTSTRAPPER_<NAME>`) and the commands,
//! each mapped to the library and to an exit code.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::Level;

use crate::base::error::{exit, Error, Problem, Problems, Result};
use crate::base::log::{Format, Logger};
use crate::base::signals::{Shutdown, YIELD_SIGNAL};
use crate::engine::core::Engine;
use crate::process::Supervisor;
use crate::root::journal::Journal;
use crate::root::lock::Lock;
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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply every unfinished step in order
    Run {
        /// Afterwards keep running until SIGTERM (the container entrypoint)
        #[arg(long, env = "BOOTSTRAPPER_HOLD")]
        hold: bool,
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
    Serve(ServeArgs),
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

/// Runs the command line and returns the process's exit code.
pub fn main(cli: Cli) -> i32 {
    if let Command::Serve(args) = &cli.command {
        return crate::controller::serve::main(&cli.serve_options(args));
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
        Err(e) => return report(&e, None, cli.log_format),
    };
    if let Some(n) = cli.parallelism {
        loaded.workflow.settings.parallelism = n.into();
    }
    crate::base::log::mask_with(&loaded.redactor);
    let logger = Logger::new(cli.log_format, loaded.redactor.clone());
    let result = dispatch(&cli, loaded.clone(), logger.clone(), shutdown);
    match result {
        Ok(code) => code,
        Err(e) => report(&e, Some(&loaded), cli.log_format),
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
    match &cli.command {
        // Dispatched before a params file is loaded, in `main`; kept here for completeness.
        Command::Serve(args) => Ok(crate::controller::serve::main(&cli.serve_options(args))),
        Command::Validate => validate(&loaded, &mut engine(cli, loaded.clone(), logger, shutdown)),
        Command::Status { json } => {
            let report = crate::engine::status::collect(&loaded, &cli.root)?;
            crate::engine::status::print(&report, *json, &loaded, &mut std::io::stdout().lock())
                .map_err(|e| Error::io("cannot write to stdout", e))?;
            Ok(exit::OK)
        }
        Command::Plan { destroy, json } => {
            let mut engine = engine(cli, loaded.clone(), logger, shutdown);
            // Without terraform a laptop still plans, and the plan says where `run` would
            // stop; a terraform that is there must be one that `run` would accept.
            if engine.terraform.resolve().is_ok() {
                engine.terraform.verify(&engine.supervisor)?;
            }
            crate::commands::plan::main(
                &loaded,
                &cli.root,
                &engine.terraform,
                *destroy,
                *json,
                &mut std::io::stdout().lock(),
            )
        }
        Command::Reset { all: true, .. } => reset_all(&cli.root, &logger),
        Command::Reset { step, .. } => reset(
            &loaded,
            &cli.root,
            step.as_deref().expect("clap requires STEP without --all"),
            &logger,
        ),
        Command::Destroy { wait } => {
            let mut engine = engine(cli, loaded, logger, shutdown);
            engine.destroy(*wait).map(|_| exit::OK)
        }
        Command::Run { hold } => {
            let mut engine = engine(cli, loaded, logger.clone(), shutdown.clone());
            let result = engine.run(*hold);
            let state_dir = Journal::at(&cli.root).dir().to_path_buf();
            if !*hold {
                return match result {
                    Ok(summary) if summary.destroyed.is_some() => Ok(exit::STEP_FAILED),
                    Ok(_) => Ok(exit::OK),
                    Err(e) => Err(e),
                };
            }
            match result {
                Err(e @ (Error::Input(_) | Error::Locked { .. })) => Err(e),
                Err(Error::Interrupted { signal, .. }) if signal == YIELD_SIGNAL => {
                    shutdown.clear_yield();
                    logger.info(
                        None,
                        "stopped and let go of the lock for a destroy; holding until SIGTERM",
                    );
                    crate::engine::hold::until_stopped(&shutdown, &state_dir, cli.grace, &logger)
                }
                Err(e @ Error::Interrupted { signal, .. }) => {
                    // Stopped while waiting for the lock, or while applying (the lock is
                    // ours no more): whoever holds it now dies with the pod unless told.
                    crate::engine::hold::pass_on(&state_dir, signal, cli.grace, &logger);
                    Err(e)
                }
                Err(e) => {
                    logger.warn(None, &format!("{e}"));
                    logger.warn(
                        None,
                        "holding: `bootstrapper status` shows why; `bootstrapper run` tries again",
                    );
                    crate::engine::hold::until_stopped(&shutdown, &state_dir, cli.grace, &logger)
                }
                Ok(_) => {
                    logger.info(None, "holding until SIGTERM");
                    crate::engine::hold::until_stopped(&shutdown, &state_dir, cli.grace, &logger)
                }
            }
        }
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

fn validate(loaded: &Loaded, engine: &mut Engine) -> Result<i32> {
    let logger = engine.logger().clone();
    let (mut problems, notes) = match load::check(
        loaded,
        &Default::default(),
        load::Modules::Under(&engine.root),
    ) {
        Ok(checked) => (Problems::default(), checked.notes),
        Err(problems) => (problems, Vec::new()),
    };
    match engine.terraform.verify(&engine.supervisor) {
        Ok(_) => {}
        Err(Error::Input(p)) => problems.extend(p),
        Err(e) => return Err(e),
    }
    problems.extend(crate::root::source::check_links(&engine.root, loaded));
    problems.into_result()?;
    for warning in load::warnings(loaded).into_iter().chain(notes) {
        match logger.format() {
            Format::Json => logger.warn(None, &warning),
            Format::Text => logger.as_is(Level::WARN, None, &format!("warning: {warning}")),
        }
    }
    println!(
        "{}: {} steps, templates and params are valid",
        loaded.workflow.path.display(),
        loaded.workflow.steps.len()
    );
    Ok(exit::OK)
}

fn reset(loaded: &Loaded, root: &std::path::Path, step: &str, logger: &Logger) -> Result<i32> {
    let journal = Journal::at(root);
    if step == crate::root::source::RESET_NAME {
        let source = loaded.renderer().render_source().map_err(Error::Input)?;
        let code = root.join(&source.dir);
        if !journal.dir().is_dir() && code.symlink_metadata().is_err() {
            logger.info(None, "code: nothing on the root yet; nothing to forget");
            return Ok(exit::OK);
        }
        journal.create()?;
        let _lock = Lock::acquire(journal.dir(), &format!("reset {step}"))?;
        crate::root::source::forget(root, &source, &journal, logger)?;
        return Ok(exit::OK);
    }
    let known = journal
        .step_names()
        .map_err(|e| Error::input(e.to_string()))?;
    if loaded.workflow.step(step).is_none() && !known.iter().any(|s| s == step) {
        let names: Vec<&str> = loaded
            .workflow
            .steps
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        return Err(Error::Input(Problems::one(
            Problem::new(format!("no step `{step}` in the workflow or the journal")).hint(format!(
                "steps are: {}; `{}` forgets the code",
                names.join(", "),
                crate::root::source::RESET_NAME
            )),
        )));
    }
    let _lock = Lock::acquire(journal.dir(), &format!("reset {step}"))?;
    if journal.forget(step)? {
        logger.info(Some(step), "forgotten: the next run applies it again");
    } else {
        logger.info(Some(step), "nothing recorded; nothing to forget");
    }
    Ok(exit::OK)
}

fn reset_all(root: &std::path::Path, logger: &Logger) -> Result<i32> {
    let journal = Journal::at(root);
    let _lock = Lock::acquire(journal.dir(), "reset --all")?;
    let forgotten = journal.forget_all()?;
    logger.info(
        None,
        &format!(
            "forgot {} step(s) and any record of a destroy: the next run bootstraps from scratch",
            forgotten.len()
        ),
    );
    Ok(exit::OK)
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
