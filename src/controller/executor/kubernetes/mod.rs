//! The `kubernetes` executor: each operation a Kubernetes Job, its params a per-cluster
//! Secret. [`job`] builds the objects, as pure functions of the operation and the settings;
//! [`status`] reads how far a Job has come; [`executor`] sends them and [`follow`] watches
//! them.

pub mod executor;
pub mod follow;
pub mod job;
pub mod logs;
pub mod results;
pub mod status;

pub use executor::{Kube, KubeConfig};

use crate::workflow::file::Workflow;

/// The steps of `workflow` whose state would be a local file: in a Job's emptyDir it is
/// lost when the pod ends, so the next operation would apply (or destroy) from nothing. A
/// step is local when it passes no `backend_config` and its module, in the workflow's
/// `image_dir`, names no backend; a module that cannot be found there (a templated path, a
/// git source) is not judged.
pub fn local_state_steps(workflow: &Workflow) -> Vec<String> {
    let Some(image_dir) = &workflow.source.image_dir else {
        return Vec::new();
    };
    if image_dir.text.contains("{{") || image_dir.text.contains("{%") {
        return Vec::new();
    }
    let base = workflow.path.parent().unwrap_or(std::path::Path::new("."));
    let image = base.join(&image_dir.text);
    workflow
        .steps
        .iter()
        .filter(|step| step.backend_config.is_empty() && !step.dir.text.contains("{{"))
        .filter(|step| {
            let module = image.join(&step.dir.text);
            module.is_dir() && crate::workflow::module_vars::keeps_state_locally(&module)
        })
        .map(|step| step.name.clone())
        .collect()
}

/// `serve --executor kubernetes`'s own options.
#[derive(Debug, Clone)]
pub struct Options {
    pub namespace: String,
    pub job_template: std::path::PathBuf,
    pub kueue_queue: Option<String>,
    pub job_ttl: std::time::Duration,
    pub poll: std::time::Duration,
    pub pending_timeout: std::time::Duration,
    pub request_timeout: std::time::Duration,
}

/// What `serve` passes on to every operation, whatever runs it.
#[derive(Debug, Clone)]
pub struct Common {
    /// Where `clusters/<id>/` live.
    pub root: std::path::PathBuf,
    pub terraform: std::path::PathBuf,
    pub grace: std::time::Duration,
    pub operation_timeout: std::time::Duration,
    pub log_format: crate::base::log::Format,
}

/// The executor `serve` runs with, once the workflow is known to keep no state in a Job's
/// emptyDir and the Job template reads: either refusal is an input error (exit 2).
pub fn executor_for(
    options: &Options,
    workflow: &Workflow,
    workflow_path: &std::path::Path,
    serve: &Common,
) -> crate::base::error::Result<Kube> {
    use crate::base::error::{Problem, Problems};
    let mut problems = Problems::default();
    for step in local_state_steps(workflow) {
        problems.push(
            Problem::new(format!(
                "step `{step}` keeps its state in a local file, which a Job's emptyDir loses when the pod ends: the next operation would not know its resources"
            ))
            .hint("give the step's module a remote backend (a `backend` block and `backend_config`), or serve with --executor local"),
        );
    }
    let template = job::read_template(&options.job_template)
        .map_err(|e| problems.push(Problem::new(e.to_string())));
    problems.into_result()?;
    let template = template.expect("no problems");
    Ok(Kube::new(KubeConfig {
        settings: job::JobSettings {
            namespace: options.namespace.clone(),
            template,
            workflow_path: workflow_path.display().to_string(),
            terraform: serve.terraform.display().to_string(),
            grace: serve.grace,
            operation_timeout: serve.operation_timeout,
            ttl_after_finished: options.job_ttl,
            kueue_queue: options.kueue_queue.clone(),
            log_format: serve.log_format,
        },
        root: serve.root.clone(),
        poll: options.poll,
        pending_timeout: options.pending_timeout,
        request_timeout: options.request_timeout,
    }))
}
