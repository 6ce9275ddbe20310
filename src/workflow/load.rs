//! Loading and checking everything before anything runs: the workflow, the params, every
//! template of every step, and the journal, with every problem reported at once.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::base::error::{Error, Problems, Result};
use crate::base::secrets::Redactor;
use crate::workflow::file::Workflow;
use crate::workflow::render::{Outputs, RenderedSource, RenderedStep, Renderer};

/// A workflow with its params and environment, parsed and ready to render.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub workflow: Workflow,
    pub params: Value,
    pub env: Vec<(String, String)>,
    pub redactor: Redactor,
}

impl Loaded {
    /// The graph of the workflow, its output references read from its templates.
    pub fn graph(&self) -> std::result::Result<crate::workflow::graph::Graph, Problems> {
        let renderer = self.renderer();
        // A step can use outputs of steps listed before it only; one that uses a later
        // step's is reported where templates are rendered, not as a cycle too.
        crate::workflow::graph::Graph::build(&self.workflow, |index| {
            renderer
                .references(index)
                .into_iter()
                .filter(|&j| j < index)
                .collect()
        })
    }

    pub fn renderer(&self) -> Renderer<'_> {
        Renderer::new(&self.workflow, &self.params, &self.env)
    }
}

/// Parses the workflow and every params file (the secret ones last), reporting the problems
/// of all at once. Every value of a secret params file is masked, whatever its name.
pub fn load(workflow: &Path, params: &[PathBuf], secret_params: &[PathBuf]) -> Result<Loaded> {
    let workflow = crate::workflow::file::load(workflow);
    let params = crate::workflow::params::load_all(params, secret_params);
    let (workflow, merged) = match (workflow, params) {
        (Ok(w), Ok(p)) => (w, p),
        (w, p) => {
            let mut problems = Problems::default();
            problems.extend(w.err().unwrap_or_default());
            problems.extend(p.err().unwrap_or_default());
            return Err(Error::Input(problems));
        }
    };
    let env: Vec<(String, String)> = std::env::vars().collect();
    let params = merged.params;
    let redactor = Redactor::from_inputs(&params, &env);
    for secret in &merged.secret {
        redactor.add_named(secret, true);
    }
    Ok(Loaded {
        workflow,
        params,
        env,
        redactor,
    })
}

/// What [`check`] found that is not a problem but that the operator should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub source: RenderedSource,
    /// Every step, rendered with placeholders for the outputs not known yet.
    pub steps: Vec<RenderedStep>,
    /// Checks that could not be made, and why.
    pub notes: Vec<String>,
}

/// Where [`check`] finds the steps' modules, to check their variables.
#[derive(Debug, Clone, Copy)]
pub enum Modules<'a> {
    /// The code under this root if it is there, else the image's tree it would be copied from.
    Under(&'a Path),
    /// The image's tree: no root holds the code.
    Image,
    /// Not now: the command checks them once it has put the code in place.
    Later,
}

/// Renders the source and every step (placeholders standing for outputs not known yet),
/// parsing every rendered tfvars file, and checks the variables each step sets against its
/// module where `modules` says, collecting every problem. When no code is there to check
/// against, a note says so.
pub fn check(
    loaded: &Loaded,
    outputs: &Outputs,
    modules: Modules<'_>,
) -> std::result::Result<Checked, Problems> {
    let renderer = loaded.renderer();
    let mut problems = Problems::default();
    let source = renderer
        .render_source()
        .map_err(|p| problems.extend(p))
        .ok();
    let mut steps = Vec::with_capacity(loaded.workflow.steps.len());
    for index in 0..loaded.workflow.steps.len() {
        match renderer.render_step(index, outputs, true) {
            Ok(step) => steps.push(Some(step)),
            Err(p) => {
                problems.extend(p);
                steps.push(None);
            }
        }
    }
    if let Err(p) = loaded.graph() {
        problems.extend(p);
    }
    let mut notes = Vec::new();
    let root = match modules {
        Modules::Under(root) => Some(root),
        Modules::Image => None,
        Modules::Later => return finish(source, steps, Vec::new(), problems),
    };
    if let Some(source) = &source {
        match find_code(root, source) {
            Ok(code) => problems.extend(check_variables(
                loaded,
                &code,
                steps.iter().map(Option::as_ref),
            )),
            Err(why) => notes.push(format!(
                "the steps' variables were not checked against their modules: {why}"
            )),
        }
    }
    finish(source, steps, notes, problems)
}

