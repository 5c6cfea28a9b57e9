//! Workflows, rules, entities and events over HTTP (CONTRACT §5), on `ordo::orchestration`.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::auth::Tenant;
use super::body::{field, Body, RequestBody};
use super::error::{ApiError, Problem};
use super::extract::{
    id_cursor, idempotency_key, same_idempotency_key, ApiPath, IdPage, Limit, Page, QueryParams, REPLAYED_HEADER,
};
use crate::orchestration::{self, EventFilter, EventKind, EventStatus, NewEntity, NewEvent, Version};
use crate::queue::{FieldError, Queue};

/// Longest wait of `POST /api/events/sync`.
const MAX_SYNC_TIMEOUT_MS: u64 = 60_000;

// A workflow body is checked by `orchestration::workflow`, which names every problem of it at once.
/// A JSON document of the orchestration API (workflow, entity, event, page, …); see CONTRACT §5 for its fields.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = OrchestrationDocument, value_type = Object)]
pub struct Document(Value);

impl RequestBody for Document {}

/// `POST /api/entities` body.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = NewEntity)]
#[serde(deny_unknown_fields)]
pub struct NewEntityBody {
    /// Entity type; with `subtype` it names the workflow `TYPE::SUBTYPE` the entity follows, which must exist.
    #[serde(rename = "type", deserialize_with = "field::nonempty")]
    #[schema(min_length = 1, max_length = 255, pattern = "^(:?[^:])*:?$")]
    entity_type: String,
    /// Subtype (no `::` either).
    #[serde(deserialize_with = "field::nonempty")]
    #[schema(min_length = 1, max_length = 255, pattern = "^(:?[^:])*:?$")]
    subtype: String,
    /// The entity's own reference, unique per type.
    #[serde(rename = "ref", deserialize_with = "field::nonempty")]
    #[schema(min_length = 1, max_length = 255)]
    entity_ref: String,
    /// Initial status, one the workflow declares (default: its first).
    #[serde(default, deserialize_with = "field::opt_nonempty")]
    #[schema(min_length = 1)]
    status: Option<String>,
    /// Attributes.
    #[serde(default, deserialize_with = "field::opt_attributes")]
    attributes: Option<Map<String, Value>>,
}

impl RequestBody for NewEntityBody {}

/// The entity an event is about.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = EventEntity)]
#[serde(expecting = "an object {type, ref}")]
pub struct EventEntityBody {
    /// Entity type.
    #[serde(rename = "type", deserialize_with = "field::nonempty")]
    #[schema(min_length = 1)]
    entity_type: String,
    /// Entity ref.
    #[serde(rename = "ref", deserialize_with = "field::nonempty")]
    #[schema(min_length = 1)]
    entity_ref: String,
}

/// `POST /api/events` and `POST /api/events/sync` body.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = NewEvent)]
#[serde(deny_unknown_fields)]
pub struct NewEventBody {
    /// Event name, e.g. `CREATE`.
    #[serde(deserialize_with = "field::nonempty")]
    #[schema(min_length = 1, max_length = 255)]
    name: String,
    /// The entity, which must exist.
    entity: EventEntityBody,
    /// Attributes.
    #[serde(default, deserialize_with = "field::opt_attributes")]
    attributes: Option<Map<String, Value>>,
    /// Run it then instead of now (RFC 3339).
    #[serde(default, deserialize_with = "field::opt_time")]
    scheduled_at: Option<DateTime<Utc>>,
    /// Per-account deduplication key (or the `Idempotency-Key` header).
    #[serde(default, deserialize_with = "field::opt_nonempty")]
    #[schema(min_length = 1)]
    idempotency_key: Option<String>,
}

impl RequestBody for NewEventBody {}

/// The queue of an account request: its transactions run as the account under row-level security.
fn queue(tenant: &Tenant) -> Queue {
    Queue::for_accounts(tenant.state().pool().clone(), tenant.state().waker().clone())
}

fn json<T: Serialize>(status: StatusCode, body: T) -> Response {
    (status, Json(body)).into_response()
}

/// Upload a new immutable version of the workflow `TYPE::SUBTYPE`.
#[utoipa::path(
    put,
    path = "/api/workflows/{ref}",
    tag = "orchestration",
    params(
        ("ref" = String, Path, description = "TYPE::SUBTYPE"),
        ("major" = Option<bool>, Query, description = "Start a new major version"),
    ),
    request_body = Document,
    responses(
        (status = 201, description = "The new version", body = Document),
        (status = 200, description = "Unchanged from the latest version (and not ?major=true): that version, no new one", body = Document),
        (status = 422, description = "Every problem of the workflow", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn put_workflow(
    tenant: Tenant,
    ApiPath(reference): ApiPath<String>,
    q: QueryParams,
    Body(Document(body)): Body<Document>,
) -> Result<Response, ApiError> {
    let major = match q.given("major") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::invalid("/query/major", "must be true or false")),
    };
    let rules = ordo_workers::rules::registry();
    let mut tx = tenant.begin().await?;
    let (w, created) =
        orchestration::workflow::put_workflow_if_changed(&mut tx, &tenant.account, &reference, &body, major, &rules)
            .await?;
    tx.commit().await?;
    // An unchanged upload answers with the version it matches: 200, as a replay, not 201.
    Ok(json(if created { StatusCode::CREATED } else { StatusCode::OK }, w))
}

