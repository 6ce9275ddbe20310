//! The workflow file: `[source]`, `[settings]` and the ordered `[[step]]` list, loaded from
//! TOML with every string kept as an unrendered template and its position in the file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::base::error::{Location, Problem, Problems};

/// The default `settings.min_free_space`: a state of a few thousand resources, twice over.
pub const DEFAULT_MIN_FREE: u64 = 64 * crate::base::size::MIB;

/// A string from the workflow file, still to be rendered, and where it was written.
#[derive(Debug, Clone)]
pub struct Template {
    pub text: String,
    pub origin: Location,
}

#[derive(Debug, Clone)]
pub struct Workflow {
    pub path: PathBuf,
    /// Relative paths in the file (`vars`, `image_dir`) are relative to this directory.
    pub base_dir: PathBuf,
    pub source: Source,
    pub settings: Settings,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone)]
pub struct Source {
    /// Where the code lives, relative to `--root`.
    pub dir: Template,
    pub image_dir: Option<Template>,
    pub git_url: Option<Template>,
    pub git_ref: Option<Template>,
    /// Directories put into the code tree with it, in the same atomic copy or clone.
    pub overlays: Vec<Overlay>,
}

/// A directory that ships beside the workflow (in the image), not with the Terraform tree,
/// but whose module a step applies like any other: `from` is copied to `into` in the code.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// Relative to the workflow file's directory, or absolute.
    pub from: Template,
    /// Relative to the code directory; it must not be there already.
    pub into: Template,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub lock_timeout: Duration,
    pub retry: Retry,
    /// No terraform that writes state starts with less than this free on the root (bytes).
    pub min_free_space: u64,
    /// At most this many steps run at once.
    pub parallelism: usize,
}

/// How many steps run at once unless the workflow or the command line says otherwise.
pub const DEFAULT_PARALLELISM: usize = 4;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lock_timeout: Duration::from_secs(300),
            retry: Retry::default(),
            min_free_space: DEFAULT_MIN_FREE,
            parallelism: DEFAULT_PARALLELISM,
        }
    }
}

/// How a failed apply or destroy is tried again: `retries` more times, waiting `delay`, then
/// twice as long each time, never more than [`Retry::MAX_DELAY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub retries: u32,
    pub delay: Duration,
}

impl Retry {
    pub const MAX_DELAY: Duration = Duration::from_secs(300);

    /// The wait before retry number `n` (1-based).
    pub fn delay_before(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1));
        self.delay.saturating_mul(factor).min(Self::MAX_DELAY)
    }
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            retries: 3,
            delay: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub location: Location,
    pub dir: Template,
    pub workspace: Option<Template>,
    pub backend_config: Vec<(String, Template)>,
    pub vars: Option<Template>,
    pub init_args: Vec<Template>,
    pub apply_args: Vec<Template>,
    pub retry: Retry,
    /// Whether its tfvars are checked against its module's `variable` blocks.
    pub check_variables: bool,
    /// The steps named in `needs`, each where it was written; `None` without a `needs` key,
    /// which is not the same as `needs = []` (see [`crate::workflow::graph`]).
    pub needs: Option<Vec<Need>>,
}

/// A step named in another's `needs`.
#[derive(Debug, Clone)]
pub struct Need {
    pub name: String,
    pub origin: Location,
}

impl Workflow {
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// The index of the step that `name` means, accepting `_` for `-` as templates write it.
    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps
            .iter()
            .position(|s| s.name == name || template_key(&s.name) == name)
    }
}

/// What `bootstrapper reset` calls the code; no step may take this name.
pub const RESET_NAME: &str = "source";

