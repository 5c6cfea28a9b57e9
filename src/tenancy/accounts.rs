//! Accounts and their API keys: every SQL statement on `account` and `api_key`.
//!
//! None of these runs in an account transaction (role `ordo_api`): authentication has to find a key before it knows
//! which account to scope to (the API's own connection may read keys and accounts for that, nothing else), and
//! creating, listing and deleting accounts and keys is admin work across tenants (role `ordo_admin` in the API).

use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::{Acquire, PgExecutor, PgPool, Postgres};
use subtle::ConstantTimeEq;

use super::{AccountId, Error, Result};

/// Prefix of every API key, so leaked keys are recognisable by secret scanners.
const KEY_PREFIX: &str = "ordo_";
/// Prefix of every webhook secret.
const WEBHOOK_SECRET_PREFIX: &str = "whsec_";

/// An account as listed to administrators (never with its secrets).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Account {
    /// Slug.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Home region: requests reaching a node of another region are refused with 421.
    pub region: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A freshly created account with the secrets shown exactly once.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// The account.
    pub account: Account,
    /// Its first API key (plain text; only the hash is stored).
    pub api_key: String,
    /// Its webhook signing secret.
    pub webhook_secret: String,
}

/// A freshly created API key, shown exactly once.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Id of the key, to revoke it.
    pub key_id: String,
    /// The key itself.
    pub api_key: String,
}

/// Who an API key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOwner {
    /// The account.
    pub account: AccountId,
    /// The account's home region.
    pub region: String,
}

/// SHA-256 of an API key: what is stored and looked up.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Compares two secrets in constant time (through their hashes, so lengths leak nothing either).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    hash_key(a).ct_eq(&hash_key(b)).into()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

/// A new 256-bit random API key.
pub fn generate_key() -> String {
    format!("{KEY_PREFIX}{}", random_hex(32))
}

/// A new 256-bit random webhook signing secret.
pub fn generate_webhook_secret() -> String {
    format!("{WEBHOOK_SECRET_PREFIX}{}", random_hex(32))
}

fn generate_key_id() -> String {
    format!("key_{}", random_hex(8))
}

/// The identity a webhook secret is sealed under (see [`crate::crypt`]).
fn secret_aad(account: &AccountId) -> crate::crypt::Aad<'_> {
    crate::crypt::Aad::new(account.as_str(), "account", &[], "webhook_secret")
}

/// Creates an account with one API key and a webhook secret; with encryption on, also its data key (in the same
/// transaction), which seals the secret.
pub async fn create_account<'a>(
    db: impl Acquire<'a, Database = Postgres>,
    id: &AccountId,
    name: &str,
    region: &str,
) -> Result<NewAccount> {
    let mut tx = db.begin().await?;
    let webhook_secret = generate_webhook_secret();
    let data_key = crate::crypt::new_account_key();
    let stored_secret = match &data_key {
        Some(k) => k.seal_text(&secret_aad(id), &webhook_secret),
        None => webhook_secret.clone(),
    };
    let account: Option<Account> = sqlx::query_as(
        r#"
        insert into account (id, name, region, webhook_secret)
        values ($1, $2, $3, $4)
        on conflict (id) do nothing
        returning id, name, region, created_at
        "#,
    )
    .bind(id.as_str())
    .bind(name)
    .bind(region)
    .bind(&stored_secret)
    .fetch_optional(&mut *tx)
    .await?;
    let account = account.ok_or_else(|| Error::AccountExists(id.clone()))?;
    if let Some(k) = &data_key {
        crate::crypt::store_account_key(&mut tx, id.as_str(), k).await?;
    }
    let key = insert_key(&mut *tx, id).await?;
    tx.commit().await?;
    if let Some(k) = data_key {
        crate::crypt::remember(id.as_str(), k);
    }
    Ok(NewAccount {
        account,
        api_key: key.api_key,
        webhook_secret,
    })
}

