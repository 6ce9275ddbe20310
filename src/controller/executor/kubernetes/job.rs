//! The objects one operation sends to Kubernetes: the cluster's params Secret and the Job
//! that runs the engine once, from an emptyDir root. Pure functions of the operation and the
//! [`JobSettings`], so that every object can be checked against the real schema in tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, KeyToPath, PodSpec, Secret, SecretVolumeSource,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use sha2::{Digest, Sha256};

use crate::base::log::Format;
use crate::controller::cluster::Kind;
use crate::controller::code::CodeChoice;
use crate::controller::executor::Operation;

/// The engine's container in every Job.
pub const CONTAINER: &str = "engine";
/// Where the engine's root (an emptyDir) is mounted: the engine's default `--root`.
pub const ROOT: &str = "/project";
/// Where the params Secret is mounted; the operation's params file is `params.json` in it.
pub const PARAMS_DIR: &str = "/etc/bootstrapper/params";
/// The container's termination-message path: the engine writes its `--result-file` there.
pub const RESULT_FILE: &str = "/dev/termination-log";
/// The engine's exit code for a bad input or a refusal: no new pod would do better.
const EXIT_REFUSED: i32 = 2;
/// How much longer than the engine's grace the kubelet waits before its SIGKILL.
const KUBELET_MARGIN: Duration = Duration::from_secs(15);

/// Labels that every object of this executor carries, and by which it finds them again.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "bootstrapper");
pub const LABEL_CLUSTER: &str = "bootstrapper/cluster";
pub const LABEL_GENERATION: &str = "bootstrapper/generation";
pub const LABEL_KIND: &str = "bootstrapper/kind";
pub const LABEL_ATTEMPT: &str = "bootstrapper/attempt";
/// The reviewed plan an apply applies, when it applies one.
pub const ANNOTATION_REVIEWED: &str = "bootstrapper/reviewed";
/// The code an apply moves the cluster to (`run --code`), for adoption.
pub const ANNOTATION_CODE: &str = "bootstrapper/code";
/// Kueue's queue label; a Job that carries it is created suspended and admitted by Kueue.
pub const KUEUE_QUEUE: &str = "kueue.x-k8s.io/queue-name";
/// Keeps the cluster autoscaler from removing the node under a running operation.
pub const SAFE_TO_EVICT: (&str, &str) = ("cluster-autoscaler.kubernetes.io/safe-to-evict", "false");

/// What every Job is built from, besides its operation.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub namespace: String,
    /// `--job-template`: image, service account, resources, node selector, tolerations,
    /// `envFrom`; one container, the engine's.
    pub template: Job,
    /// The tenant workflow inside the image.
    pub workflow_path: String,
    pub terraform: String,
    /// The engine's own grace to stop its terraform after SIGTERM.
    pub grace: Duration,
    /// `--operation-timeout`: the Job's `activeDeadlineSeconds`.
    pub operation_timeout: Duration,
    /// How long a finished Job stays for its result to be read.
    pub ttl_after_finished: Duration,
    pub kueue_queue: Option<String>,
    pub log_format: Format,
}

/// Why a Job template cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read the Job template {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("the Job template {path} is not YAML: {error}\n  hint: it is a batch/v1 Job manifest")]
    Yaml { path: String, error: String },
    #[error("the Job template {path} is not a batch/v1 Job: {error}")]
    NotAJob { path: String, error: String },
    #[error("the Job template {path} must have exactly one container (the engine's), with an image; it has {containers}")]
    Container { path: String, containers: usize },
}

/// Reads `--job-template FILE`: a batch/v1 Job manifest, read strictly (a misspelled field
/// is refused, not dropped).
pub fn read_template(path: &Path) -> Result<Job, TemplateError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| TemplateError::Read {
        path: shown.clone(),
        error,
    })?;
    parse_template(&text).map_err(|e| match e {
        TemplateError::Yaml { error, .. } => TemplateError::Yaml { path: shown, error },
        TemplateError::NotAJob { error, .. } => TemplateError::NotAJob { path: shown, error },
        TemplateError::Container { containers, .. } => TemplateError::Container {
            path: shown,
            containers,
        },
        e => e,
    })
}

