//! `/api/accounts` (admin): create accounts, list them, add and revoke API keys (CONTRACT §3).

use axum::http::StatusCode;
use axum::Json;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::Admin;
use super::body::{Body, RequestBody};
use super::error::{ApiError, Problem};
use super::extract::{ApiPath, Page};
use super::AppState;
use crate::audit;
use crate::tenancy::{self, Account, AccountId};

/// `POST /api/accounts` body.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = NewAccount)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountBody {
    /// Slug `[a-z0-9-]{1,63}`.
    #[serde(deserialize_with = "account_slug")]
    #[schema(value_type = String, pattern = "^[a-z0-9-]{1,63}$")]
    id: AccountId,
    /// Display name (default empty).
    #[serde(default, deserialize_with = "opt_text")]
    #[schema(max_length = 255)]
    name: Option<String>,
    /// Home region (default: this node's `ORDO_REGION`).
    #[serde(default, deserialize_with = "opt_region")]
    #[schema(min_length = 1, max_length = 255)]
    region: Option<String>,
}

impl RequestBody for CreateAccountBody {
    const NOT_AN_OBJECT: &'static str = "must be an object";
}

/// An account id: a slug, or what is wrong with it.
fn account_slug<'de, D: Deserializer<'de>>(d: D) -> Result<AccountId, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => AccountId::parse(&s).map_err(D::Error::custom),
        Value::Null => Err(D::Error::custom("is required")),
        _ => Err(D::Error::custom("must be a string")),
    }
}

/// An optional string of at most 255 characters.
fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) if s.chars().count() <= 255 => Ok(Some(s)),
        Value::String(_) => Err(D::Error::custom("must be at most 255 characters")),
        _ => Err(D::Error::custom("must be a string")),
    }
}

/// An optional region: [`opt_text`], not empty.
fn opt_region<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match opt_text(d)? {
        Some(r) if r.is_empty() => Err(D::Error::custom("must not be empty")),
        r => Ok(r),
    }
}

/// A created account with its secrets, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountCreated {
    /// Slug.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Home region.
    pub region: String,
    /// The first API key; only its hash is stored.
    pub api_key: String,
    /// Secret that signs this account's webhooks.
    pub webhook_secret: String,
}

/// A page of accounts.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountPage {
    /// Accounts ordered by id.
    pub items: Vec<Account>,
    /// Cursor of the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// A created API key, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCreated {
    /// Id of the key, to revoke it.
    pub key_id: String,
    /// The key.
    pub api_key: String,
}

/// Create an account with one API key and a webhook secret.
#[utoipa::path(
    post,
    path = "/api/accounts",
    tag = "accounts",
    request_body = CreateAccountBody,
    responses(
        (status = 201, description = "Created", body = AccountCreated),
        (status = 409, description = "The id is taken", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
    ),
    security(("admin" = []))
)]
#[tracing::instrument(skip_all)]
pub async fn create(
    admin: Admin,
    state: axum::extract::State<AppState>,
    Body(body): Body<CreateAccountBody>,
) -> Result<(StatusCode, Json<AccountCreated>), ApiError> {
    let id = body.id;
    let name = body.name.unwrap_or_default();
    let region = body.region.unwrap_or_else(|| state.settings().region.clone());
    let mut tx = state.admin_pool().begin().await?;
    let created = tenancy::create_account(&mut *tx, &id, &name, &region).await?;
    audit::record(&mut tx, admin.actor(), "account.create", id.as_str()).await?;
    tx.commit().await?;
    tracing::info!(account = %id, %region, "account created");
    Ok((
        StatusCode::CREATED,
        Json(AccountCreated {
            id: created.account.id,
            name: created.account.name,
            region: created.account.region,
            api_key: created.api_key,
            webhook_secret: created.webhook_secret,
        }),
    ))
}