async fn insert_key<'e>(exec: impl PgExecutor<'e>, account: &AccountId) -> Result<NewKey> {
    let api_key = generate_key();
    let key_id = generate_key_id();
    sqlx::query("insert into api_key (account_id, id, key_hash) values ($1, $2, $3)")
        .bind(account.as_str())
        .bind(&key_id)
        .bind(hash_key(&api_key).as_slice())
        .execute(exec)
        .await?;
    Ok(NewKey { key_id, api_key })
}

/// Lists accounts ordered by id, after `after` (the previous page's cursor); returns the page and the next cursor.
pub async fn list_accounts(pool: &PgPool, after: Option<&str>, limit: i64) -> Result<(Vec<Account>, Option<String>)> {
    let mut rows: Vec<Account> = sqlx::query_as(
        r#"
        select id, name, region, created_at
        from account
        where ($1::text is null or id > $1)
          and deleted_at is null
        order by id
        limit $2
        "#,
    )
    .bind(after)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|a| a.id.clone())
    } else {
        None
    };
    Ok((rows, next))
}

/// Adds an API key to an existing account.
pub async fn create_key<'a>(db: impl Acquire<'a, Database = Postgres>, account: &AccountId) -> Result<NewKey> {
    let mut tx = db.begin().await?;
    // Lock the account row so a key is never added to an account being deleted concurrently.
    let exists: Option<String> =
        sqlx::query_scalar("select id from account where id = $1 and deleted_at is null for share")
            .bind(account.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_none() {
        return Err(Error::AccountNotFound(account.clone()));
    }
    let key = insert_key(&mut *tx, account).await?;
    tx.commit().await?;
    Ok(key)
}

/// Revokes a key; returns its hash so callers can drop it from caches. Revoking twice is `KeyNotFound`.
pub async fn revoke_key<'e>(exec: impl PgExecutor<'e>, account: &AccountId, key_id: &str) -> Result<[u8; 32]> {
    let hash: Option<Vec<u8>> = sqlx::query_scalar(
        r#"
        update api_key
        set revoked_at = now()
        where account_id = $1
          and id = $2
          and revoked_at is null
        returning key_hash
        "#,
    )
    .bind(account.as_str())
    .bind(key_id)
    .fetch_optional(exec)
    .await?;
    let hash = hash.ok_or_else(|| Error::KeyNotFound(key_id.to_owned()))?;
    hash.try_into().map_err(|_| Error::KeyNotFound(key_id.to_owned()))
}

/// Finds the live (unrevoked) key with this hash and its account's region.
pub async fn find_key<'e>(exec: impl PgExecutor<'e>, hash: &[u8; 32]) -> Result<Option<KeyOwner>> {
    let row: Option<(String, String)> = sqlx::query_as(
        r#"
        select a.id, a.region
        from api_key k
        join account a on a.id = k.account_id
        where k.key_hash = $1
          and k.revoked_at is null
          and a.deleted_at is null
        "#,
    )
    .bind(hash.as_slice())
    .fetch_optional(exec)
    .await?;
    match row {
        None => Ok(None),
        Some((id, region)) => Ok(Some(KeyOwner {
            account: AccountId::parse(&id).map_err(|e| Error::Corrupt(e.to_string()))?,
            region,
        })),
    }
}

/// Deletes an account: marks it deleted, revokes its API keys and destroys its data key, in one transaction, so
/// from its commit the keys answer 401 and whatever is left of its data (here or in backups) cannot be decrypted.
/// Its rows are purged afterwards by [`purge_deleted`]. Returns the hashes of the revoked keys, to drop from caches.
pub async fn delete_account<'a>(db: impl Acquire<'a, Database = Postgres>, id: &AccountId) -> Result<Vec<[u8; 32]>> {
    let mut tx = db.begin().await?;
    let found: Option<String> =
        sqlx::query_scalar("update account set deleted_at = now() where id = $1 and deleted_at is null returning id")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    if found.is_none() {
        return Err(Error::AccountNotFound(id.clone()));
    }
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar(
        "update api_key set revoked_at = now() where account_id = $1 and revoked_at is null returning key_hash",
    )
    .bind(id.as_str())
    .fetch_all(&mut *tx)
    .await?;
    crate::crypt::destroy_account_key(&mut tx, id.as_str()).await?;
    tx.commit().await?;
    Ok(hashes.into_iter().filter_map(|h| h.try_into().ok()).collect())
}

