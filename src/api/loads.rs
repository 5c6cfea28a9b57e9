//! `/api/loads` and `/api/inventory`: high-volume batch data (CONTRACT §6). Batches are validated and stored by
//! [`crate::load::store`] in the account's transaction, with one job per chunk; workers do the rest.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::auth::Tenant;
use super::body::{field, Body, RequestBody, SentBody};
use super::error::{ApiError, Problem};
use super::extract::{idempotency_key, next_page, ApiPath, IdPage, Limit, QueryParams, REPLAYED_HEADER};
use crate::load::{self, store, Load, LoadDetail, Outcome, RecordResult};
use crate::queue::{self, FieldError};

/// `POST /api/loads` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLoadBody {
    /// Unique per account and UTC day.
    #[serde(deserialize_with = "field::nonempty")]
    #[schema(min_length = 1)]
    name: String,
}

impl RequestBody for NewLoadBody {}

/// `POST /api/loads/{id}/batches` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBatchBody {
    /// `upsert`.
    #[serde(rename = "action", deserialize_with = "upsert_action")]
    #[schema(pattern = "^upsert$")]
    _action: String,
    /// `inventory`.
    #[serde(rename = "entity_type", deserialize_with = "inventory_type")]
    #[schema(pattern = "^inventory$")]
    _entity_type: String,
    /// 1 to 5 000 records `{sku_ref, location_ref, qty}`; a record of another shape is refused on its own (its
    /// result says why), not the batch.
    #[serde(deserialize_with = "records")]
    #[schema(min_items = 1, max_items = 5000)]
    records: Vec<Value>,
}

impl RequestBody for NewBatchBody {
    /// More records than a batch holds is a 413, however the rest looks.
    fn admit(json: &Value) -> Result<(), ApiError> {
        match json.get("records").and_then(Value::as_array) {
            Some(r) if r.len() > load::MAX_RECORDS => Err(load::Error::TooManyRecords {
                max: load::MAX_RECORDS,
                got: r.len(),
            }
            .into()),
            _ => Ok(()),
        }
    }
}

/// The one value a field takes, as a string.
fn exactly<'de, D: Deserializer<'de>>(d: D, value: &str) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) if s == value => Ok(s),
        _ => Err(D::Error::custom(format!("must be {value:?}"))),
    }
}

fn upsert_action<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    exactly(d, "upsert")
}

fn inventory_type<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    exactly(d, "inventory")
}

/// A batch's records: a non-empty array (each record is checked on its own when the batch is processed).
fn records<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
    match Value::deserialize(d)? {
        Value::Array(r) if !r.is_empty() => Ok(r),
        Value::Array(_) => Err(D::Error::custom("must hold at least one record")),
        _ => Err(D::Error::custom("must be an array of records")),
    }
}

/// A page of loads.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoadPage {
    /// Loads, newest first.
    pub items: Vec<Load>,
    /// Cursor of the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// A page of record results.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultPage {
    /// Records in index order.
    pub items: Vec<RecordResult>,
    /// Cursor (`after`) of the next page; null on the last.
    pub next_cursor: Option<String>,
}

