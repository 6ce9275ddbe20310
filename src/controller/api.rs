//! The controller's HTTP API: routes, request and answer types, errors as JSON, and the
//! OpenAPI document generated from them. A request only records intent; the reconciler does
//! the work. A rejected request writes nothing and starts nothing.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{OpenApi, ToSchema};

use crate::base::error::Problems;
use crate::controller::cluster::{self, Cluster, Document, Drift, DriftedResource, Intent, Phase};
use crate::controller::code::{self, CodeChoice};
use crate::controller::plan::{Plan, PlanStatus};
use crate::controller::reconcile::Reconciler;
use crate::controller::records::{self, Record};
use crate::controller::rollout::{self, RolloutDocument, RolloutError};
use crate::controller::tokens::Tokens;

/// The largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;
/// How much of an operation's log is answered: its end, where failures are.
const MAX_LOG_LINES: usize = 10_000;

pub struct App {
    pub reconciler: Arc<Reconciler>,
    /// None only with `--insecure-no-auth`.
    pub tokens: Option<Tokens>,
    /// Intent changes are read-modify-write; one at a time keeps generations in order.
    pub writes: tokio::sync::Mutex<()>,
}

impl App {
    fn root(&self) -> &std::path::Path {
        &self.reconciler.config.root
    }

    /// The cluster's document read from its files now, with what runs on it.
    fn document(&self, cluster: &Cluster) -> Document {
        records::document(
            cluster,
            &self.reconciler.config.workflow,
            &Record::read(cluster),
            self.reconciler.running(&cluster.id),
        )
    }
}

/// Every error the API answers with, each with its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        problems: Vec<ProblemBody>,
    },
    #[error("a valid bearer token is required (Authorization: Bearer TOKEN)")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed here")]
    MethodNotAllowed,
    #[error("{1}")]
    Rejected(StatusCode, String),
    /// The request cannot be done in the cluster's state now: what moved on, what to do.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Rejected(status, _) => *status,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            problems: Vec::new(),
        }
    }

    fn invalid(problems: &Problems) -> Self {
        ApiError::BadRequest {
            message: format!(
                "the params do not fit the tenant workflow ({} problem(s))",
                problems.0.len()
            ),
            problems: problems.0.iter().map(ProblemBody::from).collect(),
        }
    }

    /// An intent that could not be written: a full volume is the operator's to fix (507), not
    /// a fault of the controller.
    fn unrecorded(e: std::io::Error) -> Self {
        if matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ) {
            tracing::error!("cannot record an intent: {e}");
            return ApiError::Rejected(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("cannot record the intent: {e}; free space on the volume under --root"),
            );
        }
        ApiError::internal("cannot record the intent", e)
    }

    fn internal(context: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!("{context}: {e}");
        ApiError::Internal(format!("{context}: {e}"))
    }
}

/// The body of every error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    /// Every problem, when there are several.
    pub problems: Vec<ProblemBody>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProblemBody {
    pub message: String,
    /// The file (and line and column) the problem is in, if any.
    pub location: Option<String>,
    pub step: Option<String>,
    pub hint: Option<String>,
}

