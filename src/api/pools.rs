//! `/api/pools` and `/api/rollouts` (admin): pools and their queues, versions, rollouts and scaling policies
//! (CONTRACT §8). Business rules live in [`crate::rollout`] and [`crate::autoscale`]; these handlers only parse,
//! call and render.

use std::time::Duration;

use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Admin;
use super::body::{Body, RequestBody};
use super::error::{ApiError, Problem};
use super::extract::{id_cursor, next_page, ApiPath, IdPage, Page, QueryParams};
use super::AppState;
use crate::audit;
use crate::autoscale::{self, ScaleTarget};
use crate::queue::FieldError;
use crate::rollout::{self, NewRollout, PoolView, Rollout, RolloutState, WorkerPool};

/// A worker counts while its heartbeat is this fresh: three heartbeat intervals of the default 30 s lease.
const LIVE_WORKER: Duration = Duration::from_secs(30);

impl From<rollout::Error> for ApiError {
    fn from(e: rollout::Error) -> Self {
        use rollout::Error as R;
        match e {
            e @ (R::NotFound { .. } | R::PoolNotFound { .. }) => ApiError::NotFound(e.to_string()),
            R::Conflict { message } => ApiError::Conflict {
                detail: message,
                errors: Vec::new(),
            },
            R::Invalid(errs) => ApiError::Invalid(errs.into()),
            R::Queue(e) => e.into(),
            R::Database(e) => e.into(),
        }
    }
}

impl From<autoscale::Error> for ApiError {
    fn from(e: autoscale::Error) -> Self {
        use autoscale::Error as A;
        match e {
            e @ A::PoolNotFound { .. } => ApiError::NotFound(e.to_string()),
            A::Invalid(errs) => ApiError::Invalid(errs.into()),
            A::Database(e) => e.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

// The admin bodies are plain serde types with plain integer fields: integral floats are read as integers.

impl RequestBody for PutPoolBody {
    const NOT_AN_OBJECT: &'static str = "must be an object";
    const INTEGRAL_FLOATS: bool = true;
}

impl RequestBody for ScaleTarget {
    const NOT_AN_OBJECT: &'static str = "must be an object";
    const INTEGRAL_FLOATS: bool = true;
}

impl RequestBody for NewRollout {
    const NOT_AN_OBJECT: &'static str = "must be an object";
    const INTEGRAL_FLOATS: bool = true;
}

/// `PUT /api/pools/{pool}` body.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutPoolBody {
    /// Queues the pool serves (pool `default` always serves `default` and every queue no other pool lists).
    pub queues: Vec<QueueName>,
}

/// A queue's name: 1 to 255 characters.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[schema(pattern = "^[\\s\\S]{1,255}$")]
#[serde(transparent)]
pub struct QueueName(pub String);

/// `GET /api/pools` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolPage {
    /// Pools in name order.
    pub items: Vec<PoolView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Create a pool or replace its queues.
#[utoipa::path(
    put,
    path = "/api/pools/{pool}",
    tag = "pools",
    params(("pool" = String, Path, pattern = "^[a-zA-Z0-9._-]{1,63}$", description = "Pool name")),
    request_body = PutPoolBody,
    responses(
        (status = 200, description = "The pool", body = WorkerPool),
        (status = 409, description = "A queue already belongs to another pool", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
    ),
    security(("admin" = []))
)]
#[tracing::instrument(skip_all, fields(pool = %pool))]
pub async fn put(
    admin: Admin,
    state: axum::extract::State<AppState>,
    ApiPath(pool): ApiPath<String>,
    Body(body): Body<PutPoolBody>,
) -> Result<Json<WorkerPool>, ApiError> {
    let queues: Vec<String> = body.queues.into_iter().map(|q| q.0).collect();
    let mut tx = state.admin_pool().begin().await?;
    let out = rollout::put_pool(&mut *tx, &pool, &queues).await?;
    audit::record(&mut tx, admin.actor(), "pool.put", &pool).await?;
    tx.commit().await?;
    Ok(Json(out))
}

/// Every pool with its versions: role, weight, live workers and depth.
#[utoipa::path(
    get,
    path = "/api/pools",
    tag = "pools",
    params(
        Page,
    ),
    responses(
        (status = 200, description = "Pools", body = PoolPage),
        (status = 422, description = "Invalid limit", body = Problem),
    ),
    security(("admin" = []))
)]
#[tracing::instrument(skip_all)]
pub async fn list(_: Admin, state: axum::extract::State<AppState>, page: Page) -> Result<Json<PoolPage>, ApiError> {
    let all = rollout::list_pools(state.admin_pool(), LIVE_WORKER).await?;
    let (items, next_cursor) = page.of(all, |p| &p.pool);
    Ok(Json(PoolPage { items, next_cursor }))
}