impl From<load::Error> for ApiError {
    fn from(e: load::Error) -> Self {
        use load::Error as L;
        match e {
            L::Invalid(errs) => ApiError::Invalid(errs.into()),
            e @ L::TooManyRecords { .. } => ApiError::PayloadTooLarge(e.to_string()),
            e @ (L::LoadNotFound { .. } | L::BatchNotFound { .. }) => ApiError::NotFound(e.to_string()),
            e @ L::LoadExists { .. } => ApiError::Conflict {
                detail: e.to_string(),
                errors: vec![FieldError::new("/name", "a load of this name is open today")],
            },
            e @ L::Closed { .. } => ApiError::Conflict {
                detail: e.to_string(),
                errors: Vec::new(),
            },
            e @ L::IdempotencyConflict { .. } => ApiError::Conflict {
                detail: e.to_string(),
                errors: vec![FieldError::new(
                    "/headers/idempotency-key",
                    "already used with a different batch",
                )],
            },
            L::Queue(e) => e.into(),
            L::Orchestration(e) => e.into(),
            L::Crypt(e) => e.into(),
            L::Database(e) => e.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

fn json_response<T: Serialize>(status: StatusCode, body: T) -> Response {
    (status, Json(body)).into_response()
}

/// Open a load for today (UTC).
#[utoipa::path(
    post,
    path = "/api/loads",
    tag = "loads",
    request_body = NewLoadBody,
    responses(
        (status = 201, description = "Opened", body = Load),
        (status = 409, description = "A load of that name is already open today (its id in detail)", body = Problem),
        (status = 422, description = "Invalid name", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn create(tenant: Tenant, Body(body): Body<NewLoadBody>) -> Result<Response, ApiError> {
    let name = body.name;
    let mut tx = tenant.begin().await?;
    let created = store::create_load(&mut *tx, &tenant.account, &name, Utc::now()).await?;
    tx.commit().await?;
    Ok(json_response(StatusCode::CREATED, created))
}

/// List the account's loads, newest first (`?name=` for one name's loads, today's first).
#[utoipa::path(
    get,
    path = "/api/loads",
    tag = "loads",
    params(
        ("name" = Option<String>, Query, description = "Only loads of this name"),
        IdPage,
    ),
    responses(
        (status = 200, description = "A page of loads", body = LoadPage),
        (status = 422, description = "Invalid limit or cursor", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn list(tenant: Tenant, q: QueryParams) -> Result<Json<LoadPage>, ApiError> {
    let IdPage { limit, cursor } = IdPage::read(&q)?;
    let cursor = cursor.map(|id| id.to_string());
    let mut tx = tenant.begin().await?;
    let mut items = store::list_loads(
        &mut *tx,
        &tenant.account,
        q.get("name"),
        cursor.as_deref(),
        limit + 1,
        Utc::now(),
    )
    .await?;
    tx.commit().await?;
    let next_cursor = next_page(&mut items, limit, |l| l.id.clone());
    Ok(Json(LoadPage { items, next_cursor }))
}

/// Read a load with its batches and their counts.
#[utoipa::path(
    get,
    path = "/api/loads/{id}",
    tag = "loads",
    params(("id" = String, Path, description = "Load id")),
    responses(
        (status = 200, description = "The load with its batches", body = LoadDetail),
        (status = 404, description = "No such load in this account", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn get(tenant: Tenant, ApiPath(id): ApiPath<String>) -> Result<Json<LoadDetail>, ApiError> {
    let mut tx = tenant.begin().await?;
    let detail = store::get_load(&mut tx, &tenant.account, &id, Utc::now()).await?;
    tx.commit().await?;
    Ok(Json(detail))
}

/// Send a batch of up to 5 000 records to an open load; workers process it (202). The same `Idempotency-Key`
/// again answers 200 with the same batch and `Idempotent-Replayed: true`.
#[utoipa::path(
    post,
    path = "/api/loads/{id}/batches",
    tag = "loads",
    request_body = NewBatchBody,
    params(
        ("id" = String, Path, description = "Load id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Deduplicates resends (per account)"),
    ),
    responses(
        (status = 202, description = "Accepted, pending", body = store::Batch),
        (status = 200, description = "Replay of an earlier send (header Idempotent-Replayed: true)", body = store::Batch),
        (status = 404, description = "No such load in this account", body = Problem),
        (status = 409, description = "The load is closed, or the key was used with a different batch", body = Problem),
        (status = 413, description = "More than 5 000 records or a body over 16 MiB", body = Problem),
        (status = 422, description = "Invalid action, entity_type or records", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn create_batch(
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    SentBody { body, json }: SentBody<NewBatchBody>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers).map_err(|e| ApiError::Invalid(vec![e]))?;
    // The payload compared on a replay is the request as sent, for this load.
    let fingerprint = queue::fingerprint(&json!({"load": id, "body": json}));
    let records = body.records;
    let new = store::NewBatch {
        records,
        idempotency_key: key,
        fingerprint,
    };
    let mut tx = tenant.begin().await?;
    let (batch, replayed) = store::create_batch(&mut tx, &tenant.account, &id, &new, Utc::now()).await?;
    tx.commit().await?;
    if replayed {
        let mut res = json_response(StatusCode::OK, batch);
        res.headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        return Ok(res);
    }
    tenant.state().waker().wake(load::QUEUE);
    Ok(json_response(StatusCode::ACCEPTED, batch))
}

/// Read a batch's status and counts.
#[utoipa::path(
    get,
    path = "/api/loads/{id}/batches/{batch_id}",
    tag = "loads",
    params(
        ("id" = String, Path, description = "Load id"),
        ("batch_id" = String, Path, description = "Batch id"),
    ),
    responses(
        (status = 200, description = "The batch's status and counts", body = store::Batch),
        (status = 404, description = "No such batch in this load and account", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn get_batch(
    tenant: Tenant,
    ApiPath((id, batch_id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let mut tx = tenant.begin().await?;
    let batch = store::get_batch(&mut *tx, &tenant.account, &id, &batch_id).await?;
    tx.commit().await?;
    Ok(json_response(StatusCode::OK, batch))
}

/// Per-record results of a batch in index order (processed records only).
#[utoipa::path(
    get,
    path = "/api/loads/{id}/batches/{batch_id}/results",
    tag = "loads",
    params(
        ("id" = String, Path, description = "Load id"),
        ("batch_id" = String, Path, description = "Batch id"),
        ("outcome" = Option<Outcome>, Query, description = "Only records with this outcome"),
        Limit,
        ("after" = Option<i32>, Query, minimum = 0, description = "Records after this index (next_cursor of the previous page)"),
        ("cursor" = Option<i32>, Query, minimum = 0, description = "The same as `after`"),
    ),
    responses(
        (status = 200, description = "{items: [{index, sku_ref, location_ref, outcome, message?}], next_cursor}", body = ResultPage),
        (status = 404, description = "No such batch in this load and account", body = Problem),
        (status = 422, description = "Invalid outcome, limit or cursor", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn results(
    tenant: Tenant,
    ApiPath((id, batch_id)): ApiPath<(String, String)>,
    q: QueryParams,
) -> Result<Json<ResultPage>, ApiError> {
    let Limit { limit } = Limit::read(&q)?;
    let outcome = match q.given("outcome") {
        None => None,
        Some(s) => Some(
            s.parse::<Outcome>()
                .ok()
                .ok_or_else(|| ApiError::invalid("/query/outcome", "must be changed, unchanged or failed"))?,
        ),
    };
    let after = match q.given("after").or_else(|| q.given("cursor")) {
        None => None,
        Some(s) => Some(
            s.parse::<i32>()
                .ok()
                .filter(|i| *i >= 0)
                .ok_or_else(|| ApiError::invalid("/query/after", "must be a record index"))?,
        ),
    };
    let mut tx = tenant.begin().await?;
    let mut items = store::results(&mut tx, &tenant.account, &id, &batch_id, outcome, after, limit + 1).await?;
    tx.commit().await?;
    let next_cursor = next_page(&mut items, limit, |r| r.index.to_string());
    Ok(Json(ResultPage { items, next_cursor }))
}

/// Read an inventory position.
#[utoipa::path(
    get,
    path = "/api/inventory/{sku_ref}/{location_ref}",
    tag = "loads",
    params(
        ("sku_ref" = String, Path, description = "Stock-keeping unit"),
        ("location_ref" = String, Path, description = "Location"),
    ),
    responses(
        (status = 200, description = "The position", body = crate::orchestration::InventoryPosition),
        (status = 404, description = "No such position in this account", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn inventory(
    tenant: Tenant,
    ApiPath((sku_ref, location_ref)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let mut tx = tenant.begin().await?;
    let p = crate::orchestration::get_position(&mut *tx, &tenant.account, &sku_ref, &location_ref).await?;
    tx.commit().await?;
    match p {
        Some(p) => Ok(json_response(StatusCode::OK, p)),
        None => Err(ApiError::NotFound(format!(
            "inventory position {sku_ref}@{location_ref} not found"
        ))),
    }
}