impl From<&crate::base::error::Problem> for ProblemBody {
    fn from(p: &crate::base::error::Problem) -> Self {
        ProblemBody {
            message: p.message.clone(),
            location: p.location.as_ref().map(ToString::to_string),
            step: p.step.clone(),
            hint: p.hint.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            error: self.to_string(),
            problems: match self {
                ApiError::BadRequest { problems, .. } => problems,
                _ => Vec::new(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// `PUT /v1/clusters/{id}`: the cluster is to exist with these params.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutCluster {
    /// The tenant workflow's params; `cluster_id` is set to the id when missing.
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    /// Apply exactly this reviewed plan (`POST /v1/clusters/{id}/plan`): only if it is the
    /// cluster's latest, succeeded, was made with these very params, and neither the intent
    /// nor the cluster's state moved on since (else 409).
    #[serde(default)]
    pub plan_id: Option<String>,
    /// Move the cluster to the code this controller ships before applying (its document's
    /// `code.outdated` says whether that changes anything); the same as `"code": "current"`.
    #[serde(default)]
    pub upgrade: bool,
    /// `previous`: put back the code the cluster's last upgrade replaced, and apply it (a
    /// rollback; 409 under --executor kubernetes, which keeps no replaced code); `current`: as
    /// `"upgrade": true`. Without it the cluster keeps its code (under --executor kubernetes
    /// every apply runs the image's code).
    #[serde(default)]
    pub code: Option<CodeChoice>,
}

/// `POST /v1/clusters/{id}/plan`: what an apply would change; with `params`, of those params
/// rather than the stored ones (a preview: the intent is unchanged).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostPlan {
    #[schema(value_type = Option<Object>)]
    pub params: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterList {
    pub clusters: Vec<Document>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OperationLog {
    pub id: String,
    /// The last operation's output, secrets masked; its end when it is long.
    pub lines: Vec<String>,
    /// The pod the lines were read from, while the operation's Job runs; null: the kept
    /// `operation.log`.
    pub pod: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    /// What keeps the controller from being ready.
    pub problems: Vec<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "bootstrapper controller",
        description = "Creates, destroys and describes tenants' clusters, each one instance of the tenant workflow"
    ),
    paths(
        put_cluster,
        delete_cluster,
        get_cluster,
        list_clusters,
        get_log,
        post_plan,
        get_plan,
        post_rollout,
        get_rollout,
        delete_rollout,
        pause_rollout,
        resume_rollout,
        approve_rollout,
        healthz,
        readyz,
        metrics
    ),
    modifiers(&BearerTokens),
    components(schemas(
        PutCluster,
        CodeChoice,
        crate::controller::code::CodeDocument,
        rollout::PostRollout,
        rollout::Selector,
        rollout::RolloutPhase,
        rollout::RolloutDocument,
        crate::controller::rollout_plan::Summary,
        crate::controller::rollout_plan::ChangeGroup,
        PostPlan,
        Plan,
        PlanStatus,
        Drift,
        DriftedResource,
        Document,
        ClusterList,
        OperationLog,
        ErrorBody,
        ProblemBody,
        Health
    ))
)]
pub struct ApiDoc;

/// The scheme that `security(("bearer" = []))` on the `/v1` routes names.
struct BearerTokens;

impl utoipa::Modify for BearerTokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

pub fn router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route(
            "/v1/clusters/{id}",
            get(get_cluster).put(put_cluster).delete(delete_cluster),
        )
        .route("/v1/clusters", get(list_clusters))
        .route("/v1/clusters/{id}/log", get(get_log))
        .route("/v1/clusters/{id}/plan", post(post_plan).get(get_plan))
        .route("/v1/rollouts", post(post_rollout))
        .route("/v1/rollouts/{id}", get(get_rollout).delete(delete_rollout))
        .route("/v1/rollouts/{id}/pause", post(pause_rollout))
        .route("/v1/rollouts/{id}/resume", post(resume_rollout))
        .route("/v1/rollouts/{id}/approve", post(approve_rollout))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), authorize));
    Router::new()
        .merge(v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

async fn authorize(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if let Some(tokens) = &app.tokens {
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token);
        if !tokens.accepts(token.trim()) {
            app.reconciler
                .metrics
                .refused("unauthorized", "a request without a valid token");
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; GET /openapi.json lists them".to_string())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn check_id(id: &str) -> Result<(), ApiError> {
    cluster::check_id(id).map_err(ApiError::bad)
}

/// A cluster on record, whatever state its records are in.
fn existing(app: &App, id: &str) -> Result<(Cluster, Record), ApiError> {
    check_id(id)?;
    let cluster = Cluster::new(app.root(), id);
    if !cluster.on_record() {
        // Removed behind the controller's back, perhaps: the list forgets it too.
        app.reconciler.refresh(id);
        return Err(ApiError::NotFound(format!("no cluster `{id}`")));
    }
    let record = Record::read(&cluster);
    Ok((cluster, record))
}

/// The params and plan id of a PUT body, the cluster id filled in, checked against the
/// workflow.
fn accept_put(app: &App, id: &str, body: &[u8]) -> Result<Accepted, ApiError> {
    let put: PutCluster = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("the body is not a valid request: {e}")))?;
    if put.plan_id.is_some() && !app.reconciler.executor.applies_saved_plans() {
        return Err(ApiError::Conflict(
            crate::controller::executor::kubernetes::results::REVIEWED_REFUSAL.replace("{id}", id),
        ));
    }
    if put.code == Some(CodeChoice::Previous) && !app.reconciler.executor.keeps_code() {
        return Err(ApiError::Conflict(
            crate::controller::executor::kubernetes::results::ROLLBACK_REFUSAL.to_string(),
        ));
    }
    if let Some(plan_id) = &put.plan_id {
        let valid = plan_id.len() == 16
            && plan_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(ApiError::bad(format!(
                "plan_id {plan_id:?} is not a plan id (16 hex digits, the `id` of GET /v1/clusters/{id}/plan)"
            )));
        }
    }
    let code = match (put.upgrade, put.code) {
        (true, Some(CodeChoice::Previous)) => {
            return Err(ApiError::bad(
                "\"upgrade\": true and \"code\": \"previous\" ask for opposite moves; give one",
            ))
        }
        (true, _) => Some(CodeChoice::Current),
        (false, code) => code,
    };
    if code.is_some() && put.plan_id.is_some() {
        return Err(ApiError::bad(
            "a plan_id applies the reviewed plan of the code in place; leave out upgrade or code, or plan again after the upgrade",
        ));
    }
    Ok(Accepted {
        params: accept_params(app, id, put.params)?,
        plan_id: put.plan_id,
        code,
    })
}