/// [`read_template`] of text.
pub fn parse_template(text: &str) -> Result<Job, TemplateError> {
    let value: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| TemplateError::Yaml {
            path: String::new(),
            error: e.to_string(),
        })?;
    let kind = (value["apiVersion"].as_str(), value["kind"].as_str());
    if kind != (Some("batch/v1"), Some("Job")) {
        return Err(TemplateError::NotAJob {
            path: String::new(),
            error: format!(
                "apiVersion {} and kind {}",
                value["apiVersion"], value["kind"]
            ),
        });
    }
    let job: Job =
        crate::base::strict::from_value(value).map_err(|error| TemplateError::NotAJob {
            path: String::new(),
            error,
        })?;
    let containers = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map_or(0, |s| s.containers.len());
    let has_image = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .is_some_and(|c| c.image.as_deref().is_some_and(|i| !i.is_empty()));
    if containers != 1 || !has_image {
        return Err(TemplateError::Container {
            path: String::new(),
            containers,
        });
    }
    Ok(job)
}

/// The Job's name: `bs-<cluster>-<kind>-<generation>-<attempt>`, at most 63 characters (a
/// label value: the pod carries it as `job-name`). A name that would be longer keeps the
/// start of the cluster id and a digest of all of it, so it stays unique and the same.
pub fn job_name(cluster: &str, generation: u64, kind: Kind, attempt: u32) -> String {
    const MAX: usize = 63;
    let tail = format!("{}-{generation}-{attempt}", kind.as_str());
    let name = format!("bs-{cluster}-{tail}");
    if name.len() <= MAX {
        return name;
    }
    let digest = hex8(cluster);
    let room = MAX - "bs-".len() - 1 - digest.len() - 1 - tail.len();
    let prefix = cluster[..room.min(cluster.len())].trim_end_matches('-');
    format!("bs-{prefix}-{digest}-{tail}")
}

/// The cluster's params Secret's name.
pub fn secret_name(cluster: &str) -> String {
    format!("bs-{cluster}-params")
}

fn hex8(text: &str) -> String {
    Sha256::digest(text.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The labels that say which operation an object belongs to.
pub fn labels(operation: &Operation, attempt: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (LABEL_CLUSTER.to_string(), operation.cluster.clone()),
        (
            LABEL_GENERATION.to_string(),
            operation.generation.to_string(),
        ),
        (LABEL_KIND.to_string(), operation.kind.as_str().to_string()),
        (LABEL_ATTEMPT.to_string(), attempt.to_string()),
    ])
}

/// The file name each kind reads its params from in the Secret: a plan's are its own.
fn params_key(kind: Kind) -> &'static str {
    match kind {
        Kind::Plan => "plan-params.json",
        Kind::Apply | Kind::Destroy => "params.json",
    }
}

/// The cluster's params Secret: the intent's params (`params.json`) and, when a plan is
/// asked for, the plan's (`plan-params.json`). Params never go into a Job's spec or env.
pub fn params_secret(
    namespace: &str,
    cluster: &str,
    params: &serde_json::Value,
    plan_params: Option<&serde_json::Value>,
) -> Secret {
    let mut data = BTreeMap::from([(
        params_key(Kind::Apply).to_string(),
        ByteString(serde_json::to_vec(params).expect("JSON values serialize")),
    )]);
    if let Some(plan) = plan_params {
        data.insert(
            params_key(Kind::Plan).to_string(),
            ByteString(serde_json::to_vec(plan).expect("JSON values serialize")),
        );
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(cluster)),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                (LABEL_CLUSTER.to_string(), cluster.to_string()),
            ])),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        immutable: Some(false),
        data: Some(data),
        ..Default::default()
    }
}