fn finish(
    source: Option<RenderedSource>,
    steps: Vec<Option<RenderedStep>>,
    notes: Vec<String>,
    problems: Problems,
) -> std::result::Result<Checked, Problems> {
    match source {
        Some(source) if problems.is_empty() => Ok(Checked {
            source,
            steps: steps.into_iter().flatten().collect(),
            notes,
        }),
        _ => Err(problems),
    }
}

/// Step `index` rendered with `outputs` (placeholders for the others, if `placeholders`):
/// the rendering in `steps`, made with `rendered_with`, when nothing it could use differs,
/// a new one otherwise.
pub fn render_again<'a>(
    loaded: &Loaded,
    steps: &'a [RenderedStep],
    rendered_with: &Outputs,
    index: usize,
    outputs: &Outputs,
    placeholders: bool,
) -> std::result::Result<Cow<'a, RenderedStep>, Problems> {
    let earlier = &loaded.workflow.steps[..index];
    let same = earlier
        .iter()
        .all(|s| outputs.get(&s.name) == rendered_with.get(&s.name));
    match steps.get(index) {
        Some(step) if same && (placeholders || step.unknown_outputs.is_empty()) => {
            Ok(Cow::Borrowed(step))
        }
        _ => loaded
            .renderer()
            .render_step(index, outputs, placeholders)
            .map(Cow::Owned),
    }
}

/// Everything `validate` checks, for a caller that holds a workflow, params and environment
/// in memory (one tenant's request, say): every problem at once, secrets masked since they
/// may quote the rendered text, or the notes of what could not be checked.
pub fn check_inputs(
    workflow: Workflow,
    params: Value,
    env: Vec<(String, String)>,
    root: Option<&Path>,
) -> std::result::Result<Vec<String>, Problems> {
    let redactor = Redactor::from_inputs(&params, &env);
    let loaded = Loaded {
        workflow,
        params,
        env,
        redactor,
    };
    let modules = root.map_or(Modules::Image, Modules::Under);
    match check(&loaded, &Outputs::new(), modules) {
        Ok(checked) => Ok(checked.notes),
        Err(mut problems) => {
            let mask = |text: &mut String| *text = loaded.redactor.mask(text).into_owned();
            for problem in &mut problems.0 {
                mask(&mut problem.message);
                if let Some(hint) = &mut problem.hint {
                    mask(hint);
                }
            }
            Err(problems)
        }
    }
}

/// The code the steps' modules are read from before the command puts it in place: the code
/// under the root if it is there, else the image's tree it would be copied from.
fn find_code(root: Option<&Path>, source: &RenderedSource) -> std::result::Result<PathBuf, String> {
    let placed = root.unwrap_or(Path::new("<root>")).join(&source.dir);
    if root.is_some() && placed.is_dir() {
        return Ok(placed);
    }
    match (&source.image_dir, &source.git_url) {
        (Some(image), _) if image.is_dir() => Ok(image.clone()),
        (_, Some(_)) => Err(format!(
            "the code is not under {} yet; it is cloned on the first run, and checked then",
            placed.display()
        )),
        (Some(image), None) => Err(format!(
            "neither {} nor the image's {} exists",
            placed.display(),
            image.display()
        )),
        (None, None) => Err(format!("{} does not exist", placed.display())),
    }
}

/// Checks each rendered step (`None`: it did not render) against the `variable` blocks of its
/// module under `code`. A step whose directory is not known yet, or is missing, is left to
/// the check of step directories.
pub fn check_variables<'a>(
    loaded: &Loaded,
    code: &Path,
    steps: impl IntoIterator<Item = Option<&'a RenderedStep>>,
) -> Problems {
    let mut problems = Problems::default();
    let source = loaded.renderer().render_source().ok();
    for (step, rendered) in loaded.workflow.steps.iter().zip(steps) {
        let Some(rendered) = rendered else { continue };
        if !step.check_variables || rendered.dir_unknown() {
            continue;
        }
        let mut module = code.join(&rendered.dir);
        if !module.is_dir() {
            // The image's tree, which the code is copied from, lacks what an overlay adds.
            match source.as_ref().and_then(|s| s.overlaid(&rendered.dir)) {
                Some(overlaid) if overlaid.is_dir() => module = overlaid,
                _ => continue,
            }
        }
        let variables = match crate::workflow::module_vars::read(&module) {
            Ok(v) => v,
            Err(p) => {
                problems.extend(p);
                continue;
            }
        };
        let auto_loaded = match crate::workflow::tfvars::auto_loaded(&module) {
            Ok(names) => names,
            Err(p) => {
                problems.extend(p);
                continue;
            }
        };
        let vars = match (&rendered.vars_source, &rendered.vars) {
            (Some(source), Some(text)) => Some(crate::workflow::tfvars::Source {
                step: &step.name,
                template: &source.template,
                template_text: &source.text,
                syntax: source.syntax,
                rendered: text,
            }),
            _ => None,
        };
        let settings = rendered
            .vars_source
            .as_ref()
            .map(|v| v.settings.as_slice())
            .unwrap_or_default();
        let supplied = crate::workflow::module_vars::Supplied {
            env: &loaded.env,
            apply_args: &rendered.apply_args,
            auto_loaded: &auto_loaded,
        };
        problems.extend(crate::workflow::module_vars::check(
            &variables,
            settings,
            vars.as_ref(),
            &supplied,
            &step.name,
            &module,
        ));
    }
    problems
}