/// A PUT's body, checked.
struct Accepted {
    params: Map<String, Value>,
    plan_id: Option<String>,
    code: Option<CodeChoice>,
}

/// `params` with the cluster id filled in, checked against the workflow.
fn accept_params(
    app: &App,
    id: &str,
    mut params: Map<String, Value>,
) -> Result<Map<String, Value>, ApiError> {
    match params.get("cluster_id") {
        None => {
            params.insert("cluster_id".to_string(), Value::String(id.to_string()));
        }
        Some(Value::String(given)) if given == id => {}
        Some(other) => {
            return Err(ApiError::bad(format!(
                "params.cluster_id is {other} but the path names cluster `{id}`; leave it out or make them equal"
            )))
        }
    }
    cluster::check_params(&app.reconciler.config.workflow, &params)
        .map_err(|p| ApiError::invalid(&p))?;
    Ok(params)
}

/// Creates the cluster, or changes its params.
#[utoipa::path(
    put,
    path = "/v1/clusters/{id}",
    params(("id" = String, Path, description = "A DNS-1123 label of at most 40 characters")),
    request_body = PutCluster,
    responses(
        (status = 200, description = "Already ready with these params; nothing started", body = Document),
        (status = 202, description = "Accepted; the cluster is applied in the background", body = Document),
        (status = 400, description = "A bad id, body or params", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 408, description = "The body did not arrive within --body-timeout", body = ErrorBody),
        (status = 409, description = "The plan_id cannot be applied: what moved on since it was made", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = ErrorBody),
        (status = 503, description = "Every connection the controller allows is taken", body = ErrorBody),
        (status = 507, description = "No space left under --root to record the intent", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn put_cluster(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Document>), ApiError> {
    check_id(&id)?;
    let body = body.map_err(|r| ApiError::Rejected(r.status(), r.body_text()))?;
    // Files and templates are blocking work: off the async workers' backs.
    let accepted = tokio::task::block_in_place(|| accept_put(&app, &id, &body))?;
    let writes = app.writes.lock().await;
    let cluster = Cluster::new(app.root(), &id);
    let recorded = tokio::task::block_in_place(|| record_present(&app, &cluster, accepted));
    drop(writes);
    let status = recorded?;
    if status == StatusCode::ACCEPTED {
        app.reconciler.enqueue(&id);
    }
    let document = tokio::task::block_in_place(|| app.document(&cluster));
    Ok((status, Json(document)))
}

/// Records that `cluster` is to exist with `params`: 200 when it already does and nothing is
/// to be done, 202 otherwise (with a new generation, unless the same intent is in progress).
fn record_present(
    app: &App,
    cluster: &Cluster,
    accepted: Accepted,
) -> Result<StatusCode, ApiError> {
    let Accepted {
        params,
        plan_id,
        code,
    } = accepted;
    let record = Record::read(cluster);
    let now = crate::base::clock::now_rfc3339();
    let intent = match record.intent.clone() {
        Ok(None) | Err(_) if plan_id.is_some() => {
            return Err(ApiError::Conflict(format!(
                    "cluster `{}` has no plan to apply: it is new, or its intent cannot be read; PUT without plan_id",
                    cluster.id
                ),
            ))
        }
        Ok(None) | Err(_) if code == Some(CodeChoice::Previous) => {
            return Err(ApiError::Conflict(format!(
                "cluster `{}` has no previous code: it is new, or its intent cannot be read; PUT without code",
                cluster.id
            )))
        }
        // New, or its intent lost: a fresh uid, above every generation seen of it; its code
        // is the current anyway.
        Ok(None) | Err(_) => Intent {
            generation: app.reconciler.generation_floor(&cluster.id, &record) + 1,
            present: true,
            params,
            created_at: now.clone(),
            updated_at: now,
            uid: records::new_uid(),
            plan_id: None,
            code: None,
        },
        Ok(Some(current)) => {
            let phase = Phase::of(
                &current,
                record.outcome(),
                app.reconciler.running(&cluster.id),
            );
            // A code move asked again while it is under way is the same request; one done is
            // asked again only as an upgrade the cluster still needs.
            let moving = current.code == code && matches!(phase, Phase::Pending | Phase::Applying);
            let code_done = match code {
                None => true,
                Some(CodeChoice::Current) => {
                    moving || !code::document(&cluster.journal(), &cluster.dir).outdated
                }
                Some(CodeChoice::Previous) => moving,
            };
            if code == Some(CodeChoice::Previous)
                && !moving
                && crate::root::source::previous_record(&cluster.journal()).is_none()
            {
                return Err(ApiError::Conflict(format!(
                    "cluster `{}` keeps no previous code: no upgrade replaced its code, or it was rolled back already",
                    cluster.id
                )));
            }
            let same = current.present
                && current.params == params
                && (plan_id.is_none() || current.plan_id == plan_id)
                && code_done;
            if same && phase == Phase::Ready {
                return Ok(StatusCode::OK);
            }
            if same && phase != Phase::Failed {
                return Ok(StatusCode::ACCEPTED);
            }
            if let Some(plan_id) = &plan_id {
                let plan = Plan::read(cluster)
                    .map_err(ApiError::Conflict)?
                    .ok_or_else(|| {
                        ApiError::Conflict(format!("cluster `{}` has no plan; POST /v1/clusters/{}/plan makes one", cluster.id, cluster.id),
                        )
                    })?;
                let refusal =
                    plan.refusal(plan_id, &params, Some(&current), record.outcome());
                if let Some(why) = refusal {
                    return Err(ApiError::Conflict(why));
                }
            }
            Intent {
                generation: current.generation + 1,
                present: true,
                params,
                updated_at: now,
                plan_id,
                code,
                ..current
            }
        }
    };
    cluster
        .write_intent(&intent)
        .map_err(ApiError::unrecorded)?;
    app.reconciler.refresh(&cluster.id);
    tracing::info_span!("cluster", id = %cluster.id)
        .in_scope(|| tracing::info!(generation = intent.generation, "intent: present"));
    Ok(StatusCode::ACCEPTED)
}

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::Bad(m) => ApiError::bad(m),
            RolloutError::NotFound(m) => ApiError::NotFound(m),
            RolloutError::Conflict(m) => ApiError::Conflict(m),
            RolloutError::Internal(m) => ApiError::internal("rollout", m),
        }
    }
}

