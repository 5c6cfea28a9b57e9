//! Every SQL statement on `account_key`: one wrapped data key per account, with the id of its master key.

use sqlx::{PgConnection, PgPool};

use super::envelope::DataKey;
use super::master::MasterKeys;
use super::Result;

/// The account's data key, unwrapped; created (in its own committed statement) when the account has none yet.
pub(super) async fn load_or_create(pool: &PgPool, masters: &MasterKeys, account: &str) -> Result<DataKey> {
    if let Some((key_id, wrapped)) = load(pool, account).await? {
        return masters.unwrap(account, &key_id, &wrapped);
    }
    let key = DataKey::generate();
    let (key_id, wrapped) = masters.wrap(account, &key);
    // Only for an existing account; a concurrent creator wins and its key is read back below.
    sqlx::query(
        r#"
        insert into account_key (account_id, master_key_id, wrapped)
        select $1, $2, $3
        where exists (select 1 from account where id = $1 and deleted_at is null)
        on conflict (account_id) do nothing
        "#,
    )
    .bind(account)
    .bind(&key_id)
    .bind(&wrapped)
    .execute(pool)
    .await?;
    match load(pool, account).await? {
        Some((key_id, wrapped)) => masters.unwrap(account, &key_id, &wrapped),
        None => Err(super::Error::NoDataKey {
            account: account.to_owned(),
        }),
    }
}

async fn load(pool: &PgPool, account: &str) -> Result<Option<(String, Vec<u8>)>> {
    Ok(
        sqlx::query_as("select master_key_id, wrapped from account_key where account_id = $1")
            .bind(account)
            .fetch_optional(pool)
            .await?,
    )
}

/// Stores `key`, wrapped under the first master key, inside the caller's transaction.
pub(super) async fn insert_key(
    conn: &mut PgConnection,
    masters: &MasterKeys,
    account: &str,
    key: &DataKey,
) -> Result<()> {
    let (key_id, wrapped) = masters.wrap(account, key);
    sqlx::query("insert into account_key (account_id, master_key_id, wrapped) values ($1, $2, $3)")
        .bind(account)
        .bind(&key_id)
        .bind(&wrapped)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Deletes the data key of `account` inside the caller's transaction; whether there was one.
pub(super) async fn delete_key(conn: &mut PgConnection, account: &str) -> Result<bool> {
    let gone = sqlx::query("delete from account_key where account_id = $1")
        .bind(account)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(gone > 0)
}

/// What a rotation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rotated {
    /// Data keys re-wrapped under the first master key.
    pub rewrapped: u64,
    /// Data keys that were wrapped under it already.
    pub current: u64,
}

/// Re-wraps every data key not wrapped under the first master key, in batches, online: a data key itself never
/// changes, so values sealed under it, and processes that cached it, are unaffected. Each update is conditional on
/// the wrapping it read, so a concurrent rotation cannot overwrite a newer one.
pub async fn rotate(pool: &PgPool, masters: &MasterKeys) -> Result<Rotated> {
    const BATCH: i64 = 500;
    let current = masters.current_id().to_owned();
    let mut out = Rotated::default();
    let mut after = String::new();
    loop {
        let rows: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
            r#"
            select account_id, master_key_id, wrapped
            from account_key
            where account_id > $1
            order by account_id
            limit $2
            "#,
        )
        .bind(&after)
        .bind(BATCH)
        .fetch_all(pool)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(out);
        };
        after = last.0.clone();
        let mut tx = pool.begin().await?;
        for (account, key_id, wrapped) in rows {
            if key_id == current {
                out.current += 1;
                continue;
            }
            let key = masters.unwrap(&account, &key_id, &wrapped)?;
            let (new_id, rewrapped) = masters.wrap(&account, &key);
            let changed = sqlx::query(
                r#"
                update account_key
                set master_key_id = $2, wrapped = $3, rotated_at = now()
                where account_id = $1
                  and master_key_id = $4
                  and wrapped = $5
                "#,
            )
            .bind(&account)
            .bind(&new_id)
            .bind(&rewrapped)
            .bind(&key_id)
            .bind(&wrapped)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            out.rewrapped += changed;
        }
        tx.commit().await?;
    }
}
