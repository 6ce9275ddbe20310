//! The engine's errors. Each carries its exit code, so `main` only has to print and exit.

use std::fmt;
use std::path::{Path, PathBuf};

/// Exit codes of the contract (README.md, "Commands").
pub mod exit {
    pub const OK: i32 = 0;
    pub const STEP_FAILED: i32 = 1;
    pub const BAD_INPUT: i32 = 2;
    /// `diff`: something would change (as terraform's `-detailed-exitcode`). The same
    /// number as [`BAD_INPUT`]: an input error prints no document, a diff always does.
    pub const CHANGES: i32 = 2;
    pub const LOCKED: i32 = 3;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad workflow, params, templates or environment, found before anything ran.
    #[error("{0}")]
    Input(Problems),
    #[error("{root} is locked by another bootstrapper: {holder}\n  hint: wait for it to finish, or check `bootstrapper status`")]
    Locked {
        root: PathBuf,
        /// Who holds it, as the lock file says.
        holder: String,
    },
    #[error("step `{step}` failed: {message}")]
    StepFailed { step: String, message: String },
    /// Several steps that ran at once failed; each error names its step.
    #[error("{} steps failed: {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    StepsFailed(Vec<Error>),
    /// A terraform command of a step failed, and its diagnostics say what kind of failure
    /// it was: one about the configuration is not retried, since no retry can fix it.
    #[error("step `{step}` failed: {message}")]
    TerraformFailed {
        step: String,
        message: String,
        kind: FailureKind,
    },
    /// A signal asked us to stop; the in-flight step was left unfinished.
    #[error("stopped by {name}; unfinished steps run again on the next start")]
    Interrupted { signal: i32, name: &'static str },
    /// Too little room on the root's filesystem for terraform to save a state.
    #[error("only {} free on the filesystem of {}, less than settings.min_free_space ({}): no terraform was started\n  hint: free space on the volume (or grow it), then run again", crate::base::size::human(*free), path.display(), crate::base::size::human(*min))]
    NoSpace { path: PathBuf, free: u64, min: u64 },
    /// The root (the PVC) could not be read or written while working.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input(_) => exit::BAD_INPUT,
            Error::Locked { .. } => exit::LOCKED,
            Error::StepFailed { .. }
            | Error::StepsFailed(_)
            | Error::TerraformFailed { .. }
            | Error::Io { .. }
            | Error::NoSpace { .. } => exit::STEP_FAILED,
            Error::Interrupted { signal, .. } => 128 + signal,
        }
    }

    /// Whether trying the same step again may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            Error::StepFailed { .. } => true,
            Error::TerraformFailed { kind, .. } => *kind != FailureKind::Configuration,
            _ => false,
        }
    }

    /// What kind of terraform failure this was, when terraform's diagnostics told.
    pub fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            Error::TerraformFailed { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// What became of steps that ran at once: a stop request if one came (the steps stopped
    /// for it), else the failure, or every failure when several steps failed.
    pub fn of_steps(mut errors: Vec<Error>) -> Option<Error> {
        if let Some(at) = errors
            .iter()
            .position(|e| matches!(e, Error::Interrupted { .. }))
        {
            return Some(errors.swap_remove(at));
        }
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(Error::StepsFailed(errors)),
        }
    }

    /// One input problem with no position, as an error.
    pub fn input(message: impl Into<String>) -> Self {
        Error::Input(Problems::one(Problem::new(message)))
    }
}

/// What a failed terraform command's diagnostics say went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Every error points at the configuration (a file, no resource): a parse error, an
    /// unsupported argument, a missing variable, an invalid reference. Not retried.
    Configuration,
    /// An error concerns a resource (a provider, an API, a provisioner). Retried.
    Resource,
    /// Terraform printed no diagnostic: it was killed or crashed. Retried.
    NoDiagnostics,
    /// Errors about neither a file nor a resource: the backend, its lock. Retried.
    Other,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Configuration => "configuration",
            FailureKind::Resource => "resource",
            FailureKind::NoDiagnostics => "no diagnostics",
            FailureKind::Other => "other",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a problem is: a file and, when known, a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: Option<(usize, usize)>,
}

impl Location {
    pub fn file(file: &Path) -> Self {
        Location {
            file: file.to_path_buf(),
            line: None,
        }
    }

    /// The location of a byte offset in `text`, which is the content of `file`.
    pub fn at(file: &Path, text: &str, offset: usize) -> Self {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Location {
            file: file.to_path_buf(),
            line: Some((line, col)),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.line {
            write!(f, ":{line}:{col}")?;
        }
        Ok(())
    }
}

/// One thing wrong with the input, with where it is and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub location: Option<Location>,
    pub step: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(message: impl Into<String>) -> Self {
        Problem {
            location: None,
            step: None,
            message: message.into(),
            hint: None,
        }
    }

    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }

    pub fn in_step(mut self, step: &str) -> Self {
        self.step = Some(step.to_string());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: ")?;
        if let Some(location) = &self.location {
            write!(f, "{location}: ")?;
        }
        if let Some(step) = &self.step {
            write!(f, "step `{step}`: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in one pass over the input, so the operator fixes them all at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn one(problem: Problem) -> Self {
        Problems(vec![problem])
    }

    pub fn push(&mut self, problem: Problem) {
        self.0.push(problem);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn extend(&mut self, other: Problems) {
        self.0.extend(other.0);
    }

    /// `Ok(())` when nothing is wrong, else every problem as one error.
    pub fn into_result(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Input(self))
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        if self.0.len() > 1 {
            write!(f, "\n{} problems; nothing was run", self.0.len())?;
        }
        Ok(())
    }
}
