//! Inventory positions keyed by `(sku_ref, location_ref)`: read them, and (for a batch of executions) lock and
//! write the ones `inventory.*` rules touch inside its transaction, always in that key order.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use ordo_workers::rules::{Position, PositionKey};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};

use super::{Error, Result};
use crate::tenancy::AccountId;

/// A position as users see it (`GET /api/inventory/{sku_ref}/{location_ref}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct InventoryPosition {
    /// Stock-keeping unit.
    pub sku_ref: String,
    /// Location.
    pub location_ref: String,
    /// Units present.
    pub on_hand: i64,
    /// Units promised.
    pub reserved: i64,
    /// `on_hand - reserved`.
    pub available: i64,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Reads one position; `None` when it does not exist.
pub async fn get_position<'e>(
    exec: impl PgExecutor<'e>,
    account: &AccountId,
    sku_ref: &str,
    location_ref: &str,
) -> Result<Option<InventoryPosition>> {
    Ok(sqlx::query_as(
        r#"
        select sku_ref, location_ref, on_hand, reserved, on_hand - reserved as available, updated_at
        from inventory_position
        where account_id = $1
          and sku_ref = $2
          and location_ref = $3
        "#,
    )
    .bind(account.as_str())
    .bind(sku_ref)
    .bind(location_ref)
    .fetch_optional(exec)
    .await?)
}

/// Locks `inventory_position` rows in key order: one primary-key probe per key (a hash join over the unnested
/// keys scanned the table when its statistics were stale), locked in the global order, `(sku_ref,
/// location_ref)`, so that executions locking positions with it cannot deadlock.
const LOCK_SQL: &str = r#"
        select p.sku_ref, p.location_ref, p.on_hand, p.reserved
        from (select distinct * from unnest($2::text[], $3::text[]) as k(sku_ref, location_ref)) k
        cross join lateral (
            select *
            from inventory_position p
            where p.account_id = $1
              and p.sku_ref = k.sku_ref
              and p.location_ref = k.location_ref
        ) p
        order by p.sku_ref, p.location_ref
        for update of p
        "#;

/// [`LOCK_SQL`] that fails at once (`lock_not_available`) instead of waiting for a row another transaction holds.
static LOCK_NOWAIT_SQL: LazyLock<String> = LazyLock::new(|| format!("{LOCK_SQL} nowait"));

/// Loads and locks positions for an execution, with one statement; missing ones are left out (they start
/// empty). Without `wait`, a position another transaction holds makes it lock none and return `None`.
pub(crate) async fn lock_positions(
    conn: &mut PgConnection,
    account: &AccountId,
    keys: &[PositionKey],
    wait: bool,
) -> Result<Option<BTreeMap<PositionKey, Position>>> {
    if keys.is_empty() {
        return Ok(Some(BTreeMap::new()));
    }
    let skus: Vec<&str> = keys.iter().map(|k| k.sku_ref.as_str()).collect();
    let locs: Vec<&str> = keys.iter().map(|k| k.location_ref.as_str()).collect();
    let rows: Vec<(String, String, i64, i64)> = if wait {
        sqlx::query_as(LOCK_SQL)
            .bind(account.as_str())
            .bind(&skus)
            .bind(&locs)
            .fetch_all(&mut *conn)
            .await?
    } else {
        // A savepoint, so that a refusal leaves the caller's transaction usable and releases what it locked.
        let mut sp = sqlx::Connection::begin(&mut *conn).await?;
        let locked = sqlx::query_as(LOCK_NOWAIT_SQL.as_str())
            .bind(account.as_str())
            .bind(&skus)
            .bind(&locs)
            .fetch_all(&mut *sp)
            .await;
        match locked {
            Ok(rows) => {
                sp.commit().await?;
                rows
            }
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {
                sp.rollback().await?;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
    };
    Ok(Some(
        rows.into_iter()
            .map(|(sku_ref, location_ref, on_hand, reserved)| {
                (PositionKey { sku_ref, location_ref }, Position { on_hand, reserved })
            })
            .collect(),
    ))
}

/// SQLSTATE of a `nowait` lock that another transaction holds.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Writes changed positions (insert or update) with one statement.
pub(crate) async fn write_positions(
    conn: &mut PgConnection,
    account: &AccountId,
    positions: &[(PositionKey, Position)],
) -> Result<()> {
    if positions.is_empty() {
        return Ok(());
    }
    if let Some((k, p)) = positions.iter().find(|(_, p)| p.on_hand < 0 || p.reserved < 0) {
        return Err(Error::Corrupt(format!("position {k} would go negative: {p:?}")));
    }
    let skus: Vec<&str> = positions.iter().map(|(k, _)| k.sku_ref.as_str()).collect();
    let locs: Vec<&str> = positions.iter().map(|(k, _)| k.location_ref.as_str()).collect();
    let on_hand: Vec<i64> = positions.iter().map(|(_, p)| p.on_hand).collect();
    let reserved: Vec<i64> = positions.iter().map(|(_, p)| p.reserved).collect();
    sqlx::query(
        r#"
        insert into inventory_position (account_id, sku_ref, location_ref, on_hand, reserved)
        select $1, t.sku_ref, t.location_ref, t.on_hand, t.reserved
        from unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[]) as t(sku_ref, location_ref, on_hand, reserved)
        on conflict (account_id, sku_ref, location_ref) do update
        set on_hand = excluded.on_hand,
            reserved = excluded.reserved,
            updated_at = now()
        "#,
    )
    .bind(account.as_str())
    .bind(&skus)
    .bind(&locs)
    .bind(&on_hand)
    .bind(&reserved)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
