//! Accounts (tenants): the validated account id, accounts and their API keys. Every tenant-owned query takes an
//! [`AccountId`]. All SQL on the `account` and `api_key` tables lives in this module.

mod accounts;

use std::fmt;

pub use accounts::{
    create_account, create_key, delete_account, find_key, generate_key, generate_webhook_secret, hash_key,
    list_accounts, purge_chore, purge_deleted, revoke_key, secrets_equal, webhook_secret, Account, KeyOwner,
    NewAccount, NewKey,
};

/// Errors of accounts and keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An account with that id already exists.
    #[error("account {0} already exists")]
    AccountExists(AccountId),
    /// No account with that id.
    #[error("account {0} not found")]
    AccountNotFound(AccountId),
    /// No live key with that id in the account.
    #[error("api key {0} not found")]
    KeyNotFound(String),
    /// A stored value does not have the shape the schema promises.
    #[error("corrupt account data: {0}")]
    Corrupt(String),
    /// The webhook secret could not be sealed or opened (see [`crate::crypt`]).
    #[error(transparent)]
    Crypt(#[from] crate::crypt::Error),
    /// Any database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The role of account transactions: row-level security shows it one account's rows, the one in
/// `ordo.account_id`, and nothing at all without that setting. It can read no data key (`account_key`).
pub const ACCOUNT_ROLE: &str = "ordo_api";
/// The role of the API's admin work (accounts, keys, limits, pools, rollouts, scaling, the admin audit): every
/// account's rows, but no DDL; the API's admin pool runs as it (see the README's "Database roles").
pub const ADMIN_ROLE: &str = "ordo_admin";

/// Opens a transaction scoped to `account`: role [`ACCOUNT_ROLE`] and `ordo.account_id` set, both
/// transaction-local, so the pooled connection is clean again after commit or rollback. Every query in it sees and
/// writes only that account's rows, even one that forgets its `account_id` filter.
pub async fn begin_as(
    pool: &sqlx::PgPool,
    account: &AccountId,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    // One round trip for BEGIN and both settings: an account id is a validated slug (`[a-z0-9-]`), so it is safe as
    // a literal, and the simple-query protocol runs the three statements together.
    let sql = format!(
        "begin; set local role {ACCOUNT_ROLE}; select set_config('ordo.account_id', '{}', true)",
        account.as_str()
    );
    pool.begin_with(sql).await
}

/// A validated account slug (`[a-z0-9-]{1,63}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct AccountId(String);

/// The reason an account id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("account id must be 1 to 63 characters of a-z, 0-9 and '-', got {0:?}")]
pub struct InvalidAccountId(pub String);

impl AccountId {
    /// The account created by the migrations, used by library callers and benchmarks that name none.
    pub fn default_account() -> Self {
        AccountId("default".to_owned())
    }

    /// Validates a slug.
    pub fn parse(s: &str) -> Result<Self, InvalidAccountId> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(AccountId(s.to_owned()))
        } else {
            Err(InvalidAccountId(s.to_owned()))
        }
    }

    /// The slug.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for AccountId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AccountId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only slugs are account ids.
    #[test]
    fn parse_accepts_slugs_only() {
        for ok in ["default", "a", "acme-1", &"a".repeat(63)] {
            assert!(AccountId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Acme", "a_b", "a b", &"a".repeat(64), "é"] {
            assert!(AccountId::parse(bad).is_err(), "{bad}");
        }
    }
}
