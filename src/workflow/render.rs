//! Rendering a workflow's templates over `params`, `env` and earlier steps' outputs, into the
//! concrete values a step runs with, and the digest of those values.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::base::error::{Location, Problem, Problems};
use crate::workflow::file::{template_key, Step, Template, Workflow};
use crate::workflow::tfvars::{self, Setting, Syntax};

/// The outputs of the steps known so far, by step name.
pub type Outputs = BTreeMap<String, Map<String, Value>>;

/// What the engine knows of an output that has not been produced yet.
pub fn placeholder(step: &str, output: &str) -> String {
    format!("<known after apply: steps.{step}.outputs.{output}>")
}

/// The vars template a step was rendered from, and what its rendered text sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarsSource {
    pub template: PathBuf,
    pub text: String,
    pub syntax: Syntax,
    pub settings: Vec<Setting>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedSource {
    /// Relative to the root, checked to stay inside it.
    pub dir: PathBuf,
    /// Absolute or relative to the current directory (resolved against the workflow's).
    pub image_dir: Option<PathBuf>,
    pub git_url: Option<String>,
    pub git_ref: Option<String>,
    pub overlays: Vec<RenderedOverlay>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedOverlay {
    /// An existing directory, resolved against the workflow's.
    pub from: PathBuf,
    /// Relative to the code directory, checked to stay inside it.
    pub into: PathBuf,
}

impl RenderedSource {
    /// Where the module of a step in `dir` (relative to the code) is read from before the
    /// code is in place: in an overlay's source when the overlay puts it there.
    pub fn overlaid(&self, dir: &Path) -> Option<PathBuf> {
        self.overlays.iter().find_map(|o| {
            let rest = dir.strip_prefix(&o.into).ok()?;
            Some(o.from.join(rest))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedStep {
    pub name: String,
    /// Relative to the code directory, checked to stay inside it.
    pub dir: PathBuf,
    pub workspace: Option<String>,
    pub backend_config: Vec<(String, String)>,
    /// The rendered content of the step's vars file, if it has one.
    pub vars: Option<String>,
    pub vars_source: Option<VarsSource>,
    pub init_args: Vec<String>,
    pub apply_args: Vec<String>,
    /// `step.output` pairs this rendering used placeholders for.
    pub unknown_outputs: Vec<(String, String)>,
}

impl RenderedStep {
    /// Whether the step's directory holds a value not known yet.
    pub fn dir_unknown(&self) -> bool {
        let dir = self.dir.to_string_lossy();
        self.placeholders().iter().any(|p| dir.contains(p.as_str()))
    }

    /// The file the rendered vars are written to, in the step's directory.
    pub fn vars_file(&self) -> &'static str {
        self.vars_source
            .as_ref()
            .map_or(Syntax::Hcl, |v| v.syntax)
            .file_name()
    }

    /// The placeholders standing in this rendering for outputs not known yet.
    pub fn placeholders(&self) -> Vec<String> {
        self.unknown_outputs
            .iter()
            .map(|(step, output)| placeholder(step, output))
            .collect()
    }

    /// A digest per input, so that a changed one can be named.
    pub fn inputs(&self, code: Option<&str>) -> BTreeMap<String, String> {
        let mut inputs = BTreeMap::new();
        let mut put = |name: &str, parts: &[&str]| {
            let mut h = Sha256::new();
            for part in parts {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
            inputs.insert(name.to_string(), hex(&h.finalize()));
        };
        put("dir", &[&self.dir.to_string_lossy()]);
        put("workspace", &[self.workspace.as_deref().unwrap_or("")]);
        let backend: Vec<String> = self
            .backend_config
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        put(
            "backend_config",
            &backend.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        put("vars", &[self.vars.as_deref().unwrap_or("")]);
        put(
            "init_args",
            &self
                .init_args
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        put(
            "apply_args",
            &self
                .apply_args
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        if let Some(code) = code {
            put("code", &[code]);
        }
        inputs
    }
}

/// The digest of a set of input digests.
pub fn digest(inputs: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (name, value) in inputs {
        h.update(name.as_bytes());
        h.update(b"=");
        h.update(value.as_bytes());
        h.update(b"\n");
    }
    hex(&h.finalize())
}

/// The names of the inputs that differ between two sets of digests.
pub fn changed_inputs(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<String> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    names
        .into_iter()
        .filter(|n| old.get(*n) != new.get(*n))
        .cloned()
        .collect()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Renders a workflow's templates; holds the parts of the context that do not change.
pub struct Renderer<'w> {
    workflow: &'w Workflow,
    params: Value,
    env: Map<String, Value>,
}

impl<'w> Renderer<'w> {
    pub fn new(workflow: &'w Workflow, params: &Value, env: &[(String, String)]) -> Self {
        Renderer {
            workflow,
            params: params.clone(),
            env: env
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        }
    }

    pub fn render_source(&self) -> Result<RenderedSource, Problems> {
        let source = &self.workflow.source;
        let mut problems = Problems::default();
        let context = self.context(&Map::new());
        let mut render = |t: &Template| match render_str(&t.text, &context) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(self.template_problem(t.origin.clone(), None, &e));
                None
            }
        };
        let dir = render(&source.dir);
        let image_dir = source.image_dir.as_ref().map(&mut render);
        let git_url = source.git_url.as_ref().map(&mut render);
        let git_ref = source.git_ref.as_ref().map(&mut render);
        let dir = dir.and_then(|d| match inside(&d) {
            Ok(p) => Some(p),
            Err(why) => {
                problems.push(
                    Problem::new(format!("`source.dir` = `{d}` {why}"))
                        .at(source.dir.origin.clone())
                        .hint("name a directory below --root, like \"code\""),
                );
                None
            }
        });
        let overlays = self.render_overlays(&context, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        let non_empty = |s: Option<Option<String>>| s.flatten().filter(|s| !s.trim().is_empty());
        Ok(RenderedSource {
            dir: dir.expect("checked above"),
            image_dir: non_empty(image_dir).map(|d| self.workflow.base_dir.join(d)),
            git_url: non_empty(git_url),
            git_ref: non_empty(git_ref),
            overlays,
        })
    }

    /// Each overlay's `from` must be a directory, and its `into` a place of its own inside the
    /// code: not the code itself, not inside or around another overlay.
    fn render_overlays(
        &self,
        context: &tera::Context,
        problems: &mut Problems,
    ) -> Vec<RenderedOverlay> {
        let mut overlays: Vec<RenderedOverlay> = Vec::new();
        for overlay in &self.workflow.source.overlays {
            let mut render = |t: &Template| match render_str(&t.text, context) {
                Ok(s) => Some(s),
                Err(e) => {
                    problems.push(self.template_problem(t.origin.clone(), None, &e));
                    None
                }
            };
            let (Some(from), Some(into)) = (render(&overlay.from), render(&overlay.into)) else {
                continue;
            };
            let from = self.workflow.base_dir.join(from.trim());
            if !from.is_dir() {
                problems.push(
                    Problem::new(format!(
                        "`source.overlay` from `{}` is not a directory",
                        from.display()
                    ))
                    .at(overlay.from.origin.clone())
                    .hint("`from` is relative to the workflow file's directory"),
                );
            }
            let into = match inside(&into) {
                Ok(p) if p == Path::new(".") => Err("is the code directory itself"),
                other => other,
            };
            let into = match into {
                Ok(into) => into,
                Err(why) => {
                    problems.push(
                        Problem::new(format!("`source.overlay` into `{into:?}` {why}"))
                            .at(overlay.into.origin.clone())
                            .hint("name a new directory inside the code, like \"bootstrapper-control-plane\""),
                    );
                    continue;
                }
            };
            if let Some(other) = overlays
                .iter()
                .find(|o| o.into.starts_with(&into) || into.starts_with(&o.into))
            {
                problems.push(
                    Problem::new(format!(
                        "`source.overlay` into `{}` overlaps the overlay into `{}`",
                        into.display(),
                        other.into.display()
                    ))
                    .at(overlay.into.origin.clone())
                    .hint("give every overlay a directory of its own"),
                );
                continue;
            }
            overlays.push(RenderedOverlay { from, into });
        }
        overlays
    }

    /// Every template of the workflow: the source's strings, each step's, and each step's
    /// vars template when its path renders and it can be read (else rendering reports it).
    pub fn template_texts(&self) -> Vec<String> {
        let source = &self.workflow.source;
        let mut texts: Vec<String> = std::iter::once(&source.dir)
            .chain(source.image_dir.iter())
            .chain(source.git_url.iter())
            .chain(source.git_ref.iter())
            .chain(source.overlays.iter().flat_map(|o| [&o.from, &o.into]))
            .chain(self.workflow.steps.iter().flat_map(step_templates))
            .map(|t| t.text.clone())
            .collect();
        let context = self.context(&Map::new());
        for vars in self.workflow.steps.iter().filter_map(|s| s.vars.as_ref()) {
            if let Ok(path) = render_str(&vars.text, &context) {
                if let Ok(text) = read_template(&self.workflow.base_dir.join(path)) {
                    texts.push(text);
                }
            }
        }
        texts
    }

    /// The steps whose outputs step `index` uses, in its workflow strings or its vars
    /// template. A name that is no step, or a template that cannot be read, is left to
    /// [`Renderer::render_step`] to report.
    pub fn references(&self, index: usize) -> BTreeSet<usize> {
        let step = &self.workflow.steps[index];
        let mut texts: Vec<String> = step_templates(step).map(|t| t.text.clone()).collect();
        if let Some(t) = &step.vars {
            if let Ok(path) = render_str(&t.text, &self.context(&Map::new())) {
                if let Ok(text) = read_template(&self.workflow.base_dir.join(path)) {
                    texts.push(text);
                }
            }
        }
        texts
            .iter()
            .flat_map(|text| output_refs(text))
            .filter_map(|r| self.workflow.step_index(&r.step))
            .collect()
    }

    /// Renders step `index`. Outputs of earlier steps come from `outputs`; when
    /// `placeholders` is set, an output not known yet renders as [`placeholder`] instead of
    /// failing, as `validate` and `plan` need.
    pub fn render_step(
        &self,
        index: usize,
        outputs: &Outputs,
        placeholders: bool,
    ) -> Result<RenderedStep, Problems> {
        let step = &self.workflow.steps[index];
        let mut problems = Problems::default();
        let vars_template = self.read_vars_template(step, &mut problems);
        let referenced = self.referenced_outputs(index, vars_template.as_ref(), &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        let (steps, unknown_outputs) =
            self.earlier_outputs(index, outputs, placeholders, &referenced);
        let context = self.context(&steps);
        let strings = self.render_strings(step, &context, vars_template.as_ref(), &mut problems);
        let dir = checked_dir(step, strings.dir, &mut problems);
        let workspace = checked_workspace(step, strings.workspace.flatten(), &mut problems);
        let vars_source = checked_vars(
            step,
            vars_template.as_ref(),
            strings.vars.as_deref(),
            &unknown_outputs,
            &mut problems,
        );
        if !problems.is_empty() {
            return Err(problems);
        }
        let all = |v: Vec<Option<String>>| v.into_iter().map(|s| s.expect("no problems")).collect();
        Ok(RenderedStep {
            name: step.name.clone(),
            dir: dir.expect("no problems"),
            workspace,
            backend_config: strings
                .backend_config
                .into_iter()
                .map(|(k, v)| (k, v.expect("no problems")))
                .collect(),
            vars: strings.vars,
            vars_source,
            init_args: all(strings.init_args),
            apply_args: all(strings.apply_args),
            unknown_outputs,
        })
    }

    /// The step's vars template, read from the path its `vars` renders to (with no outputs:
    /// the path cannot depend on them), and that path.
    fn read_vars_template(
        &self,
        step: &Step,
        problems: &mut Problems,
    ) -> Option<(PathBuf, String)> {
        let t = step.vars.as_ref()?;
        match render_str(&t.text, &self.context(&Map::new())) {
            Ok(path) => {
                let path = self.workflow.base_dir.join(path);
                match read_template(&path) {
                    Ok(text) => Some((path, text)),
                    Err(e) => {
                        problems.push(
                            Problem::new(format!(
                                "cannot read the vars template {}: {e}",
                                path.display()
                            ))
                            .at(t.origin.clone())
                            .in_step(&step.name)
                            .hint("`vars` is relative to the workflow file's directory"),
                        );
                        None
                    }
                }
            }
            Err(e) => {
                problems.push(self.template_problem(t.origin.clone(), Some(&step.name), &e));
                None
            }
        }
    }

    /// The outputs step `index` uses, by the index of the step that makes them.
    fn referenced_outputs(
        &self,
        index: usize,
        vars_template: Option<&(PathBuf, String)>,
        problems: &mut Problems,
    ) -> BTreeMap<usize, BTreeSet<String>> {
        let step = &self.workflow.steps[index];
        // Every output reference in the step, checked against the step order.
        let mut texts: Vec<(&str, Location)> = step_templates(step)
            .map(|t| (t.text.as_str(), t.origin.clone()))
            .collect();
        if let Some((path, text)) = vars_template {
            texts.push((text.as_str(), Location::file(path)));
        }
        let mut referenced: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
        for (text, origin) in &texts {
            for reference in output_refs(text) {
                match self.workflow.step_index(&reference.step) {
                    Some(j) if j < index => {
                        referenced.entry(j).or_default().extend(reference.output);
                    }
                    Some(j) => problems.push(
                        Problem::new(format!(
                            "uses an output of step `{}`, which runs {} it",
                            self.workflow.steps[j].name,
                            if j == index {
                                "as this very step, not before"
                            } else {
                                "after"
                            }
                        ))
                        .at(origin.clone())
                        .in_step(&step.name)
                        .hint("a step can only use outputs of steps listed before it"),
                    ),
                    None => problems.push(
                        Problem::new(format!(
                            "uses outputs of `{}`, which is not a step of this workflow",
                            reference.step
                        ))
                        .at(origin.clone())
                        .in_step(&step.name)
                        .hint(format!("steps are: {}", self.step_names())),
                    ),
                }
            }
        }
        referenced
    }

    /// The `steps` a template of step `index` sees, and the `step.output` pairs in it that
    /// are placeholders.
    fn earlier_outputs(
        &self,
        index: usize,
        outputs: &Outputs,
        placeholders: bool,
        referenced: &BTreeMap<usize, BTreeSet<String>>,
    ) -> (Map<String, Value>, Vec<(String, String)>) {
        let mut unknown_outputs = Vec::new();
        let mut steps = Map::new();
        for (j, earlier) in self.workflow.steps[..index].iter().enumerate() {
            let known = outputs.get(&earlier.name);
            let mut values = known.cloned().unwrap_or_default();
            if placeholders {
                for output in referenced.get(&j).into_iter().flatten() {
                    if !values.contains_key(output) && known.is_none() {
                        unknown_outputs.push((earlier.name.clone(), output.clone()));
                        values.insert(
                            output.clone(),
                            Value::String(placeholder(&earlier.name, output)),
                        );
                    }
                }
            }
            if known.is_none() && !placeholders {
                continue;
            }
            let entry = Value::Object(Map::from_iter([(
                "outputs".to_string(),
                Value::Object(values),
            )]));
            steps.insert(earlier.name.clone(), entry.clone());
            steps.insert(template_key(&earlier.name), entry);
        }
        (steps, unknown_outputs)
    }

    /// Every template of the step rendered in `context`; one that fails is `None`, with its
    /// problem in `problems`.
    fn render_strings(
        &self,
        step: &Step,
        context: &tera::Context,
        vars_template: Option<&(PathBuf, String)>,
        problems: &mut Problems,
    ) -> StepStrings {
        let mut render = |t: &Template| match render_str(&t.text, context) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(self.template_problem(t.origin.clone(), Some(&step.name), &e));
                None
            }
        };
        let dir = render(&step.dir);
        let workspace = step.workspace.as_ref().map(&mut render);
        let backend_config: Vec<_> = step
            .backend_config
            .iter()
            .map(|(k, t)| (k.clone(), render(t)))
            .collect();
        let init_args: Vec<_> = step.init_args.iter().map(&mut render).collect();
        let apply_args: Vec<_> = step.apply_args.iter().map(&mut render).collect();
        let vars = vars_template.and_then(|(path, text)| match render_str(text, context) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(self.template_problem(Location::file(path), Some(&step.name), &e));
                None
            }
        });
        StepStrings {
            dir,
            workspace,
            backend_config,
            init_args,
            apply_args,
            vars,
        }
    }

    fn context(&self, steps: &Map<String, Value>) -> tera::Context {
        let mut context = tera::Context::new();
        context.insert("params", &self.params);
        context.insert("env", &self.env);
        context.insert("steps", steps);
        context
    }

    fn step_names(&self) -> String {
        let names: Vec<&str> = self
            .workflow
            .steps
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        names.join(", ")
    }

    fn template_problem(&self, origin: Location, step: Option<&str>, e: &tera::Error) -> Problem {
        let message = tera_message(e);
        let mut problem = match unknown_variable(&message) {
            Some(var) => {
                let problem = Problem::new(format!("unknown template variable `{var}`"));
                match self.hint_for(&var) {
                    Some(hint) => problem.hint(hint),
                    None => problem,
                }
            }
            None => Problem::new(format!("template error: {message}")),
        }
        .at(origin);
        if let Some(step) = step {
            problem = problem.in_step(step);
        }
        problem
    }

    fn hint_for(&self, var: &str) -> Option<String> {
        let keys = |v: &Map<String, Value>| {
            let mut keys: Vec<&str> = v.keys().map(String::as_str).collect();
            keys.sort_unstable();
            keys.join(", ")
        };
        if var.starts_with("params") {
            let params = self.params.as_object()?;
            Some(if params.is_empty() {
                "the params file is empty; add the key there".to_string()
            } else {
                format!(
                    "add it to the params file, or use `| default(value=...)`; params has: {}",
                    keys(params)
                )
            })
        } else if var.starts_with("steps") {
            Some("write steps.<step>.outputs.<output>, with `_` for `-` in step names".to_string())
        } else if var.starts_with("env") {
            Some("set that environment variable, or use `| default(value=...)`".to_string())
        } else {
            Some(
                "templates can use `params`, `env` and `steps.<step>.outputs.<output>`".to_string(),
            )
        }
    }
}

/// A step's templates as rendered, each `None` where rendering failed.
struct StepStrings {
    dir: Option<String>,
    workspace: Option<Option<String>>,
    backend_config: Vec<(String, Option<String>)>,
    init_args: Vec<Option<String>>,
    apply_args: Vec<Option<String>>,
    vars: Option<String>,
}

/// The rendered `dir`, checked to stay inside the code.
fn checked_dir(step: &Step, dir: Option<String>, problems: &mut Problems) -> Option<PathBuf> {
    dir.and_then(|d| match inside(&d) {
        Ok(p) => Some(p),
        Err(why) => {
            problems.push(
                Problem::new(format!("`dir` = `{d}` {why}"))
                    .at(step.dir.origin.clone())
                    .in_step(&step.name)
                    .hint("a step's dir is relative to the code directory and stays inside it"),
            );
            None
        }
    })
}

/// The rendered `workspace`, checked to be a name terraform takes.
fn checked_workspace(
    step: &Step,
    workspace: Option<String>,
    problems: &mut Problems,
) -> Option<String> {
    if let Some(ws) = &workspace {
        if let Some(why) = bad_workspace(ws) {
            let origin = step.workspace.as_ref().map(|t| t.origin.clone());
            let mut problem = Problem::new(format!("workspace `{ws}` {why}")).in_step(&step.name);
            if let Some(origin) = origin {
                problem = problem.at(origin);
            }
            problems.push(problem.hint("a workspace name is letters, digits, `-`, `_` and `.`"));
        }
    }
    workspace
}

/// What the rendered vars set, checked in their syntax.
fn checked_vars(
    step: &Step,
    vars_template: Option<&(PathBuf, String)>,
    vars: Option<&str>,
    unknown_outputs: &[(String, String)],
    problems: &mut Problems,
) -> Option<VarsSource> {
    let ((path, text), rendered) = vars_template.zip(vars)?;
    let syntax = Syntax::of_name(path);
    let placeholders: Vec<String> = unknown_outputs
        .iter()
        .map(|(step, output)| placeholder(step, output))
        .collect();
    let source = tfvars::Source {
        step: &step.name,
        template: path,
        template_text: text,
        syntax,
        rendered,
    };
    match source.check(&placeholders) {
        Ok(settings) => Some(VarsSource {
            template: path.clone(),
            text: text.clone(),
            syntax,
            settings,
        }),
        Err(p) => {
            problems.extend(p);
            None
        }
    }
}

/// Every template string of a step, apart from the vars file.
fn step_templates(step: &Step) -> impl Iterator<Item = &Template> {
    std::iter::once(&step.dir)
        .chain(step.workspace.iter())
        .chain(step.backend_config.iter().map(|(_, t)| t))
        .chain(step.vars.iter())
        .chain(step.init_args.iter())
        .chain(step.apply_args.iter())
}

/// Far more than any tfvars template; a larger file is a wrong path, not a template.
const MAX_TEMPLATE: u64 = 4 << 20;

/// Reads a vars template; a device, FIFO or directory named by mistake (`/dev/zero`,
/// `/dev/stdin`) would hang or exhaust memory, so only a regular file of sane size is read.
fn read_template(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    // Checked before opening: opening a FIFO blocks until someone writes to it.
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > MAX_TEMPLATE {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("larger than {} MiB", MAX_TEMPLATE >> 20),
        ));
    }
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_TEMPLATE)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// The name Tera's own one-off rendering gives a template, which [`tera_message`] strips.
const ONE_OFF: &str = "__tera_one_off";

/// Renders `text`, compiling it once per process: a command renders each step's templates
/// several times (checking, then running), and compiling is most of a restart's work.
fn render_str(text: &str, context: &tera::Context) -> Result<String, tera::Error> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    // Keyed by the template's text, so it holds no more than the workflows' templates.
    static COMPILED: OnceLock<Mutex<HashMap<String, tera::Tera>>> = OnceLock::new();
    if !text.contains("{{") && !text.contains("{%") && !text.contains("{#") {
        return Ok(text.to_string());
    }
    let compiled = COMPILED.get_or_init(Default::default);
    let mut compiled = compiled.lock().unwrap_or_else(|e| e.into_inner());
    if !compiled.contains_key(text) {
        let mut tera = tera::Tera::default();
        tera.add_raw_template(ONE_OFF, text)?;
        compiled.insert(text.to_string(), tera);
    }
    compiled[text].render(ONE_OFF, context)
}

/// Tera's error chain, without its wrapper that only names the one-off template.
fn tera_message(e: &tera::Error) -> String {
    let mut parts = Vec::new();
    let mut current: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = current {
        let text = err.to_string();
        if !text.starts_with(&format!("Failed to render '{ONE_OFF}'"))
            && !text.starts_with(&format!("Failed to parse '{ONE_OFF}'"))
        {
            parts.push(text.replace(&format!(" while rendering '{ONE_OFF}'"), ""));
        }
        current = err.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

fn unknown_variable(message: &str) -> Option<String> {
    let start = message.find("Variable `")? + "Variable `".len();
    let end = message[start..].find('`')? + start;
    message[start..]
        .contains("` not found in context")
        .then(|| message[start..end].to_string())
}

/// Checks that `dir` is a relative path that stays below where it is joined.
pub fn inside(dir: &str) -> Result<PathBuf, &'static str> {
    let path = Path::new(dir.trim());
    if dir.trim().is_empty() {
        return Err("is empty");
    }
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => clean.push(c),
            Component::CurDir => {}
            Component::ParentDir => return Err("climbs out of its tree with `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("is absolute"),
        }
    }
    if clean.as_os_str().is_empty() {
        clean.push(".");
    }
    Ok(clean)
}

fn bad_workspace(ws: &str) -> Option<&'static str> {
    if ws.is_empty() {
        return Some("is empty");
    }
    if ws.starts_with('-') {
        return Some("starts with `-` and would read as an option");
    }
    if !ws
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Some("has characters terraform does not allow in a workspace name");
    }
    None
}