/// List accounts by id.
#[utoipa::path(
    get,
    path = "/api/accounts",
    tag = "accounts",
    params(
        Page,
    ),
    responses(
        (status = 200, description = "A page of accounts", body = AccountPage),
        (status = 422, description = "Invalid limit", body = Problem),
    ),
    security(("admin" = []))
)]
#[tracing::instrument(skip_all)]
pub async fn list(_: Admin, state: axum::extract::State<AppState>, page: Page) -> Result<Json<AccountPage>, ApiError> {
    let (items, next_cursor) = tenancy::list_accounts(state.admin_pool(), page.cursor.as_deref(), page.limit).await?;
    Ok(Json(AccountPage { items, next_cursor }))
}

/// The account of a path: one whose id is not even well-formed is as unknown as any other (404).
pub(super) fn account_id(id: &str) -> Result<AccountId, ApiError> {
    AccountId::parse(id).map_err(|_| ApiError::NotFound(format!("account {id} not found")))
}

/// Delete an account: its data key is destroyed and its API keys revoked at once (401 from then on); its rows are
/// purged in the background by maintenance. Another account is never affected.
#[utoipa::path(
    delete,
    path = "/api/accounts/{id}",
    tag = "accounts",
    params(("id" = String, Path, description = "Account id")),
    responses(
        (status = 204, description = "Deleted; its data is purged in the background"),
        (status = 404, description = "Unknown account", body = Problem),
    ),
    security(("admin" = []))
)]
#[tracing::instrument(skip_all, fields(account = %id))]
pub async fn delete(
    admin: Admin,
    state: axum::extract::State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = account_id(&id)?;
    let mut tx = state.admin_pool().begin().await?;
    let hashes = tenancy::delete_account(&mut *tx, &id).await?;
    audit::record(&mut tx, admin.actor(), "account.delete", id.as_str()).await?;
    tx.commit().await?;
    for hash in hashes {
        state.keys().forget(&hash);
    }
    tracing::info!("account deleted; its data key is destroyed");
    Ok(StatusCode::NO_CONTENT)
}

/// Add an API key to an account.
#[utoipa::path(
    post,
    path = "/api/accounts/{id}/keys",
    tag = "accounts",
    params(("id" = String, Path, description = "Account id")),
    responses(
        (status = 201, description = "Created", body = KeyCreated),
        (status = 404, description = "Unknown account", body = Problem),
    ),
    security(("admin" = []))
)]
#[tracing::instrument(skip_all, fields(account = %id))]
pub async fn create_key(
    admin: Admin,
    state: axum::extract::State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<KeyCreated>), ApiError> {
    let id = account_id(&id)?;
    let mut tx = state.admin_pool().begin().await?;
    let key = tenancy::create_key(&mut *tx, &id).await?;
    audit::record(&mut tx, admin.actor(), "key.create", &format!("{id}/{}", key.key_id)).await?;
    tx.commit().await?;
    tracing::info!(key_id = %key.key_id, "api key created");
    Ok((
        StatusCode::CREATED,
        Json(KeyCreated {
            key_id: key.key_id,
            api_key: key.api_key,
        }),
    ))
}

/// Revoke an API key.
#[utoipa::path(
    delete,
    path = "/api/accounts/{id}/keys/{key_id}",
    tag = "accounts",
    params(
        ("id" = String, Path, description = "Account id"),
        ("key_id" = String, Path, description = "Key id"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "Unknown account or key", body = Problem),
    ),
    security(("admin" = []))
)]
#[tracing::instrument(skip_all, fields(account = %id, key_id = %key_id))]
pub async fn revoke_key(
    admin: Admin,
    state: axum::extract::State<AppState>,
    ApiPath((id, key_id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let account = account_id(&id)?;
    let mut tx = state.admin_pool().begin().await?;
    let hash = tenancy::revoke_key(&mut *tx, &account, &key_id).await?;
    audit::record(&mut tx, admin.actor(), "key.revoke", &format!("{account}/{key_id}")).await?;
    tx.commit().await?;
    state.keys().forget(&hash);
    tracing::info!("api key revoked");
    Ok(StatusCode::NO_CONTENT)
}