/// The engine's command line for `operation`, as the local executor's but for a fresh root:
/// a destroy destroys every step whatever the (empty) journal says.
pub fn engine_args(settings: &JobSettings, operation: &Operation) -> Vec<String> {
    let mut args = vec![
        "--workflow".to_string(),
        settings.workflow_path.clone(),
        "--params".to_string(),
        format!("{PARAMS_DIR}/{}", params_key(Kind::Apply)),
        "--root".to_string(),
        ROOT.to_string(),
        "--terraform".to_string(),
        settings.terraform.clone(),
        format!("--grace={}s", settings.grace.as_secs()),
        "--log-format".to_string(),
        match settings.log_format {
            Format::Text => "text",
            Format::Json => "json",
        }
        .to_string(),
        format!("--result-file={RESULT_FILE}"),
    ];
    match (operation.kind, operation.reviewed.as_deref()) {
        (Kind::Apply, Some(id)) => args.extend(["run".to_string(), format!("--reviewed={id}")]),
        (Kind::Apply, None) => args.extend(["run".to_string(), "--recreate".to_string()]),
        (Kind::Destroy, _) => args.extend(["destroy".to_string(), "--every-step".to_string()]),
        (Kind::Plan, _) => args.extend([
            "diff".to_string(),
            "--json".to_string(),
            "--every-step".to_string(),
        ]),
    }
    // As the local executor: a plan's code is `current` only (a rollout's review).
    if let (Kind::Apply | Kind::Plan, Some(code)) = (operation.kind, operation.code) {
        args.push(format!("--code={}", code.as_str()));
    }
    args
}

/// The Job that runs `operation` (its `attempt`-th try), from the template.
pub fn job(settings: &JobSettings, operation: &Operation, attempt: u32) -> Job {
    let mut job = settings.template.clone();
    let labels = labels(operation, attempt);
    let name = job_name(
        &operation.cluster,
        operation.generation,
        operation.kind,
        attempt,
    );

    let metadata = &mut job.metadata;
    metadata.name = Some(name);
    metadata.generate_name = None;
    metadata.namespace = Some(settings.namespace.clone());
    let job_labels = metadata.labels.get_or_insert_with(Default::default);
    job_labels.extend(labels.clone());
    if let Some(queue) = &settings.kueue_queue {
        job_labels.insert(KUEUE_QUEUE.to_string(), queue.clone());
    }
    if let Some(id) = &operation.reviewed {
        metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ANNOTATION_REVIEWED.to_string(), id.clone());
    }
    if let Some(code) = operation.code {
        metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ANNOTATION_CODE.to_string(), code.as_str().to_string());
    }

    let spec = job.spec.get_or_insert_with(JobSpec::default);
    spec.backoff_limit = Some(0);
    spec.completions = Some(1);
    spec.parallelism = Some(1);
    spec.active_deadline_seconds = Some(settings.operation_timeout.as_secs().max(1) as i64);
    spec.ttl_seconds_after_finished = Some(settings.ttl_after_finished.as_secs() as i32);
    // A disrupted pod is replaced only once it has fully stopped: never two at once.
    spec.pod_replacement_policy = Some("Failed".to_string());
    spec.pod_failure_policy = Some(PodFailurePolicy {
        rules: vec![
            // Eviction, preemption, a node drain: a new pod, not counted against the Job.
            PodFailurePolicyRule {
                action: "Ignore".to_string(),
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".to_string(),
                    status: Some("True".to_string()),
                }]),
                ..Default::default()
            },
            PodFailurePolicyRule {
                action: "FailJob".to_string(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(CONTAINER.to_string()),
                    operator: "In".to_string(),
                    values: vec![EXIT_REFUSED],
                }),
                ..Default::default()
            },
        ],
    });
    // Kueue admits a suspended Job by unsuspending it; the controller never does.
    spec.suspend = Some(settings.kueue_queue.is_some());
    spec.manual_selector = None;
    spec.selector = None;

    let template = &mut spec.template;
    let pod_metadata = template.metadata.get_or_insert_with(ObjectMeta::default);
    pod_metadata
        .labels
        .get_or_insert_with(Default::default)
        .extend(labels);
    pod_metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(SAFE_TO_EVICT.0.to_string(), SAFE_TO_EVICT.1.to_string());
    let pod = template.spec.get_or_insert_with(PodSpec::default);
    pod.restart_policy = Some("Never".to_string());
    pod.termination_grace_period_seconds = Some((settings.grace + KUBELET_MARGIN).as_secs() as i64);
    // The engine needs no access to the API.
    if pod.automount_service_account_token.is_none() {
        pod.automount_service_account_token = Some(false);
    }
    let volumes = pod.volumes.get_or_insert_with(Default::default);
    volumes.retain(|v| v.name != "root" && v.name != "params");
    volumes.push(Volume {
        name: "root".to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });
    volumes.push(Volume {
        name: "params".to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret_name(&operation.cluster)),
            items: Some(vec![KeyToPath {
                key: params_key(operation.kind).to_string(),
                path: params_key(Kind::Apply).to_string(),
                mode: Some(0o400),
                ..Default::default()
            }]),
            default_mode: Some(0o400),
            optional: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    });
    if pod.containers.is_empty() {
        pod.containers.push(Container::default());
    }
    let container = &mut pod.containers[0];
    container.name = CONTAINER.to_string();
    container.args = Some(engine_args(settings, operation));
    container.termination_message_path = Some(RESULT_FILE.to_string());
    container.termination_message_policy = Some("File".to_string());
    let env = container.env.get_or_insert_with(Default::default);
    env.retain(|e| e.name != "BOOTSTRAPPER_HOLD");
    env.push(EnvVar {
        name: "BOOTSTRAPPER_HOLD".to_string(),
        value: Some("false".to_string()),
        ..Default::default()
    });
    let mounts = container.volume_mounts.get_or_insert_with(Default::default);
    mounts.retain(|m| m.name != "root" && m.name != "params");
    mounts.push(VolumeMount {
        name: "root".to_string(),
        mount_path: ROOT.to_string(),
        ..Default::default()
    });
    mounts.push(VolumeMount {
        name: "params".to_string(),
        mount_path: PARAMS_DIR.to_string(),
        read_only: Some(true),
        ..Default::default()
    });
    job
}