/// Set a pool's scaling policy.
#[utoipa::path(
    put,
    path = "/api/pools/{pool}/scaling",
    tag = "pools",
    params(("pool" = String, Path, pattern = "^[a-zA-Z0-9._-]{1,63}$", description = "Pool name")),
    request_body = ScaleTarget,
    responses(
        (status = 200, description = "The policy", body = ScaleTarget),
        (status = 404, description = "No such pool", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
    ),
    security(("admin" = []))
)]
#[tracing::instrument(skip_all, fields(pool = %pool))]
pub async fn put_scaling(
    admin: Admin,
    state: axum::extract::State<AppState>,
    ApiPath(pool): ApiPath<String>,
    Body(target): Body<ScaleTarget>,
) -> Result<Json<ScaleTarget>, ApiError> {
    let mut tx = state.admin_pool().begin().await?;
    let out = autoscale::put_target(&mut *tx, &pool, &target).await?;
    audit::record(&mut tx, admin.actor(), "scaling.put", &pool).await?;
    tx.commit().await?;
    Ok(Json(out))
}

/// Start a canary of a new version of a pool.
#[utoipa::path(
    post,
    path = "/api/rollouts",
    tag = "pools",
    request_body = NewRollout,
    responses(
        (status = 201, description = "The rollout", body = Rollout),
        (status = 404, description = "No such pool", body = Problem),
        (status = 409, description = "An active rollout exists, no stable version to roll out from, or nothing would run the new version (no live worker of it and no scaling policy for the pool)", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
    ),
    security(("admin" = []))
)]
#[tracing::instrument(skip_all)]
pub async fn create_rollout(
    admin: Admin,
    state: axum::extract::State<AppState>,
    Body(req): Body<NewRollout>,
) -> Result<(StatusCode, Json<Rollout>), ApiError> {
    check_servable(&state, &req).await?;
    let mut tx = state.admin_pool().begin().await?;
    let out = rollout::start(&mut *tx, &req).await?;
    audit::record(&mut tx, admin.actor(), "rollout.start", &out.id.to_string()).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(out)))
}

/// Refuses a canary that nothing would run: its share of new work would wait for a version with no live worker
/// and no autoscaler policy to start one. A 409, not a 422: the request is well formed and becomes acceptable once
/// a worker of the version runs (or the pool gets a scaling policy), so it conflicts with the cluster's state.
async fn check_servable(state: &AppState, req: &NewRollout) -> Result<(), ApiError> {
    // Invalid fields (422) and an unknown pool (404) say more than "nothing would run it".
    req.validate()?;
    if rollout::pool_queues(state.admin_pool(), &req.pool).await?.is_none() {
        return Err(rollout::Error::PoolNotFound { pool: req.pool.clone() }.into());
    }
    let live = crate::queue::live_workers(state.admin_pool(), LIVE_WORKER).await?;
    if live
        .iter()
        .any(|w| w.pool == req.pool && w.version == req.version && !w.stopping)
    {
        return Ok(());
    }
    match autoscale::get_target(state.admin_pool(), &req.pool).await? {
        Some(t) if t.max > 0 => Ok(()),
        _ => Err(ApiError::Conflict {
            detail: format!(
                "no live worker of pool {:?} runs version {:?}, and the pool has no scaling policy to start one: \
             its share of new work would wait; start `ordo worker --pool {} --version {}` (or set \
             PUT /api/pools/{}/scaling) first",
                req.pool, req.version, req.pool, req.version, req.pool
            ),
            errors: vec![FieldError::new("/version", "no live worker runs it")],
        }),
    }
}

fn rollout_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("rollout {id} not found")))
}

/// `GET /api/rollouts` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutPage {
    /// Rollouts, newest first.
    pub items: Vec<Rollout>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// List rollouts, newest first (`pool`, `state`, `limit` and `cursor` as every list).
#[utoipa::path(
    get,
    path = "/api/rollouts",
    tag = "pools",
    params(
        ("pool" = Option<String>, Query, description = "Only this pool"),
        ("state" = Option<RolloutState>, Query, description = "Only rollouts in this state"),
        IdPage,
        ("after" = Option<String>, Query, pattern = "^[1-9][0-9]{0,17}$", description = "The same as `cursor` (its earlier name)"),
    ),
    responses(
        (status = 200, description = "Rollouts", body = RolloutPage),
        (status = 422, description = "Invalid parameter", body = Problem),
    ),
    security(("admin" = []))
)]
#[tracing::instrument(skip_all)]
pub async fn list_rollouts(
    _: Admin,
    state: axum::extract::State<AppState>,
    q: super::extract::QueryParams,
) -> Result<Json<RolloutPage>, ApiError> {
    let rollout_state = match q.given("state") {
        None => None,
        Some(s) => Some(
            s.parse::<RolloutState>()
                .map_err(|_| ApiError::invalid("/query/state", "must be canary, promoted, completed or aborted"))?,
        ),
    };
    let page = IdPage::read(&q)?;
    // `after` was this list's cursor before it took `cursor` like every list; both are still read.
    let before = match page.cursor {
        Some(c) => Some(c),
        None => id_cursor(&q, "after")?,
    };
    let mut items = rollout::list(state.admin_pool(), q.get("pool"), rollout_state, before, page.limit + 1).await?;
    let next_cursor = next_page(&mut items, page.limit, |r| r.id.to_string());
    Ok(Json(RolloutPage { items, next_cursor }))
}