/// Starts a rollout over the outdated clusters the selector takes.
#[utoipa::path(
    post,
    path = "/v1/rollouts",
    request_body = rollout::PostRollout,
    responses(
        (status = 201, description = "Created; it runs in the background", body = RolloutDocument),
        (status = 400, description = "A bad body", body = ErrorBody),
        (status = 409, description = "Another rollout is not done or cancelled yet, or no code to roll out", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn post_rollout(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<RolloutDocument>), ApiError> {
    let body = body.map_err(|r| ApiError::Rejected(r.status(), r.body_text()))?;
    let post: rollout::PostRollout = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("the body is not a valid rollout: {e}")))?;
    let _writes = app.writes.lock().await;
    let created = tokio::task::block_in_place(|| rollout::create(&app.reconciler, post))?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// A rollout's phase, counts per state and the clusters in each.
#[utoipa::path(
    get,
    path = "/v1/rollouts/{id}",
    params(("id" = String, Path)),
    responses((status = 200, body = RolloutDocument), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
async fn get_rollout(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<RolloutDocument>, ApiError> {
    Ok(Json(tokio::task::block_in_place(|| {
        rollout::get(app.root(), &id)
    })?))
}

async fn change_rollout(
    app: Arc<App>,
    id: String,
    action: rollout::Action,
) -> Result<Json<RolloutDocument>, ApiError> {
    let _writes = app.writes.lock().await;
    Ok(Json(tokio::task::block_in_place(|| {
        rollout::change(&app.reconciler, &id, action)
    })?))
}

/// Cancels a rollout: nothing new starts; running upgrades finish.
#[utoipa::path(
    delete,
    path = "/v1/rollouts/{id}",
    params(("id" = String, Path)),
    responses((status = 200, body = RolloutDocument), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []))
)]
async fn delete_rollout(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<RolloutDocument>, ApiError> {
    change_rollout(app, id, rollout::Action::Cancel).await
}

/// Pauses a running rollout: nothing new starts; running upgrades finish.
#[utoipa::path(
    post,
    path = "/v1/rollouts/{id}/pause",
    params(("id" = String, Path)),
    responses((status = 200, body = RolloutDocument), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []))
)]
async fn pause_rollout(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<RolloutDocument>, ApiError> {
    change_rollout(app, id, rollout::Action::Pause).await
}

/// Resumes a paused or halted rollout; a halted one tries its failed clusters again.
#[utoipa::path(
    post,
    path = "/v1/rollouts/{id}/resume",
    params(("id" = String, Path)),
    responses((status = 200, body = RolloutDocument), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []))
)]
async fn resume_rollout(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<RolloutDocument>, ApiError> {
    change_rollout(app, id, rollout::Action::Resume).await
}

/// Approves a `plan_first` rollout that awaits approval: its upgrades start. 409 unless it
/// is `awaiting_approval` with every plan ended.
#[utoipa::path(
    post,
    path = "/v1/rollouts/{id}/approve",
    params(("id" = String, Path)),
    responses((status = 200, body = RolloutDocument), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []))
)]
async fn approve_rollout(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<RolloutDocument>, ApiError> {
    change_rollout(app, id, rollout::Action::Approve).await
}

/// Moves the active rollout on every so often, under the intent writes' lock, until the
/// controller stops.
pub async fn drive_rollouts(app: Arc<App>) {
    loop {
        {
            let _writes = app.writes.lock().await;
            tokio::task::block_in_place(|| rollout::step_all(&app.reconciler));
        }
        tokio::time::sleep(rollout::EVERY).await;
    }
}

/// Destroys the cluster; a running apply is stopped gracefully first.
#[utoipa::path(
    delete,
    path = "/v1/clusters/{id}",
    params(("id" = String, Path)),
    responses(
        (status = 202, description = "Accepted; the cluster is destroyed in the background", body = Document),
        (status = 404, description = "Never created", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn delete_cluster(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Document>), ApiError> {
    let writes = app.writes.lock().await;
    let recorded = tokio::task::block_in_place(|| record_absent(&app, &id));
    drop(writes);
    let cluster = recorded?;
    app.reconciler.enqueue(&id);
    let document = tokio::task::block_in_place(|| app.document(&cluster));
    Ok((StatusCode::ACCEPTED, Json(document)))
}

/// Records that the cluster `id` is to be destroyed; a failed destroy is tried again.
fn record_absent(app: &App, id: &str) -> Result<Cluster, ApiError> {
    let (cluster, record) = existing(app, id)?;
    let now = crate::base::clock::now_rfc3339();
    let intent = match record.intent() {
        Some(current) => {
            let failed =
                Phase::of(current, record.outcome(), app.reconciler.running(id)) == Phase::Failed;
            if !current.present && !failed {
                return Ok(cluster);
            }
            Intent {
                generation: current.generation + 1,
                present: false,
                updated_at: now,
                plan_id: None,
                code: None,
                ..current.clone()
            }
        }
        // Its intent lost: destroyed with the params of its last operation, which the
        // engine's journal says what it applied with.
        None => Intent {
            generation: app.reconciler.generation_floor(id, &record) + 1,
            present: false,
            params: records::last_params(&cluster),
            created_at: now.clone(),
            updated_at: now,
            uid: records::new_uid(),
            plan_id: None,
            code: None,
        },
    };
    cluster
        .write_intent(&intent)
        .map_err(ApiError::unrecorded)?;
    app.reconciler.refresh(id);
    tracing::info_span!("cluster", id = %id)
        .in_scope(|| tracing::info!(generation = intent.generation, "intent: absent"));
    Ok(cluster)
}

/// The cluster's phase, steps, outputs, last error and times.
#[utoipa::path(
    get,
    path = "/v1/clusters/{id}",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = Document),
        (status = 404, description = "Never created", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn get_cluster(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Document>, ApiError> {
    tokio::task::block_in_place(|| {
        let (cluster, _) = existing(&app, &id)?;
        Ok(Json(app.document(&cluster)))
    })
}

/// Every cluster, optionally only those in one phase.
#[utoipa::path(
    get,
    path = "/v1/clusters",
    params(
        ("phase" = Option<String>, Query, description = "pending, applying, ready, failed, destroying, destroyed or damaged"),
        ("drifted" = Option<bool>, Query, description = "true: only the clusters whose last drift check found drift; false: only the others"),
        ("outdated" = Option<bool>, Query, description = "true: only the clusters whose code is not the current (`code.outdated`); false: only the others")
    ),
    responses((status = 200, body = ClusterList), (status = 400, body = ErrorBody)),
    security(("bearer" = []))
)]
async fn list_clusters(
    State(app): State<Arc<App>>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ClusterList>, ApiError> {
    let Query(query) = query.map_err(|r| ApiError::bad(r.body_text()))?;
    let mut phase = None;
    let mut drifted = None;
    let mut outdated = None;
    for (key, value) in &query {
        match key.as_str() {
            "phase" => {
                phase = Some(
                    Phase::ALL
                        .into_iter()
                        .find(|p| p.as_str() == value)
                        .ok_or_else(|| {
                            ApiError::bad(format!(
                                "unknown phase {value:?}; phases are: {}",
                                Phase::ALL.map(Phase::as_str).join(", ")
                            ))
                        })?,
                )
            }
            "drifted" => {
                drifted = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ApiError::bad(format!(
                            "drifted is {value:?}; it is true or false"
                        )))
                    }
                })
            }
            "outdated" => {
                outdated = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ApiError::bad(format!(
                            "outdated is {value:?}; it is true or false"
                        )))
                    }
                })
            }
            other => return Err(ApiError::bad(format!("unknown query parameter `{other}`"))),
        }
    }
    // From the index: only the clusters with an operation running are read from their files.
    let clusters = tokio::task::block_in_place(|| {
        let running = app.reconciler.running_all();
        let reconciler = &app.reconciler;
        reconciler
            .index
            .list(app.root(), &reconciler.config.workflow, phase, &running)
            .iter()
            .filter(|d| {
                drifted.is_none_or(|want| d.drift.as_ref().is_some_and(|d| d.drifted) == want)
            })
            .filter(|d| outdated.is_none_or(|want| d.code.outdated == want))
            .map(|d| Document::clone(d))
            .collect()
    });
    Ok(Json(ClusterList { clusters }))
}