/// The name under which a step's outputs are reachable with Tera's dot syntax.
pub fn template_key(step_name: &str) -> String {
    step_name.replace('-', "_")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    source: SourceSpec,
    #[serde(default)]
    settings: SettingsSpec,
    #[serde(default, rename = "step")]
    steps: Vec<Spanned<StepSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceSpec {
    dir: Spanned<String>,
    image_dir: Option<Spanned<String>>,
    git_url: Option<Spanned<String>>,
    git_ref: Option<Spanned<String>>,
    #[serde(default)]
    overlay: Vec<OverlaySpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverlaySpec {
    from: Spanned<String>,
    into: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SettingsSpec {
    lock_timeout: Option<Spanned<String>>,
    retries: Option<u32>,
    retry_delay: Option<Spanned<String>>,
    min_free_space: Option<Spanned<String>>,
    parallelism: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSpec {
    name: Spanned<String>,
    dir: Spanned<String>,
    workspace: Option<Spanned<String>>,
    #[serde(default)]
    backend_config: BTreeMap<Spanned<String>, Spanned<String>>,
    vars: Option<Spanned<String>>,
    #[serde(default)]
    init_args: Vec<Spanned<String>>,
    #[serde(default)]
    apply_args: Vec<Spanned<String>>,
    retries: Option<u32>,
    retry_delay: Option<Spanned<String>>,
    check_variables: Option<bool>,
    needs: Option<Vec<Spanned<String>>>,
}

/// Reads and checks the workflow file; every problem found is reported at once.
pub fn load(path: &Path) -> Result<Workflow, Problems> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Problems::one(
            Problem::new(format!("cannot read the workflow file: {e}"))
                .at(Location::file(path))
                .hint("pass --workflow FILE or set BOOTSTRAPPER_WORKFLOW"),
        )
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Workflow, Problems> {
    let spec: FileSpec = toml::from_str(text).map_err(|e| {
        let location = match e.span() {
            Some(span) => Location::at(path, text, span.start),
            None => Location::file(path),
        };
        Problems::one(Problem::new(e.message().trim().to_string()).at(location))
    })?;
    let base_dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file = Reader { path, text };
    let mut problems = Problems::default();
    let source = file.source(spec.source, &mut problems);
    let (settings, step_retries) = file.settings(spec.settings, &spec.steps, &mut problems);
    let steps = file.steps(spec.steps, step_retries, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Workflow {
        path: path.to_path_buf(),
        base_dir,
        source,
        settings,
        steps,
    })
}

/// The workflow file being read, to place what is read from it.
struct Reader<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Reader<'_> {
    fn at(&self, offset: usize) -> Location {
        Location::at(self.path, self.text, offset)
    }

    fn template(&self, s: Spanned<String>) -> Template {
        Template {
            origin: self.at(s.span().start),
            text: s.into_inner(),
        }
    }

    fn source(&self, spec: SourceSpec, problems: &mut Problems) -> Source {
        let tpl = |s| self.template(s);
        let source = Source {
            dir: tpl(spec.dir),
            image_dir: spec.image_dir.map(tpl),
            git_url: spec.git_url.map(tpl),
            git_ref: spec.git_ref.map(tpl),
            overlays: spec
                .overlay
                .into_iter()
                .map(|o| Overlay {
                    from: tpl(o.from),
                    into: tpl(o.into),
                })
                .collect(),
        };
        if source.dir.text.trim().is_empty() {
            problems.push(
                Problem::new("`source.dir` is empty")
                    .at(source.dir.origin.clone())
                    .hint(
                        "name the directory under --root that holds the code, e.g. dir = \"code\"",
                    ),
            );
        }
        source
    }

    /// The settings, and each step's retries (the settings' unless the step has its own).
    fn settings(
        &self,
        spec: SettingsSpec,
        steps: &[Spanned<StepSpec>],
        problems: &mut Problems,
    ) -> (Settings, Vec<Retry>) {
        let mut settings = Settings::default();
        self.duration(
            "settings.lock_timeout",
            spec.lock_timeout,
            &mut settings.lock_timeout,
            problems,
        );
        self.duration(
            "settings.retry_delay",
            spec.retry_delay,
            &mut settings.retry.delay,
            problems,
        );
        if let Some(retries) = spec.retries {
            settings.retry.retries = retries;
        }
        let mut step_retries = Vec::with_capacity(steps.len());
        for step in steps {
            let mut retry = settings.retry;
            if let Some(retries) = step.get_ref().retries {
                retry.retries = retries;
            }
            self.duration(
                "retry_delay",
                step.get_ref().retry_delay.clone(),
                &mut retry.delay,
                problems,
            );
            step_retries.push(retry);
        }
        if let Some(size) = spec.min_free_space {
            match crate::base::size::parse_size(size.get_ref()) {
                Ok(bytes) => settings.min_free_space = bytes,
                Err(e) => problems.push(
                    Problem::new(format!("`settings.min_free_space`: {e}"))
                        .at(self.at(size.span().start)),
                ),
            }
        }

        if let Some(n) = spec.parallelism {
            match usize::try_from(*n.get_ref()) {
                Ok(n) if n > 0 => settings.parallelism = n,
                _ => problems.push(
                    Problem::new(format!(
                        "`settings.parallelism` = {} is not a number of steps",
                        n.get_ref()
                    ))
                    .at(self.at(n.span().start))
                    .hint("at least 1: how many steps may run at once"),
                ),
            }
        }
        (settings, step_retries)
    }

    fn duration(
        &self,
        field: &str,
        value: Option<Spanned<String>>,
        into: &mut Duration,
        problems: &mut Problems,
    ) {
        if let Some(value) = value {
            match crate::base::clock::parse_duration(value.get_ref()) {
                Ok(d) => *into = d,
                Err(e) => problems
                    .push(Problem::new(format!("`{field}`: {e}")).at(self.at(value.span().start))),
            }
        }
    }

    fn steps(
        &self,
        specs: Vec<Spanned<StepSpec>>,
        retries: Vec<Retry>,
        problems: &mut Problems,
    ) -> Vec<Step> {
        if specs.is_empty() {
            problems.push(
                Problem::new("the workflow has no steps")
                    .at(Location::file(self.path))
                    .hint("add at least one [[step]] table with a name and a dir"),
            );
        }
        let mut seen: HashMap<String, Location> = HashMap::new();
        let mut steps = Vec::with_capacity(specs.len());
        for (step, retry) in specs.into_iter().zip(retries) {
            steps.push(self.step(step, retry, &mut seen, problems));
        }
        steps
    }

    /// One step; `seen` holds the names of those before it, as template keys.
    fn step(
        &self,
        step: Spanned<StepSpec>,
        retry: Retry,
        seen: &mut HashMap<String, Location>,
        problems: &mut Problems,
    ) -> Step {
        let tpl = |s| self.template(s);
        let step_location = self.at(step.span().start);
        let step = step.into_inner();
        let name_location = self.at(step.name.span().start);
        let name = step.name.into_inner();
        if let Some(problem) = check_step_name(&name) {
            problems.push(problem.at(name_location.clone()));
        }
        match seen.get(&template_key(&name)) {
            Some(first) => problems.push(
                Problem::new(format!(
                    "step name `{name}` is used twice (first at {first}); `-` and `_` count as the same"
                ))
                .at(name_location.clone())
                .hint("give every step its own name"),
            ),
            None => {
                seen.insert(template_key(&name), name_location.clone());
            }
        }
        let mut backend_config = Vec::new();
        for (key, value) in step.backend_config {
            let key_location = self.at(key.span().start);
            let key = key.into_inner();
            if key.is_empty() || key.contains('=') || key.starts_with('-') {
                problems.push(
                    Problem::new(format!(
                        "backend_config key `{key}` is not a backend setting"
                    ))
                    .at(key_location)
                    .in_step(&name),
                );
            }
            backend_config.push((key, tpl(value)));
        }
        Step {
            location: step_location,
            dir: tpl(step.dir),
            workspace: step.workspace.map(tpl),
            backend_config,
            vars: step.vars.map(tpl),
            init_args: step.init_args.into_iter().map(tpl).collect(),
            apply_args: step.apply_args.into_iter().map(tpl).collect(),
            retry,
            check_variables: step.check_variables.unwrap_or(true),
            needs: step.needs.map(|needs| {
                needs
                    .into_iter()
                    .map(|n| Need {
                        origin: self.at(n.span().start),
                        name: n.into_inner(),
                    })
                    .collect()
            }),
            name,
        }
    }
}

fn check_step_name(name: &str) -> Option<Problem> {
    if name.is_empty() {
        return Some(Problem::new("a step has an empty name"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Some(
            Problem::new(format!(
                "step name `{name}` has characters other than letters, digits, `-` and `_`"
            ))
            .hint("step names become directory names and template keys"),
        );
    }
    if name == RESET_NAME {
        return Some(
            Problem::new(format!(
                "step name `{name}` is reserved: `bootstrapper reset {name}` means the code"
            ))
            .hint("give the step another name"),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Workflow, Problems> {
        parse(Path::new("wf/demo.toml"), text)
    }

    #[test]
    fn a_workflow_loads_in_order_with_positions() {
        let wf = parse_str(
            r#"
[source]
dir = "code"

[[step]]
name = "control-network"
dir = "cn"

[[step]]
name = "network"
dir = "net"
workspace = "{{ params.cluster_id }}"
backend_config = { conn_str = "{{ steps.control_network.outputs.conn_str }}" }
"#,
        )
        .unwrap();
        assert_eq!(wf.base_dir, Path::new("wf"));
        let names: Vec<_> = wf.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["control-network", "network"]);
        assert_eq!(
            wf.steps[1].workspace.as_ref().unwrap().origin.line,
            Some((12, 13))
        );
        assert_eq!(wf.step_index("control_network"), Some(0));
    }

    #[test]
    fn retries_default_from_settings_and_back_off() {
        let wf = parse_str(
            "[source]\ndir = \"c\"\n[settings]\nretries = 5\nretry_delay = \"2s\"\n[[step]]\nname = \"a\"\ndir = \"a\"\n[[step]]\nname = \"b\"\ndir = \"b\"\nretries = 0\n",
        )
        .unwrap();
        assert_eq!(
            wf.steps[0].retry,
            Retry {
                retries: 5,
                delay: Duration::from_secs(2)
            }
        );
        assert_eq!(wf.steps[1].retry.retries, 0);
        let r = wf.steps[0].retry;
        assert_eq!(r.delay_before(1), Duration::from_secs(2));
        assert_eq!(r.delay_before(3), Duration::from_secs(8));
        assert_eq!(r.delay_before(30), Retry::MAX_DELAY);
    }

    #[test]
    fn syntax_errors_point_at_line_and_column() {
        let err = parse_str("[source]\ndir = \"code\n").unwrap_err();
        assert_eq!(err.0.len(), 1);
        let location = err.0[0].location.as_ref().unwrap();
        assert_eq!(location.line.unwrap().0, 2, "{err}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = parse_str(
            "[source]\ndir = \"c\"\n[[step]]\nname = \"a\"\ndir = \"a\"\nworkspaces = \"x\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("workspaces"), "{err}");
        assert_eq!(err.0[0].location.as_ref().unwrap().line.unwrap().0, 6);
    }

    #[test]
    fn every_structural_problem_is_reported_at_once() {
        let err = parse_str(
            "[source]\ndir = \"\"\n[[step]]\nname = \"a b\"\ndir = \"a\"\n[[step]]\nname = \"x-y\"\ndir = \"a\"\n[[step]]\nname = \"x_y\"\ndir = \"b\"\n",
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
    }
}