/// A reference to `steps.<step>.outputs[.<output>]` found in a template's text.
#[derive(Debug, PartialEq, Eq)]
struct OutputRef {
    step: String,
    output: Option<String>,
}

/// Finds `steps.NAME.outputs.OUT` and `steps["NAME"].outputs["OUT"]` in template text; a
/// plain scan is enough, since these names are the whole path syntax Tera has.
fn output_refs(text: &str) -> Vec<OutputRef> {
    let mut refs = Vec::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(found) = text[from..].find("steps") {
        let start = from + found;
        from = start + 5;
        let boundary = start == 0 || !is_ident(bytes[start - 1]) && bytes[start - 1] != b'.';
        if !boundary {
            continue;
        }
        let mut pos = from;
        let Some((step, next)) = segment(text, pos) else {
            continue;
        };
        pos = next;
        match segment(text, pos) {
            Some((word, next)) if word == "outputs" => pos = next,
            _ => continue,
        }
        let output = segment(text, pos).map(|(o, _)| o);
        refs.push(OutputRef { step, output });
    }
    refs
}

/// Reads `.ident` or `["name"]` / `['name']` at `pos`; returns the name and the end.
pub(crate) fn segment(text: &str, pos: usize) -> Option<(String, usize)> {
    let bytes = text.as_bytes();
    match bytes.get(pos)? {
        b'.' => {
            let len = bytes[pos + 1..]
                .iter()
                .take_while(|b| is_ident(**b))
                .count();
            (len > 0).then(|| (text[pos + 1..pos + 1 + len].to_string(), pos + 1 + len))
        }
        b'[' => {
            let quote = *bytes.get(pos + 1)?;
            if quote != b'"' && quote != b'\'' {
                return None;
            }
            let close = text[pos + 2..].find(quote as char)? + pos + 2;
            (bytes.get(close + 1) == Some(&b']'))
                .then(|| (text[pos + 2..close].to_string(), close + 2))
        }
        _ => None,
    }
}