/// The last operation's output, secrets masked: while an operation's Job runs
/// (`--executor kubernetes`), its pod's log; otherwise the kept `operation.log`.
#[utoipa::path(
    get,
    path = "/v1/clusters/{id}/log",
    params(
        ("id" = String, Path),
        ("follow" = Option<bool>, Query, description = "true: the log as text/plain, line by line as the running Job's pod writes it, until the pod ends (without such a pod: the kept log, then the end)")
    ),
    responses((status = 200, body = OperationLog), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
async fn get_log(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    use futures_util::StreamExt;
    let Query(query) = query.map_err(|r| ApiError::bad(r.body_text()))?;
    // Files are blocking work, and a log can be large: only its end is read, off the async
    // workers' backs.
    let (cluster, redactor) = {
        let (app, id) = (app.clone(), id.clone());
        tokio::task::spawn_blocking(move || {
            let (cluster, record) = existing(&app, &id)?;
            // Written masked; masked again with today's secrets in case the params changed since.
            let params = match record.intent() {
                Some(intent) => intent.params.clone(),
                None => records::last_params(&cluster),
            };
            let redactor = cluster
                .loaded(&app.reconciler.config.workflow, &params)
                .redactor;
            Ok::<_, ApiError>((cluster, redactor))
        })
        .await
        .map_err(|e| ApiError::internal("reading the operation's log stopped", e))??
    };
    let live = app
        .reconciler
        .executor
        .live_log(&id, query.follow, MAX_LOG_LINES)
        .await;
    let kept = || async {
        let path = cluster.log_path();
        tokio::task::spawn_blocking(move || records::tail(&path, MAX_LOG_LINES))
            .await
            .map_err(|e| ApiError::internal("reading the operation's log stopped", e))?
            .map_err(|e| ApiError::internal("cannot read the operation's log", e))
    };
    if query.follow {
        let lines = match live {
            Some(live) => live.lines,
            None => futures_util::stream::iter(kept().await?).boxed(),
        };
        let text = lines.map(move |line| {
            Ok::<_, std::convert::Infallible>(format!("{}\n", redactor.mask(&line)))
        });
        let headers = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
        return Ok((headers, axum::body::Body::from_stream(text)).into_response());
    }
    let (lines, pod) = match live {
        Some(live) => {
            let mut lines: Vec<String> = live.lines.collect().await;
            let extra = lines.len().saturating_sub(MAX_LOG_LINES);
            lines.drain(..extra);
            (lines, Some(live.pod))
        }
        None => (kept().await?, None),
    };
    let lines = lines
        .iter()
        .map(|l| redactor.mask(l).into_owned())
        .collect();
    Ok(Json(OperationLog { id, lines, pod }).into_response())
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    #[serde(default)]
    follow: bool,
}

/// Plans what an apply would change (the engine's `diff`), as an operation of the cluster;
/// `GET` the plan for its result.
#[utoipa::path(
    post,
    path = "/v1/clusters/{id}/plan",
    params(("id" = String, Path)),
    request_body(content = Option<PostPlan>, description = "Empty, or `{\"params\": {…}}` to preview other params"),
    responses(
        (status = 202, description = "Accepted; the plan runs when the cluster has no other operation", body = Plan),
        (status = 400, description = "A bad id, body or params", body = ErrorBody),
        (status = 404, description = "No such cluster", body = ErrorBody),
        (status = 409, description = "The cluster is deleted, or its intent cannot be read", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn post_plan(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_id(&id)?;
    let body = body.map_err(|r| ApiError::Rejected(r.status(), r.body_text()))?;
    let post: PostPlan = if body.iter().all(u8::is_ascii_whitespace) {
        PostPlan::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad(format!("the body is not a valid request: {e}")))?
    };
    let params = match post.params {
        Some(params) => Some(tokio::task::block_in_place(|| {
            accept_params(&app, &id, params)
        })?),
        None => None,
    };
    let writes = app.writes.lock().await;
    let plan = tokio::task::block_in_place(|| record_plan(&app, &id, params));
    drop(writes);
    let plan = plan?;
    app.reconciler.enqueue(&id);
    Ok((StatusCode::ACCEPTED, Json(plan.answer())))
}

/// Records that a plan of `params` (None: the intent's) is asked for on cluster `id`.
fn record_plan(app: &App, id: &str, params: Option<Map<String, Value>>) -> Result<Plan, ApiError> {
    let (cluster, record) = existing(app, id)?;
    let Some(intent) = record.intent() else {
        return Err(ApiError::Conflict(format!(
            "cluster `{id}`'s intent cannot be read; a PUT or DELETE replaces it first"
        )));
    };
    if !intent.present {
        return Err(ApiError::Conflict(format!(
            "cluster `{id}` is deleted; there is nothing to plan (PUT it first)"
        )));
    }
    let stored = params.as_ref().is_none_or(|p| *p == intent.params);
    let params = params.unwrap_or_else(|| intent.params.clone());
    let workflow = &app.reconciler.config.workflow;
    let plan = Plan::requested(&cluster, &params, stored, false, workflow);
    if !stored {
        crate::base::json::write(&cluster.plan_request_path(), &params, 0o600)
            .map_err(|e| ApiError::internal("cannot record the plan's params", e))?;
    }
    plan.write(&cluster)
        .map_err(|e| ApiError::internal("cannot record the plan", e))?;
    tracing::info_span!("cluster", id = %id)
        .in_scope(|| tracing::info!(stored_params = stored, "plan asked for"));
    Ok(plan)
}

/// The cluster's latest plan: per step the resources an apply would create, update, replace
/// or delete, when it was made, with which params (masked) and code.
#[utoipa::path(
    get,
    path = "/v1/clusters/{id}/plan",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = Plan),
        (status = 404, description = "No such cluster, or no plan", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn get_plan(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    tokio::task::block_in_place(|| {
        let (cluster, _) = existing(&app, &id)?;
        match Plan::read(&cluster) {
            Ok(Some(plan)) => Ok(Json(plan.answer())),
            Ok(None) => Err(ApiError::NotFound(format!(
                "cluster `{id}` has no plan; POST /v1/clusters/{id}/plan makes one"
            ))),
            Err(e) => Err(ApiError::internal("cannot read the plan", e)),
        }
    })
}

/// The process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_string(),
        problems: Vec::new(),
    })
}