/// Read one rollout.
#[utoipa::path(
    get,
    path = "/api/rollouts/{id}",
    tag = "pools",
    params(("id" = String, Path, description = "Rollout id")),
    responses(
        (status = 200, description = "The rollout", body = Rollout),
        (status = 404, description = "No such rollout", body = Problem),
    ),
    security(("admin" = []))
)]
#[tracing::instrument(skip_all, fields(rollout.id = %id))]
pub async fn get_rollout(
    _: Admin,
    state: axum::extract::State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Rollout>, ApiError> {
    Ok(Json(rollout::get(state.admin_pool(), rollout_id(&id)?).await?))
}

/// Promote a canary: all new work goes to the new version; the old one drains and is then retired.
#[utoipa::path(
    post,
    path = "/api/rollouts/{id}/promote",
    tag = "pools",
    params(("id" = String, Path, description = "Rollout id")),
    responses(
        (status = 200, description = "The rollout", body = Rollout),
        (status = 404, description = "No such rollout", body = Problem),
        (status = 409, description = "Not a canary", body = Problem),
    ),
    security(("admin" = []))
)]
#[tracing::instrument(skip_all, fields(rollout.id = %id))]
pub async fn promote(
    admin: Admin,
    state: axum::extract::State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Rollout>, ApiError> {
    let id = rollout_id(&id)?;
    let mut tx = state.admin_pool().begin().await?;
    let out = rollout::promote(&mut *tx, id).await?;
    audit::record(&mut tx, admin.actor(), "rollout.promote", &id.to_string()).await?;
    tx.commit().await?;
    Ok(Json(out))
}

/// Abort a rollout: the new version's unstarted work returns to the old version.
#[utoipa::path(
    post,
    path = "/api/rollouts/{id}/abort",
    tag = "pools",
    params(("id" = String, Path, description = "Rollout id")),
    responses(
        (status = 200, description = "The rollout", body = Rollout),
        (status = 404, description = "No such rollout", body = Problem),
        (status = 409, description = "Already completed or aborted", body = Problem),
    ),
    security(("admin" = []))
)]
#[tracing::instrument(skip_all, fields(rollout.id = %id))]
pub async fn abort(
    admin: Admin,
    state: axum::extract::State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Rollout>, ApiError> {
    let id = rollout_id(&id)?;
    let mut tx = state.admin_pool().begin().await?;
    let out = rollout::abort(&mut *tx, id, None).await?;
    audit::record(&mut tx, admin.actor(), "rollout.abort", &id.to_string()).await?;
    tx.commit().await?;
    Ok(Json(out))
}

/// A live worker and the jobs it runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerView {
    /// The worker's registration (`id`, `pool`, `version`, `queues`, `kinds`, `host`, `pid`, `concurrency`,
    /// `started_at`, `heartbeat_at`, `stopping`).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub worker: crate::queue::WorkerInfo,
    /// Jobs it holds now.
    pub running: i64,
}

/// `GET /api/workers` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerPage {
    /// Live workers in id order.
    pub items: Vec<WorkerView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// List the live workers (heartbeat within three intervals) with their pool, version, host, kinds and running
/// jobs.
#[utoipa::path(
    get,
    path = "/api/workers",
    tag = "pools",
    params(
        ("pool" = Option<String>, Query, description = "Only this pool"),
        Page,
    ),
    responses(
        (status = 200, description = "Live workers", body = WorkerPage),
        (status = 422, description = "Invalid parameter", body = Problem),
    ),
    security(("admin" = []))
)]
#[tracing::instrument(skip_all)]
pub async fn workers(
    _: Admin,
    state: axum::extract::State<AppState>,
    q: QueryParams,
) -> Result<Json<WorkerPage>, ApiError> {
    let page = Page::read(&q)?;
    let live = crate::queue::live_workers(state.admin_pool(), LIVE_WORKER).await?;
    let running: std::collections::HashMap<String, i64> = crate::queue::running_by_worker(state.admin_pool())
        .await?
        .into_iter()
        .collect();
    let items: Vec<WorkerView> = live
        .into_iter()
        .filter(|w| q.get("pool").is_none_or(|p| w.pool == p))
        .map(|w| WorkerView {
            running: running.get(&w.id).copied().unwrap_or(0),
            worker: w,
        })
        .collect();
    let (items, next_cursor) = page.of(items, |w| &w.worker.id);
    Ok(Json(WorkerPage { items, next_cursor }))
}
