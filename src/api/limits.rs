//! `/api/accounts/{id}/limits` (admin): an account's fair-share weight and its limits (CONTRACT §12).

use std::collections::BTreeMap;

use axum::Json;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use utoipa::openapi::schema::{Object, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::Ref;
use utoipa::ToSchema;

use super::accounts::account_id;
use super::auth::Admin;
use super::body::{Body, RequestBody};
use super::error::{ApiError, Problem};
use super::extract::ApiPath;
use super::AppState;
use crate::queue::{self, FieldError, KindLimit, Limits, QueueLimit};

/// The largest weight (the queue's `MAX_WEIGHT`, which it does not export).
const MAX_WEIGHT: i32 = 10_000;
/// The largest `max_running` and `max_per_second` (the queue's `MAX_LIMIT`).
const MAX_LIMIT: i32 = 1_000_000;

// What `PUT` takes (fields left out go back to their defaults) and, for the document, what `GET` answers.
/// An account's weight and limits.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = Limits)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    /// Share of each queue against the other accounts with waiting work there, 1..10000 (default 1).
    #[serde(default, deserialize_with = "opt_bounded::<_, MAX_WEIGHT>")]
    #[schema(minimum = 1, maximum = 10000)]
    weight: Option<i32>,
    /// Per queue: at most `max_running` of the account's jobs of the queue leased at once.
    #[serde(default)]
    #[schema(schema_with = by_name::<QueueLimitBody>)]
    queues: Option<BTreeMap<String, QueueLimitBody>>,
    /// Per kind, in every queue: at most `max_running` leased at once, at most `max_per_second` started in any
    /// one second.
    #[serde(default)]
    #[schema(schema_with = by_name::<KindLimitBody>)]
    kinds: Option<BTreeMap<String, KindLimitBody>>,
}

impl RequestBody for LimitsBody {
    const NOT_AN_OBJECT: &'static str = "must be an object";

    fn check(&self, at: &str, errs: &mut Vec<FieldError>) {
        let queues = self.queues.iter().flatten().map(|(name, _)| ("queues", name));
        let kinds = self.kinds.iter().flatten().map(|(name, _)| ("kinds", name));
        for (section, name) in queues.chain(kinds) {
            if !(1..=255).contains(&name.chars().count()) {
                errs.push(FieldError::new(
                    format!("{at}/{section}/{name}"),
                    "names are 1 to 255 characters long",
                ));
            }
        }
        for (kind, limit) in self.kinds.iter().flatten() {
            if limit.max_running.is_none() && limit.max_per_second.is_none() {
                errs.push(FieldError::new(
                    format!("{at}/kinds/{kind}"),
                    "needs max_running or max_per_second",
                ));
            }
        }
    }
}

impl From<LimitsBody> for Limits {
    fn from(body: LimitsBody) -> Self {
        let queues = body.queues.unwrap_or_default().into_iter();
        let kinds = body.kinds.unwrap_or_default().into_iter();
        Limits {
            weight: body.weight.unwrap_or(1),
            queues: queues.map(|(q, l)| (q, l.into())).collect(),
            kinds: kinds.map(|(k, l)| (k, l.into())).collect(),
        }
    }
}

impl From<QueueLimitBody> for QueueLimit {
    fn from(l: QueueLimitBody) -> Self {
        QueueLimit {
            max_running: l.max_running,
        }
    }
}

impl From<KindLimitBody> for KindLimit {
    fn from(l: KindLimitBody) -> Self {
        KindLimit {
            max_running: l.max_running,
            max_per_second: l.max_per_second,
        }
    }
}

fn bounded_of<const MAX: i32>(v: &Value) -> Result<i32, String> {
    match crate::queue::json_integer(v) {
        Some(n) if (1..=i64::from(MAX)).contains(&n) => i32::try_from(n).map_err(|e| e.to_string()),
        Some(_) => Err(format!("must be between 1 and {MAX}")),
        None => Err(format!("must be an integer between 1 and {MAX}")),
    }
}

/// A whole number from 1 to `MAX`.
fn bounded<'de, D: Deserializer<'de>, const MAX: i32>(d: D) -> Result<i32, D::Error> {
    bounded_of::<MAX>(&Value::deserialize(d)?).map_err(D::Error::custom)
}

/// An optional [`bounded`] number (null is absent).
fn opt_bounded<'de, D: Deserializer<'de>, const MAX: i32>(d: D) -> Result<Option<i32>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => bounded_of::<MAX>(&v).map(Some).map_err(D::Error::custom),
    }
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
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = QueueLimit)]
#[serde(deny_unknown_fields)]
pub struct QueueLimitBody {
    /// 1..1000000.
    #[serde(deserialize_with = "bounded::<_, MAX_LIMIT>")]
    #[schema(minimum = 1, maximum = 1000000)]
    max_running: i32,
}

/// Limits on an account's jobs of one kind (at least one of the two).
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = KindLimit)]
#[serde(deny_unknown_fields)]
pub struct KindLimitBody {
    /// 1..1000000.
    #[serde(default, deserialize_with = "opt_bounded::<_, MAX_LIMIT>")]
    #[schema(minimum = 1, maximum = 1000000)]
    max_running: Option<i32>,
    /// 1..1000000.
    #[serde(default, deserialize_with = "opt_bounded::<_, MAX_LIMIT>")]
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
    Body(body): Body<LimitsBody>,
) -> Result<Json<Limits>, ApiError> {
    let account = account_id(&id)?;
    let limits = Limits::from(body);
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

/// Read an account's limits with what it uses of them now (running jobs against each limit).
#[utoipa::path(
    get,
    path = "/api/accounts/{id}/usage",
    tag = "accounts",
    params(("id" = String, Path, description = "Account id")),
    responses(
        (status = 200, description = "The account's limits and their use", body = queue::Usage),
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