/// Whether `job` is one this executor made for a cluster, by its labels: a Job found under
/// a name it meant to create (409) is adopted only then.
pub fn is_ours(job: &Job, operation: &Operation, attempt: u32) -> bool {
    let wanted = labels(operation, attempt);
    let Some(have) = &job.metadata.labels else {
        return false;
    };
    wanted.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// The operation (and attempt) a Job of this executor runs, read back from its labels, for
/// a restarted controller to adopt it.
pub fn operation_of(job: &Job) -> Option<(Operation, u32)> {
    let labels = job.metadata.labels.as_ref()?;
    if labels.get(MANAGED_BY.0).map(String::as_str) != Some(MANAGED_BY.1) {
        return None;
    }
    let kind = match labels.get(LABEL_KIND)?.as_str() {
        "apply" => Kind::Apply,
        "destroy" => Kind::Destroy,
        "plan" => Kind::Plan,
        _ => return None,
    };
    let annotations = job.metadata.annotations.as_ref();
    let reviewed = annotations
        .and_then(|a| a.get(ANNOTATION_REVIEWED))
        .cloned();
    let code = match annotations
        .and_then(|a| a.get(ANNOTATION_CODE))
        .map(String::as_str)
    {
        None => None,
        Some("current") => Some(CodeChoice::Current),
        Some("previous") => Some(CodeChoice::Previous),
        Some(_) => return None,
    };
    Some((
        Operation {
            cluster: labels.get(LABEL_CLUSTER)?.clone(),
            generation: labels.get(LABEL_GENERATION)?.parse().ok()?,
            kind,
            reviewed,
            code,
        },
        labels.get(LABEL_ATTEMPT)?.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::strict;
    use serde_json::json;

    /// The shipped template: `job.yaml` of the ConfigMap in deploy/k8s.
    pub fn template() -> String {
        let text = include_str!("../../../../deploy/k8s/kubernetes-executor/job-template.yaml");
        let config_map: serde_json::Value = serde_saphyr::from_str(text).unwrap();
        config_map["data"]["job.yaml"].as_str().unwrap().to_string()
    }

    pub fn settings(kueue: Option<&str>) -> JobSettings {
        JobSettings {
            namespace: "rocketmq-control-plane".into(),
            template: parse_template(&template()).expect("the shipped template parses"),
            workflow_path: "/etc/bootstrapper/workflow.toml".into(),
            terraform: "terraform".into(),
            grace: Duration::from_secs(90),
            operation_timeout: Duration::from_secs(3600),
            ttl_after_finished: Duration::from_secs(3600),
            kueue_queue: kueue.map(str::to_string),
            log_format: Format::Json,
        }
    }

    fn operation(kind: Kind, reviewed: Option<&str>) -> Operation {
        Operation {
            cluster: "rmq-a".into(),
            generation: 7,
            kind,
            reviewed: reviewed.map(str::to_string),
            code: None,
        }
    }

    #[test]
    fn names_are_deterministic_labels_of_at_most_63_characters() {
        assert_eq!(job_name("rmq-a", 7, Kind::Apply, 1), "bs-rmq-a-apply-7-1");
        let long = "a".repeat(39) + "-b";
        let name = job_name(&long, u64::MAX, Kind::Destroy, u32::MAX);
        assert!(name.len() <= 63, "{name}");
        assert_eq!(name, job_name(&long, u64::MAX, Kind::Destroy, u32::MAX));
        assert_ne!(
            name,
            job_name(&("a".repeat(39) + "-c"), u64::MAX, Kind::Destroy, u32::MAX)
        );
        assert!(name.starts_with("bs-a") && !name.contains("--"), "{name}");
        for id in ["a", &"z".repeat(40), "a-b-c"] {
            for kind in [Kind::Apply, Kind::Destroy, Kind::Plan] {
                let name = job_name(id, u64::MAX, kind, u32::MAX);
                assert!(name.len() <= 63, "{name}");
                assert!(name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            }
        }
    }

    #[test]
    fn the_job_runs_once_and_is_never_evicted_on_purpose() {
        let job = job(&settings(None), &operation(Kind::Apply, None), 1);
        let value = serde_json::to_value(&job).unwrap();
        let spec = &value["spec"];
        assert_eq!(spec["backoffLimit"], 0);
        assert_eq!(spec["podReplacementPolicy"], "Failed");
        assert_eq!(spec["activeDeadlineSeconds"], 3600);
        assert_eq!(spec["suspend"], false);
        assert_eq!(
            spec["podFailurePolicy"]["rules"],
            json!([
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "FailJob", "onExitCodes": {"containerName": "engine", "operator": "In", "values": [2]}},
            ])
        );
        let pod = &spec["template"];
        assert_eq!(
            pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"],
            "false"
        );
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 105);
        let container = &pod["spec"]["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args[args.len() - 2..], ["run", "--recreate"]);
        assert!(args.contains(&"--result-file=/dev/termination-log"));
        assert!(args.contains(&"--grace=90s"));
        assert_eq!(container["terminationMessagePath"], "/dev/termination-log");
        for labels in [&value["metadata"]["labels"], &pod["metadata"]["labels"]] {
            assert_eq!(labels["bootstrapper/cluster"], "rmq-a");
            assert_eq!(labels["bootstrapper/generation"], "7");
            assert_eq!(labels["bootstrapper/kind"], "apply");
            assert_eq!(labels["bootstrapper/attempt"], "1");
        }
        assert_eq!(operation_of(&job), Some((operation(Kind::Apply, None), 1)));
        assert!(is_ours(&job, &operation(Kind::Apply, None), 1));
        assert!(!is_ours(&job, &operation(Kind::Destroy, None), 1));
        // The template's image, account and environment are kept.
        assert!(container["image"]
            .as_str()
            .unwrap()
            .contains("bootstrapper"));
        assert!(container["envFrom"]
            .as_array()
            .is_some_and(|e| !e.is_empty()));
    }

    #[test]
    fn params_travel_only_in_the_secret() {
        let secret_value = "hunter2-in-params";
        let params = json!({"cluster_id": "rmq-a", "password": secret_value});
        let secret = params_secret("ns", "rmq-a", &params, None);
        let stored = &secret.data.as_ref().unwrap()["params.json"].0;
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(stored).unwrap(),
            params
        );
        for kind in [Kind::Apply, Kind::Destroy, Kind::Plan] {
            let job = job(&settings(None), &operation(kind, None), 1);
            let text = serde_json::to_string(&job).unwrap();
            assert!(!text.contains(secret_value), "{text}");
            let pod = job.spec.unwrap().template.spec.unwrap();
            let volume = pod
                .volumes
                .unwrap()
                .into_iter()
                .find(|v| v.name == "params");
            let items = volume.unwrap().secret.unwrap().items.unwrap();
            let wanted = if kind == Kind::Plan {
                "plan-params.json"
            } else {
                "params.json"
            };
            assert_eq!(items[0].key, wanted);
            assert_eq!(items[0].path, "params.json");
        }
    }

    #[test]
    fn engine_commands_follow_the_kind() {
        let args = |kind, reviewed| {
            let mut a = engine_args(&settings(None), &operation(kind, reviewed));
            a.split_off(a.len() - 2)
        };
        assert_eq!(args(Kind::Destroy, None), ["destroy", "--every-step"]);
        let plan = engine_args(&settings(None), &operation(Kind::Plan, None));
        assert_eq!(plan[plan.len() - 3..], ["diff", "--json", "--every-step"]);
        assert_eq!(args(Kind::Apply, Some("d1")), ["run", "--reviewed=d1"]);
        let job = job(&settings(None), &operation(Kind::Apply, Some("d1")), 2);
        assert_eq!(
            operation_of(&job),
            Some((operation(Kind::Apply, Some("d1")), 2))
        );
        // An upgrade or a rollback says so on the command line and in the Job, for adoption.
        for code in [CodeChoice::Current, CodeChoice::Previous] {
            let upgrade = Operation {
                code: Some(code),
                ..operation(Kind::Apply, None)
            };
            let args = engine_args(&settings(None), &upgrade);
            assert_eq!(
                args[args.len() - 3..],
                ["run", "--recreate", &format!("--code={}", code.as_str())]
            );
            let upgraded = super::job(&settings(None), &upgrade, 1);
            assert_eq!(operation_of(&upgraded), Some((upgrade, 1)));
        }
    }

    #[test]
    fn with_a_kueue_queue_the_job_is_created_suspended_and_labelled() {
        let job = job(&settings(Some("tenants")), &operation(Kind::Apply, None), 1);
        assert_eq!(job.spec.as_ref().unwrap().suspend, Some(true));
        assert_eq!(
            job.metadata.labels.as_ref().unwrap()[KUEUE_QUEUE],
            "tenants"
        );
    }

    #[test]
    fn a_bad_template_is_refused_naming_what_is_wrong() {
        let typo = template().replace("serviceAccountName", "serviceAcountName");
        let e = parse_template(&typo).unwrap_err().to_string();
        assert!(e.contains("serviceAcountName"), "{e}");
        let e = parse_template("apiVersion: v1\nkind: Pod\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a batch/v1 Job"), "{e}");
        let e = parse_template("apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n      containers: []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("exactly one container"), "{e}");
    }

    /// Every object the executor sends, against the real schema of Kubernetes 1.37:
    /// strictly read back into k8s-openapi's types, and through `kubernetes-validate --strict`.
    #[test]
    fn every_object_sent_fits_the_kubernetes_schema() {
        let mut objects = vec![serde_json::to_value(params_secret(
            "ns",
            "rmq-a",
            &json!({"cluster_id": "rmq-a"}),
            Some(&json!({"cluster_id": "rmq-a", "size": 3})),
        ))
        .unwrap()];
        for kueue in [None, Some("tenants")] {
            for (kind, reviewed) in [
                (Kind::Apply, None),
                (Kind::Apply, Some("d-1")),
                (Kind::Destroy, None),
                (Kind::Plan, None),
            ] {
                let job = job(&settings(kueue), &operation(kind, reviewed), 3);
                objects.push(serde_json::to_value(&job).unwrap());
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for (i, object) in objects.iter().enumerate() {
            match object["kind"].as_str() {
                Some("Job") => {
                    let _: Job = strict::from_value(object.clone()).unwrap();
                }
                Some("Secret") => {
                    let _: Secret = strict::from_value(object.clone()).unwrap();
                }
                other => panic!("unexpected kind {other:?}"),
            }
            let path = dir.path().join(format!("{i}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(object).unwrap()).unwrap();
            files.push(path);
        }
        let out = std::process::Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", "1.37.0"])
            .args(&files)
            .output()
            .expect(
                "kubernetes-validate runs (.ci/run installs it: pip install kubernetes-validate)",
            );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(!text.contains("ERROR"), "{text}");
    }
}