/// Warnings that do not stop a run, for `validate` to show. A param no template reads is
/// one: a params file may be shared with other tools.
pub fn warnings(loaded: &Loaded) -> Vec<String> {
    let mut warnings: Vec<String> =
        crate::workflow::reads::unread(&loaded.renderer(), &loaded.params, &[])
            .0
            .iter()
            .map(|p| match &p.hint {
                Some(hint) => format!("{}; {hint}", p.message),
                None => p.message.clone(),
            })
            .collect();
    if let Some(params) = loaded.params.as_object() {
        for (name, value) in params {
            if let Value::String(s) = value {
                if crate::base::secrets::is_secret_name(name)
                    && !s.is_empty()
                    && s.len() < crate::base::secrets::MIN_MASKED_LEN
                {
                    warnings.push(format!(
                        "param `{name}` looks secret but is shorter than {} characters, too short to mask in logs",
                        crate::base::secrets::MIN_MASKED_LEN
                    ));
                }
            }
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A workflow whose image holds a module with one required variable, `region`.
    fn tenant_workflow(dir: &Path, vars: &str) -> Workflow {
        std::fs::create_dir_all(dir.join("image/net")).unwrap();
        std::fs::write(dir.join("image/net/main.tf"), "variable \"region\" {}\n").unwrap();
        std::fs::write(dir.join("net.tfvars.tera"), vars).unwrap();
        let path = dir.join("wf.toml");
        let text = "[source]\ndir = \"code\"\nimage_dir = \"image\"\n[[step]]\nname = \"net\"\ndir = \"net\"\nvars = \"net.tfvars.tera\"\n";
        crate::workflow::file::parse(&path, text).unwrap()
    }

    #[test]
    fn a_param_no_template_reads_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let workflow = tenant_workflow(dir.path(), "region = \"{{ params.region }}\"\n");
        let params = json!({"region": "bj", "regoin": "sh", "replicas": 3});
        let loaded = Loaded {
            redactor: Redactor::from_inputs(&params, &[]),
            workflow,
            params,
            env: Vec::new(),
        };
        let warnings = warnings(&loaded);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("param `regoin` is read by no template"));
        assert!(warnings[0].contains("did you mean `region`?"));
        assert!(warnings[1].contains("param `replicas`"));
    }

    #[test]
    fn check_inputs_answers_a_caller_with_every_problem_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let workflow = tenant_workflow(dir.path(), "regoin = \"{{ params.region }}\"\n");
        let problems = check_inputs(workflow, json!({"region": "bj"}), Vec::new(), None)
            .unwrap_err()
            .to_string();
        assert!(problems.contains("sets `regoin`"), "{problems}");
        assert!(
            problems.contains("required variable `region`"),
            "{problems}"
        );

        // A problem quoting the rendered text quotes no secret.
        let workflow = tenant_workflow(dir.path(), "region = {{ params.api_token }}\n");
        let params = json!({"api_token": "tok-123456"});
        let problems = check_inputs(workflow, params, Vec::new(), None)
            .unwrap_err()
            .to_string();
        assert!(
            problems.contains("renders as: region = ********"),
            "{problems}"
        );
        assert!(!problems.contains("tok-123456"), "{problems}");

        let workflow = tenant_workflow(dir.path(), "region = \"{{ params.region }}\"\n");
        let notes = check_inputs(workflow, json!({"region": "bj"}), Vec::new(), None).unwrap();
        assert!(notes.is_empty(), "{notes:?}");

        let workflow = tenant_workflow(dir.path(), "");
        let env = vec![("TF_VAR_region".to_string(), "bj".to_string())];
        assert!(check_inputs(workflow, json!({}), env, None).is_ok());
    }
}
