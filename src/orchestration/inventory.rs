//! Inventory positions keyed by `(sku_ref, location_ref)`: read them, and (for the executor) lock and write the
//! ones `inventory.*` rules touch inside an execution's transaction.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ordo_workers::rules::{Position, PositionKey};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};

use super::{Error, Result};
use crate::tenancy::AccountId;

/// A position as users see it (`GET /api/inventory/{sku_ref}/{location_ref}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
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

/// Loads and locks positions for an execution; missing ones are left out (they start empty).
pub(crate) async fn lock_positions(
    conn: &mut PgConnection,
    account: &AccountId,
    keys: &[PositionKey],
) -> Result<BTreeMap<PositionKey, Position>> {
    if keys.is_empty() {
        return Ok(BTreeMap::new());
    }
    let skus: Vec<&str> = keys.iter().map(|k| k.sku_ref.as_str()).collect();
    let locs: Vec<&str> = keys.iter().map(|k| k.location_ref.as_str()).collect();
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        r#"
        -- One primary-key probe per key (a hash join over the unnested keys scanned the table when its
        -- statistics were stale), locked in key order so concurrent executions cannot deadlock.
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
        "#,
    )
    .bind(account.as_str())
    .bind(&skus)
    .bind(&locs)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(sku_ref, location_ref, on_hand, reserved)| {
            (PositionKey { sku_ref, location_ref }, Position { on_hand, reserved })
        })
        .collect())
}

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
