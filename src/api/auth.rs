//! Who is calling: account keys, the admin token, and the account-scoped transaction.
//!
//! Keys are looked up by their SHA-256 hash as the connecting role (before any account is known); only then does a
//! [`Tenant`] open transactions as `ordo_api` with `ordo.account_id` set, so row-level security applies to
//! everything the handler does.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sqlx::{PgPool, Postgres, Transaction};

use super::error::ApiError;
use super::AppState;
use crate::tenancy::{self, AccountId, KeyOwner};

/// Resolved keys, so a busy client does not cost a lookup per request. Bounded: cleared when full.
pub(crate) struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], (KeyOwner, Instant)>>,
}

/// Most keys held in the cache before it is cleared.
const KEY_CACHE_MAX: usize = 10_000;

impl KeyCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        KeyCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, hash: &[u8; 32]) -> Option<KeyOwner> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(owner, _)| owner.clone())
    }

    fn put(&self, hash: [u8; 32], owner: KeyOwner) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= KEY_CACHE_MAX {
            entries.clear();
        }
        entries.insert(hash, (owner, Instant::now()));
    }

    /// Forgets a key at once (it was revoked on this node).
    pub(crate) fn forget(&self, hash: &[u8; 32]) {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).remove(hash);
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or(ApiError::Unauthorized("missing Authorization: Bearer <key>"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed Authorization header"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(ApiError::Unauthorized("malformed Authorization header"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthorized("malformed Authorization header"));
    }
    Ok(token.trim())
}

fn is_admin_token(state: &AppState, token: &str) -> bool {
    state
        .settings()
        .admin_token
        .as_deref()
        .is_some_and(|admin| tenancy::secrets_equal(admin, token))
}

async fn resolve_key(state: &AppState, token: &str) -> Result<Option<KeyOwner>, ApiError> {
    let hash = tenancy::hash_key(token);
    if let Some(owner) = state.keys().get(&hash) {
        return Ok(Some(owner));
    }
    let owner = tenancy::find_key(state.pool(), &hash).await?;
    if let Some(o) = &owner {
        state.keys().put(hash, o.clone());
    }
    Ok(owner)
}

/// An authenticated account: its key was valid, its region is this node's and it is within its rate limit.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// The account.
    pub account: AccountId,
    state: AppState,
}

impl Tenant {
    /// The API state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Opens a transaction scoped to the account: role `ordo_api`, `ordo.account_id` set (both transaction-local,
    /// so the pooled connection is clean again after commit or rollback).
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, ApiError> {
        Ok(begin_tenant(self.state.pool(), &self.account).await?)
    }
}

/// Opens a transaction as `ordo_api` with `ordo.account_id` set to `account` (both transaction-local); see
/// [`tenancy::begin_as`].
pub async fn begin_tenant(pool: &PgPool, account: &AccountId) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    tenancy::begin_as(pool, account).await
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        if is_admin_token(state, token) {
            return Err(ApiError::Forbidden(
                "the admin token cannot access account resources; use an account API key",
            ));
        }
        let owner = resolve_key(state, token)
            .await?
            .ok_or(ApiError::Unauthorized("unknown or revoked API key"))?;
        if owner.region != state.settings().region {
            return Err(ApiError::MisdirectedRegion(owner.region));
        }
        state.limiter().check(&owner.account).await?;
        tracing::Span::current().record("account", owner.account.as_str());
        Ok(Tenant {
            account: owner.account,
            state: state.clone(),
        })
    }
}

/// An administrator: the request carried `ORDO_ADMIN_TOKEN`. Admin handlers work on
/// [`AppState::admin_pool`] and record each change in the admin audit ([`crate::audit`]) in its transaction.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl Admin {
    /// Who changes made with this credential are recorded as: the token's kind, never the token.
    pub fn actor(self) -> crate::audit::Actor {
        crate::audit::Actor::Admin
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if state.settings().admin_token.is_none() {
            return Err(ApiError::Unauthorized("admin API disabled"));
        }
        let token = bearer(parts)?;
        if is_admin_token(state, token) {
            return Ok(Admin);
        }
        match resolve_key(state, token).await? {
            Some(_) => Err(ApiError::Forbidden("an account API key cannot access admin routes")),
            None => Err(ApiError::Unauthorized("bad admin token")),
        }
    }
}