/// List workflows (latest version of each).
#[utoipa::path(
    get,
    path = "/api/workflows",
    tag = "orchestration",
    params(
        Page,
    ),
    responses((status = 200, description = "A page of workflows", body = Document)),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn list_workflows(tenant: Tenant, page: Page) -> Result<Response, ApiError> {
    let mut tx = tenant.begin().await?;
    let page = orchestration::list_workflows(&mut *tx, &tenant.account, page.limit, page.cursor.as_deref()).await?;
    tx.commit().await?;
    Ok(json(StatusCode::OK, page))
}

/// The latest version of a workflow.
#[utoipa::path(
    get,
    path = "/api/workflows/{ref}",
    tag = "orchestration",
    params(("ref" = String, Path, description = "TYPE::SUBTYPE")),
    responses(
        (status = 200, description = "The latest version", body = Document),
        (status = 404, description = "No such workflow", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn get_workflow(tenant: Tenant, ApiPath(reference): ApiPath<String>) -> Result<Response, ApiError> {
    let mut tx = tenant.begin().await?;
    let w = orchestration::get_workflow(&mut *tx, &tenant.account, &reference, None).await?;
    tx.commit().await?;
    Ok(json(StatusCode::OK, w))
}

/// One version of a workflow.
#[utoipa::path(
    get,
    path = "/api/workflows/{ref}/versions/{version}",
    tag = "orchestration",
    params(
        ("ref" = String, Path, description = "TYPE::SUBTYPE"),
        ("version" = String, Path, description = "e.g. 1.0"),
    ),
    responses(
        (status = 200, description = "That version", body = Document),
        (status = 404, description = "No such workflow or version", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn get_workflow_version(
    tenant: Tenant,
    ApiPath((reference, version)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let version: Version = version
        .parse()
        .map_err(|_| ApiError::NotFound(format!("workflow {reference} version {version} not found")))?;
    let mut tx = tenant.begin().await?;
    let w = orchestration::get_workflow(&mut *tx, &tenant.account, &reference, Some(version)).await?;
    tx.commit().await?;
    Ok(json(StatusCode::OK, w))
}

/// Every rule a workflow may use, with the JSON Schema of its props.
#[utoipa::path(
    get,
    path = "/api/rules",
    tag = "orchestration",
    params(
        Page,
    ),
    responses(
        (status = 200, description = "The rule registry in name order", body = Document),
        (status = 422, description = "Invalid limit", body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn rules(_tenant: Tenant, page: Page) -> Result<Response, ApiError> {
    let all: Vec<(String, Value)> = ordo_workers::rules::registry()
        .rules()
        .into_iter()
        .map(|r| (r.name.to_owned(), serde_json::to_value(r).unwrap_or(Value::Null)))
        .collect();
    let (items, next_cursor) = page.of(all, |(name, _)| name);
    let items: Vec<Value> = items.into_iter().map(|(_, v)| v).collect();
    Ok(json(
        StatusCode::OK,
        serde_json::json!({"items": items, "next_cursor": next_cursor}),
    ))
}

/// Create an entity; its `CREATE` event is queued.
#[utoipa::path(
    post,
    path = "/api/entities",
    tag = "orchestration",
    request_body = NewEntityBody,
    responses(
        (status = 201, description = "The entity", body = Document),
        (status = 404, description = "No workflow TYPE::SUBTYPE", body = Problem),
        (status = 409, description = "type + ref exists", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn create_entity(
    tenant: Tenant,
    headers: HeaderMap,
    Body(body): Body<NewEntityBody>,
) -> Result<Response, ApiError> {
    let mut new = NewEntity::new(body.entity_type, body.subtype, body.entity_ref);
    new.status = body.status;
    new.attributes = body.attributes.map(Value::Object);
    new.traceparent = super::jobs::traceparent(&headers);
    let (entity, _) = orchestration::create_entity(&queue(&tenant), &tenant.account, new).await?;
    Ok(json(StatusCode::CREATED, entity))
}

/// List entities in `(type, ref)` order: by type, ref prefix and status, paged by cursor.
#[utoipa::path(
    get,
    path = "/api/entities",
    tag = "orchestration",
    params(
        ("type" = Option<String>, Query, description = "Only this entity type"),
        ("ref_prefix" = Option<String>, Query, description = "Only refs starting with this"),
        ("status" = Option<String>, Query, description = "Only this status"),
        Limit,
        ("cursor" = Option<String>, Query, pattern = "::", description = "next_cursor of the previous page (`TYPE::ref`)"),
    ),
    responses(
        (status = 200, description = "A page of entities", body = Document),
        (status = 422, description = "Invalid parameter", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn list_entities(tenant: Tenant, q: QueryParams) -> Result<Response, ApiError> {
    let Limit { limit } = Limit::read(&q)?;
    let filter = orchestration::EntityFilter {
        entity_type: q.get("type").map(str::to_owned),
        ref_prefix: q.get("ref_prefix").map(str::to_owned),
        status: q.get("status").map(str::to_owned),
    };
    let mut tx = tenant.begin().await?;
    let page = orchestration::list_entities(&mut *tx, &tenant.account, &filter, limit, q.given("cursor")).await?;
    tx.commit().await?;
    Ok(json(StatusCode::OK, page))
}

/// Read an entity.
#[utoipa::path(
    get,
    path = "/api/entities/{type}/{ref}",
    tag = "orchestration",
    params(("type" = String, Path, description = "Entity type"), ("ref" = String, Path, description = "Entity ref")),
    responses(
        (status = 200, description = "The entity", body = Document),
        (status = 404, description = "No such entity in this account", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn get_entity(tenant: Tenant, ApiPath((t, r)): ApiPath<(String, String)>) -> Result<Response, ApiError> {
    let mut tx = tenant.begin().await?;
    let e = orchestration::get_entity(&mut *tx, &tenant.account, &t, &r).await?;
    tx.commit().await?;
    Ok(json(StatusCode::OK, e))
}

/// The event of a body, its idempotency key from the field or the header (not two different ones).
fn new_event(body: NewEventBody, headers: &HeaderMap) -> Result<NewEvent, ApiError> {
    let header_key = idempotency_key(headers).map_err(|e| ApiError::Invalid(vec![e]))?;
    same_idempotency_key(body.idempotency_key.as_deref(), header_key.as_deref())
        .map_err(|e| ApiError::Invalid(vec![e]))?;
    let mut e = NewEvent::new(body.name, body.entity.entity_type, body.entity.entity_ref);
    if let Some(a) = body.attributes {
        e = e.attributes(Value::Object(a));
    }
    e.scheduled_at = body.scheduled_at;
    e.idempotency_key = body.idempotency_key.or(header_key);
    e.traceparent = super::jobs::traceparent(headers);
    Ok(e)
}

/// Send an event (queued; `scheduled_at` makes it wait).
#[utoipa::path(
    post,
    path = "/api/events",
    tag = "orchestration",
    request_body = NewEventBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Idempotency key, instead of the body field")),
    responses(
        (status = 202, description = "Accepted: the event, pending or scheduled", body = Document),
        (status = 404, description = "Unknown entity", body = Problem),
        (status = 409, description = "Idempotency key used with a different event", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn send_event(
    tenant: Tenant,
    headers: HeaderMap,
    Body(body): Body<NewEventBody>,
) -> Result<Response, ApiError> {
    let e = new_event(body, &headers)?;
    let orchestration::Accepted { event, replayed, .. } =
        orchestration::send_event(&queue(&tenant), &tenant.account, e).await?;
    let mut res = json(StatusCode::ACCEPTED, event);
    if replayed {
        res.headers_mut()
            .insert(REPLAYED_HEADER, axum::http::HeaderValue::from_static("true"));
    }
    Ok(res)
}

/// Send an event and wait for its whole inline chain (504 past the deadline; the event still completes).
#[utoipa::path(
    post,
    path = "/api/events/sync",
    tag = "orchestration",
    request_body = NewEventBody,
    params(("timeout_ms" = Option<u64>, Query, minimum = 1, maximum = 60000, description = "Deadline in milliseconds (default 10000)")),
    responses(
        (status = 200, description = "The outcome", body = Document),
        (status = 404, description = "Unknown entity", body = Problem),
        (status = 504, description = "Past the deadline (problem with event_id)", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn send_event_sync(
    tenant: Tenant,
    headers: HeaderMap,
    q: QueryParams,
    Body(body): Body<NewEventBody>,
) -> Result<Response, ApiError> {
    let timeout_ms = match q.given("timeout_ms") {
        None => 10_000,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if (1..=MAX_SYNC_TIMEOUT_MS).contains(&n) => n,
            _ => return Err(ApiError::invalid("/query/timeout_ms", "must be 1 to 60000")),
        },
    };
    let e = new_event(body, &headers)?;
    let timeout = Duration::from_millis(timeout_ms);
    let out = tenant
        .state()
        .sync_events()
        .send(&queue(&tenant), &tenant.account, e, timeout)
        .await?;
    Ok(json(StatusCode::OK, out))
}

/// Read an event or audit record.
#[utoipa::path(
    get,
    path = "/api/events/{id}",
    tag = "orchestration",
    params(("id" = String, Path, description = "Event id")),
    responses(
        (status = 200, description = "The event", body = Document),
        (status = 404, description = "No such event in this account", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn get_event(tenant: Tenant, ApiPath(id): ApiPath<String>) -> Result<Response, ApiError> {
    let mut tx = tenant.begin().await?;
    let e = orchestration::get_event(&mut *tx, &tenant.account, &id).await?;
    tx.commit().await?;
    Ok(json(StatusCode::OK, e))
}

/// The event log, ascending `seq`, filtered.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "orchestration",
    params(
        ("entity_type" = Option<String>, Query, description = "Entity type"),
        ("entity_ref" = Option<String>, Query, description = "Entity ref"),
        ("name" = Option<String>, Query, description = "Event name"),
        ("kind" = Option<EventKind>, Query, description = "Orchestration events or audit records"),
        ("category" = Option<String>, Query, description = "Audit category"),
        ("status" = Option<EventStatus>, Query, description = "Event status"),
        ("source_event_id" = Option<String>, Query, description = "Records describing this event"),
        ("from" = Option<DateTime<Utc>>, Query, description = "RFC 3339, default 30 days ago"),
        ("to" = Option<DateTime<Utc>>, Query, description = "RFC 3339"),
        IdPage,
    ),
    responses(
        (status = 200, description = "A page of events", body = Document),
        (status = 422, description = "Invalid filter", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn list_events(tenant: Tenant, q: QueryParams) -> Result<Response, ApiError> {
    let Limit { limit } = Limit::read(&q)?;
    let mut errs = Vec::new();
    let time = |name: &str, errs: &mut Vec<FieldError>| match q.given(name) {
        None => None,
        Some(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                errs.push(FieldError::new(format!("/query/{name}"), "must be an RFC 3339 time"));
                None
            }
        },
    };
    let f = EventFilter {
        entity_type: q.get("entity_type").map(str::to_owned),
        entity_ref: q.get("entity_ref").map(str::to_owned),
        name: q.get("name").map(str::to_owned),
        kind: match q.given("kind").map(str::parse) {
            None => None,
            Some(Ok(k)) => Some(k),
            Some(Err(_)) => {
                errs.push(FieldError::new("/query/kind", "must be orchestration or audit"));
                None
            }
        },
        category: q.get("category").map(str::to_owned),
        status: match q.given("status").map(|s| (s, s.parse())) {
            None => None,
            Some((_, Ok(s))) => Some(s),
            Some((s, Err(_))) => {
                errs.push(FieldError::new(
                    "/query/status",
                    format!(
                        "unknown status {s:?}: must be one of pending, scheduled, running, success, no_match, \
                         failed, cancelled"
                    ),
                ));
                None
            }
        },
        source_event_id: q.get("source_event_id").map(str::to_owned),
        from: time("from", &mut errs),
        to: time("to", &mut errs),
    };
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    // The cursor after the filters, as the listing always checked them.
    let cursor = id_cursor(&q, "cursor")?.map(|seq| seq.to_string());
    let mut tx = tenant.begin().await?;
    let page = orchestration::list_events(&mut tx, &tenant.account, &f, limit, cursor.as_deref()).await?;
    tx.commit().await?;
    Ok(json(StatusCode::OK, page))
}

/// Replay a failed or unmatched event as a new event.
#[utoipa::path(
    post,
    path = "/api/events/{id}/replay",
    tag = "orchestration",
    params(("id" = String, Path, description = "Event id")),
    responses(
        (status = 202, description = "The new event", body = Document),
        (status = 404, description = "No such event", body = Problem),
        (status = 409, description = "Not failed or no_match", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn replay_event(tenant: Tenant, ApiPath(id): ApiPath<String>) -> Result<Response, ApiError> {
    let e = orchestration::replay_event(&queue(&tenant), &tenant.account, &id).await?;
    Ok(json(StatusCode::ACCEPTED, e))
}

/// Cancel a scheduled event.
#[utoipa::path(
    delete,
    path = "/api/events/{id}",
    tag = "orchestration",
    params(("id" = String, Path, description = "Event id")),
    responses(
        (status = 204, description = "Cancelled"),
        (status = 404, description = "No such event", body = Problem),
        (status = 409, description = "Not scheduled", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn cancel_event(tenant: Tenant, ApiPath(id): ApiPath<String>) -> Result<StatusCode, ApiError> {
    orchestration::cancel_event(&queue(&tenant), &tenant.account, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
