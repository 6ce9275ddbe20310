//! The command line: options (each also read from `BOOTSTRAPPER_<NAME>`) and the commands,
//! each mapped to the library and to an exit code.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::error::{exit, Error, Problem, Problems, Result};
use crate::journal::Journal;
use crate::load::{self, Loaded};
use crate::lock::Lock;
use crate::log::{Format, Logger};
use crate::process::Supervisor;
use crate::run::Engine;
use crate::signals::Shutdown;
use crate::terraform::Terraform;

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
    /// The params file (a JSON object)
    #[arg(
        long,
        env = "BOOTSTRAPPER_PARAMS",
        default_value = "/etc/bootstrapper/params.json",
        global = true
    )]
    pub params: PathBuf,
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
    /// Check workflow, templates and params; report every problem at once
    Validate,
    /// Forget a step's markers so that the next run applies it again
    Reset { step: String },
}

fn duration(text: &str) -> std::result::Result<Duration, String> {
    crate::clock::parse_duration(text)
}

/// Runs the command line and returns the process's exit code.
pub fn main(cli: Cli) -> i32 {
    let shutdown = match Shutdown::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return exit::STEP_FAILED;
        }
    };
    let loaded = match load::load(&cli.workflow, &cli.params) {
        Ok(loaded) => loaded,
        Err(e) => return report(&e, None),
    };
    let logger = Logger::new(cli.log_format, loaded.redactor.clone());
    let result = dispatch(&cli, loaded.clone(), logger.clone(), shutdown);
    match result {
        Ok(code) => code,
        Err(e) => report(&e, Some(&loaded)),
    }
}

fn report(e: &Error, loaded: Option<&Loaded>) -> i32 {
    let text = e.to_string();
    let text = match loaded {
        Some(l) => l.redactor.mask(&text).into_owned(),
        None => crate::secrets::mask_url_userinfo(text.as_str().into()).into_owned(),
    };
    match e {
        Error::Input(_) => eprintln!("{text}"),
        _ => eprintln!("error: {text}"),
    }
    e.exit_code()
}

fn dispatch(cli: &Cli, loaded: Loaded, logger: Logger, shutdown: Shutdown) -> Result<i32> {
    match &cli.command {
        Command::Validate => validate(&loaded),
        Command::Status { json } => {
            let report = crate::status::collect(&loaded, &cli.root)?;
            crate::status::print(&report, *json, &loaded, &mut std::io::stdout().lock())
                .map_err(|e| Error::io("cannot write to stdout", e))?;
            Ok(exit::OK)
        }
        Command::Reset { step } => reset(&loaded, &cli.root, step, &logger),
        Command::Run { hold } => {
            let lock_timeout = cli
                .lock_timeout
                .unwrap_or(loaded.workflow.settings.lock_timeout);
            let mut engine = Engine {
                terraform: Terraform::new(cli.terraform.clone(), lock_timeout),
                root: cli.root.clone(),
                supervisor: Supervisor {
                    logger: logger.clone(),
                    shutdown: shutdown.clone(),
                    grace: cli.grace,
                },
                loaded,
            };
            let result = engine.run();
            if !*hold {
                return result.map(|_| exit::OK);
            }
            match result {
                Err(e @ (Error::Interrupted { .. } | Error::Input(_) | Error::Locked { .. })) => {
                    Err(e)
                }
                Err(e) => {
                    logger.warn(None, &format!("{e}"));
                    logger.warn(
                        None,
                        "holding: `bootstrapper status` shows why; `bootstrapper run` tries again",
                    );
                    hold_until_stopped(&shutdown)
                }
                Ok(_) => {
                    logger.info(None, "holding until SIGTERM");
                    hold_until_stopped(&shutdown)
                }
            }
        }
    }
}

/// The entrypoint's idle: a stop request is the normal end of the pod's life.
fn hold_until_stopped(shutdown: &Shutdown) -> Result<i32> {
    shutdown.wait(None);
    Ok(exit::OK)
}

fn validate(loaded: &Loaded) -> Result<i32> {
    load::check(loaded, &Default::default()).map_err(Error::Input)?;
    for warning in load::warnings(loaded) {
        eprintln!("warning: {warning}");
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
            Problem::new(format!("no step `{step}` in the workflow or the journal"))
                .hint(format!("steps are: {}", names.join(", "))),
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
