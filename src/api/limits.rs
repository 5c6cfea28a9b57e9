//! `/api/accounts/{id}/limits` (admin): an account's fair-share weight and its limits (CONTRACT §12).

use std::collections::BTreeMap;

use axum::Json;
use utoipa::openapi::schema::{Object, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::Ref;
use utoipa::ToSchema;

use super::accounts::account_id;
use super::auth::Admin;
use super::error::{ApiError, Problem};
use super::extract::{ApiPath, JsonBody};
use super::AppState;
use crate::queue::{self, Limits};

/// An account's weight and limits.
#[derive(Debug, ToSchema)]
#[schema(as = Limits)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct LimitsBody {
    /// Share of each queue against the other accounts with waiting work there, 1..10000 (default 1).
    #[schema(minimum = 1, maximum = 10000)]
    weight: Option<i32>,
    /// Per queue: at most `max_running` of the account's jobs of the queue leased at once.
    #[schema(schema_with = by_name::<QueueLimitBody>)]
    queues: Option<BTreeMap<String, QueueLimitBody>>,
    /// Per kind, in every queue: at most `max_running` leased at once, at most `max_per_second` started in any
    /// one second.
    #[schema(schema_with = by_name::<KindLimitBody>)]
    kinds: Option<BTreeMap<String, KindLimitBody>>,
}

/// A map from queue or kind names (1 to 255 characters) to their limits, or null.
fn by_name<T: ToSchema>() -> Object {
    let name = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(255));
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .property_names(Some(name))
        .additional_properties(Some(Ref::from_schema_name(T::name())))
        .build()
}

/// A limit on an account's jobs of one queue.
#[derive(Debug, ToSchema)]
#[schema(as = QueueLimit)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct QueueLimitBody {
    /// 1..1000000.
    #[schema(minimum = 1, maximum = 1000000)]
    max_running: i32,
}

/// Limits on an account's jobs of one kind (at least one of the two).
#[derive(Debug, ToSchema)]
#[schema(as = KindLimit)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct KindLimitBody {
    /// 1..1000000.
    #[schema(minimum = 1, maximum = 1000000)]
    max_running: Option<i32>,
    /// 1..1000000.
    #[schema(minimum = 1, maximum = 1000000)]
    max_per_second: Option<i32>,
}

/// Read an account's weight and limits (the defaults when none were set).
#[utoipa::path(
    get,
    path = "/api/accounts/{id}/limits",
    tag = "accounts",
    params(("id" = String, Path, description = "Account id")),
    responses(
        (status = 200, description = "The account's weight and limits", body = LimitsBody),
        (status = 404, description = "Unknown account", body = Problem),
    ),
    security(("admin" = []))
)]
#[tracing::instrument(skip_all, fields(account = %id))]
pub async fn get(
    _: Admin,
    state: axum::extract::State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Limits>, ApiError> {
    let account = account_id(&id)?;
    let mut conn = state.admin_pool().acquire().await?;
    let limits = queue::get_limits(&mut conn, &account).await?;
    Ok(Json(limits))
}

/// Replace an account's weight and limits: fields left out go back to their defaults (weight 1, no limits).
#[utoipa::path(
    put,
    path = "/api/accounts/{id}/limits",
    tag = "accounts",
    params(("id" = String, Path, description = "Account id")),
    request_body = LimitsBody,
    responses(
        (status = 200, description = "The account's weight and limits now", body = LimitsBody),
        (status = 404, description = "Unknown account", body = Problem),
        (status = 422, description = "Invalid limits", body = Problem),
    ),
    security(("admin" = []))
)]
#[tracing::instrument(skip_all, fields(account = %id))]
pub async fn put(
    admin: Admin,
    state: axum::extract::State<AppState>,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Limits>, ApiError> {
    let account = account_id(&id)?;
    let limits = Limits::from_json(&body).map_err(ApiError::Invalid)?;
    let mut tx = state.admin_pool().begin().await?;
    let limits = queue::put_limits(&mut tx, &account, &limits).await?;
    crate::audit::record(&mut tx, admin.actor(), "limits.put", account.as_str()).await?;
    tx.commit().await?;
    tracing::info!(
        weight = limits.weight,
        queues = limits.queues.len(),
        kinds = limits.kinds.len(),
        "limits set"
    );
    Ok(Json(limits))
}

/// A queue limit and its use now.
#[derive(Debug, ToSchema)]
#[schema(as = QueueUsage)]
#[allow(dead_code)]
pub struct QueueUsageBody {
    /// The limit.
    max_running: i32,
    /// The account's jobs of the queue leased now (running, or fetched ahead by a worker).
    running: i64,
}

/// A kind's limits and their use now.
#[derive(Debug, ToSchema)]
#[schema(as = KindUsage)]
#[allow(dead_code)]
pub struct KindUsageBody {
    /// The running limit, if any.
    max_running: Option<i32>,
    /// The rate limit, if any.
    max_per_second: Option<i32>,
    /// The account's jobs of the kind leased now.
    running: i64,
    /// Started within the last second (rate-limited kinds only).
    started_last_second: i64,
}

/// An account's limits with their use now.
#[derive(Debug, ToSchema)]
#[schema(as = Usage)]
#[allow(dead_code)]
pub struct UsageBody {
    /// The account's weight.
    weight: i32,
    /// Per limited queue.
    queues: BTreeMap<String, QueueUsageBody>,
    /// Per limited kind.
    kinds: BTreeMap<String, KindUsageBody>,
}

/// Read an account's limits with what it uses of them now (running jobs against each limit).
#[utoipa::path(
    get,
    path = "/api/accounts/{id}/usage",
    tag = "accounts",
    params(("id" = String, Path, description = "Account id")),
    responses(
        (status = 200, description = "The account's limits and their use", body = UsageBody),
        (status = 404, description = "Unknown account", body = Problem),
    ),
    security(("admin" = []))
)]
#[tracing::instrument(skip_all, fields(account = %id))]
pub async fn usage(
    _: Admin,
    state: axum::extract::State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<queue::Usage>, ApiError> {
    let account = account_id(&id)?;
    let mut conn = state.admin_pool().acquire().await?;
    let usage = queue::usage(&mut conn, &account).await?;
    Ok(Json(usage))
}