/// The root is writable, terraform is found, the tenant workflow loads and its code can be
/// copied or cloned.
#[utoipa::path(
    get,
    path = "/readyz",
    responses((status = 200, body = Health), (status = 503, body = Health))
)]
async fn readyz(State(app): State<Arc<App>>) -> (StatusCode, Json<Health>) {
    let settings = &app.reconciler.config;
    let mut problems = Vec::new();
    let clusters = cluster::clusters_dir(&settings.root);
    if let Err(e) = nix::unistd::access(&clusters, nix::unistd::AccessFlags::W_OK) {
        problems.push(format!("{} is not writable: {e}", clusters.display()));
    }
    problems.extend(app.reconciler.executor.problems());
    problems.extend(app.tokens.iter().flat_map(Tokens::problems));
    match crate::workflow::file::load(&settings.workflow_path) {
        Err(p) => problems.extend(p.0.iter().map(|p| p.to_string())),
        // Every tenant's run copies or clones the code; without either each one fails.
        // A source that needs a tenant's params to render is left to that tenant's run.
        Ok(workflow) => {
            let env: Vec<(String, String)> = std::env::vars().collect();
            let renderer =
                crate::workflow::render::Renderer::new(&workflow, &serde_json::json!({}), &env);
            if let Ok(source) = renderer.render_source() {
                let copied = source.image_dir.as_ref().filter(|d| d.is_dir());
                if copied.is_none() && source.git_url.is_none() {
                    problems.push(format!(
                        "the tenant workflow's code is not found: `source.image_dir` {} is not a directory and `source.git_url` is empty",
                        source
                            .image_dir
                            .as_ref()
                            .map_or("(unset)".to_string(), |d| d.display().to_string())
                    ));
                }
            }
        }
    }
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if problems.is_empty() {
        "ready"
    } else {
        "not ready"
    };
    (
        status,
        Json(Health {
            status: word.to_string(),
            problems,
        }),
    )
}

/// Prometheus metrics: operations by kind and result, running, queued, durations.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "application/openmetrics-text", body = String)))]
async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.reconciler.metrics.encode(),
    )
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes"),
    )
}