/// Every table that holds an account's rows, children before the tables they reference (`account` itself last).
/// The one place that names them all: a new tenant table must be added here, or a deleted account's row stays.
const TENANT_TABLES: &[&str] = &[
    "load_chunk",
    "load_batch",
    "load",
    "event",
    "entity",
    "inventory_position",
    "workflow",
    "schedule",
    "job",
    "job_history",
    "job_key",
    "job_lane_mark",
    "job_stat",
    "job_stat_delta",
    "queue_pause",
    "account_share",
    "account_queue_limit",
    "account_kind_limit",
    "account_kind_start",
    "api_key",
    "account_key",
];

/// A deleted account's rows go soon after the deletion, a few thousand at a time: looking every 2 s keeps the wait
/// short and costs one indexed read when there is nothing to purge.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The maintenance chore that purges deleted accounts' rows in passes of at most 5 000 rows (one table of one
/// account each), so no statement holds many locks or runs long.
pub fn purge_chore() -> crate::chore::Chore {
    crate::chore::Chore::new("purge deleted accounts", PURGE_EVERY, PURGE_EVERY, |ctx| async move {
        while !ctx.stop.is_cancelled() {
            match purge_deleted(&ctx.pool, 5000).await {
                Ok(0) => break,
                Ok(n) => tracing::debug!(rows = n, "purged rows of a deleted account"),
                Err(e) => {
                    tracing::warn!(error = %e, "failed to purge a deleted account");
                    break;
                }
            }
        }
    })
}

/// One bounded pass of the purge of deleted accounts: deletes at most `limit` rows of one table of the oldest
/// deleted account, or the account's row once nothing else is left. Returns the rows deleted (0 = nothing to do).
/// Call again while it returns more than 0; another account is never touched.
pub async fn purge_deleted(pool: &PgPool, limit: i64) -> Result<u64> {
    let Some(account): Option<String> =
        sqlx::query_scalar("select id from account where deleted_at is not null order by deleted_at limit 1")
            .fetch_optional(pool)
            .await?
    else {
        return Ok(0);
    };
    for table in TENANT_TABLES {
        // (tableoid, ctid) names a row even across the partitions of `job_history`.
        let deleted = sqlx::query(&format!(
            "delete from {table} where (tableoid, ctid) in \
             (select tableoid, ctid from {table} where account_id = $1 limit $2)"
        ))
        .bind(&account)
        .bind(limit)
        .execute(pool)
        .await?
        .rows_affected();
        if deleted > 0 {
            return Ok(deleted);
        }
    }
    let gone = sqlx::query("delete from account where id = $1 and deleted_at is not null")
        .bind(&account)
        .execute(pool)
        .await?
        .rows_affected();
    if gone > 0 {
        tracing::info!(account.id = %account, "deleted account purged");
    }
    Ok(gone)
}

/// The account's webhook signing secret.
pub async fn webhook_secret<'e>(exec: impl PgExecutor<'e>, account: &AccountId) -> Result<String> {
    let stored: String = sqlx::query_scalar("select webhook_secret from account where id = $1")
        .bind(account.as_str())
        .fetch_optional(exec)
        .await?
        .ok_or_else(|| Error::AccountNotFound(account.clone()))?;
    if crate::crypt::is_sealed_text(&stored) {
        crate::crypt::prepare(account.as_str()).await?;
    }
    Ok(crate::crypt::open_text(&secret_aad(account), stored)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys carry 256 random bits and never repeat.
    #[test]
    fn generated_keys_are_long_and_distinct() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), KEY_PREFIX.len() + 64);
        assert!(generate_webhook_secret().starts_with(WEBHOOK_SECRET_PREFIX));
    }

    /// Secret comparison is exact.
    #[test]
    fn secrets_equal_only_for_identical_strings() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
    }
}