pub(crate) fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn workflow(text: &str) -> Workflow {
        crate::workflow::file::parse(Path::new("wf.toml"), text).unwrap()
    }

    const TWO_STEPS: &str = r#"
[source]
dir = "code"
[[step]]
name = "control-network"
dir = "cn"
[[step]]
name = "network"
dir = "net/{{ params.region }}"
workspace = "{{ params.cluster_id }}"
backend_config = { conn_str = "{{ steps.control_network.outputs.conn_str }}" }
"#;

    #[test]
    fn output_references_are_found_in_both_syntaxes() {
        let refs = output_refs(
            r#"{{ steps.a_b.outputs.x }} {{ steps["a-b"].outputs['y'] }} {{ mysteps.c.outputs.z }}"#,
        );
        assert_eq!(
            refs,
            vec![
                OutputRef {
                    step: "a_b".into(),
                    output: Some("x".into())
                },
                OutputRef {
                    step: "a-b".into(),
                    output: Some("y".into())
                },
            ]
        );
    }

    #[test]
    fn a_step_renders_with_known_outputs() {
        let wf = workflow(TWO_STEPS);
        let r = Renderer::new(&wf, &json!({"region": "bj", "cluster_id": "c1"}), &[]);
        let mut outputs = Outputs::new();
        outputs.insert(
            "control-network".into(),
            Map::from_iter([("conn_str".to_string(), json!("postgres://x"))]),
        );
        let step = r.render_step(1, &outputs, false).unwrap();
        assert_eq!(step.dir, Path::new("net/bj"));
        assert_eq!(step.workspace.as_deref(), Some("c1"));
        assert_eq!(
            step.backend_config,
            vec![("conn_str".into(), "postgres://x".into())]
        );
    }

    #[test]
    fn unknown_outputs_render_as_placeholders_only_when_asked() {
        let wf = workflow(TWO_STEPS);
        let r = Renderer::new(&wf, &json!({"region": "bj", "cluster_id": "c1"}), &[]);
        let step = r.render_step(1, &Outputs::new(), true).unwrap();
        assert_eq!(
            step.backend_config[0].1,
            placeholder("control-network", "conn_str")
        );
        assert_eq!(
            step.unknown_outputs,
            vec![("control-network".into(), "conn_str".into())]
        );
        assert!(r.render_step(1, &Outputs::new(), false).is_err());
    }

    #[test]
    fn an_unknown_variable_names_itself_the_step_and_the_place() {
        let wf = workflow(TWO_STEPS);
        let r = Renderer::new(&wf, &json!({"cluster_id": "c1"}), &[]);
        let err = r.render_step(1, &Outputs::new(), true).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("wf.toml:9:7"), "{text}");
        assert!(text.contains("step `network`"), "{text}");
        assert!(text.contains("`params.region`"), "{text}");
    }

    #[test]
    fn a_dir_escaping_the_tree_is_refused() {
        assert!(inside("../etc").is_err());
        assert!(inside("/etc").is_err());
        assert!(inside("a/../../b").is_err());
        assert_eq!(inside("./a/b").unwrap(), Path::new("a/b"));
    }

    #[test]
    fn a_reference_to_a_later_step_is_refused() {
        let wf = workflow(
            "[source]\ndir = \"c\"\n[[step]]\nname = \"a\"\ndir = \"{{ steps.b.outputs.x }}\"\n[[step]]\nname = \"b\"\ndir = \"b\"\n",
        );
        let r = Renderer::new(&wf, &json!({}), &[]);
        let err = r.render_step(0, &Outputs::new(), true).unwrap_err();
        assert!(err.to_string().contains("runs after it"), "{err}");
    }

    #[test]
    fn digests_name_the_input_that_changed() {
        let wf = workflow(TWO_STEPS);
        let mut outputs = Outputs::new();
        outputs.insert(
            "control-network".into(),
            Map::from_iter([("conn_str".to_string(), json!("x"))]),
        );
        let a = Renderer::new(&wf, &json!({"region": "bj", "cluster_id": "c1"}), &[])
            .render_step(1, &outputs, false)
            .unwrap();
        let b = Renderer::new(&wf, &json!({"region": "bj", "cluster_id": "c2"}), &[])
            .render_step(1, &outputs, false)
            .unwrap();
        assert_eq!(
            changed_inputs(&a.inputs(None), &b.inputs(None)),
            vec!["workspace"]
        );
        assert_ne!(digest(&a.inputs(None)), digest(&b.inputs(None)));
    }
}
