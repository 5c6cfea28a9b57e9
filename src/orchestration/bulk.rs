//! Events for many entities at once, inside a caller's transaction: used by loads to fire `InventoryChanged` for
//! every position a chunk changed. Kept apart from [`super::event`] so the single-event path stays as it is; this
//! only adds bulk entity creation in front of the same acceptance ([`super::event::accept_events_locking`]).

use serde_json::Value;
use sqlx::PgConnection;

use super::event::{accept_events_locking, Accept};
use super::workflow::get_version;
use super::{Error, Result};
use crate::queue::KeyLocks;
use crate::tenancy::AccountId;
use ordo_workers::rules::EntityKey;

/// The entity type of inventory positions.
pub const POSITION_TYPE: &str = "INVENTORY_POSITION";
/// The workflow subtype whose presence makes position changes fire events.
pub const POSITION_SUBTYPE: &str = "DEFAULT";
/// The event a changed position fires.
pub const INVENTORY_CHANGED: &str = "InventoryChanged";

/// The entity ref of a position: `<sku_ref>@<location_ref>`.
pub fn position_ref(sku_ref: &str, location_ref: &str) -> String {
    format!("{sku_ref}@{location_ref}")
}

/// Queues `InventoryChanged` on the entity `INVENTORY_POSITION:<sku>@<loc>` for each change `(sku_ref,
/// location_ref, attributes)`, when the account has the workflow `INVENTORY_POSITION::DEFAULT`; creates missing
/// entities first (in the workflow's status `CREATED`, or its first status when it declares no `CREATED`; no
/// `CREATE` event is queued for them). Each position is its own root entity, so their events run in parallel.
/// Returns how many events were queued (0 without the workflow). Statements are bulk: one entity insert and one
/// acceptance, whatever the number of changes; the events' key locks are held as `locks` says (see [`KeyLocks`]).
pub(crate) async fn position_events(
    conn: &mut PgConnection,
    account: &AccountId,
    changes: &[(&str, &str, Value)],
    locks: KeyLocks,
) -> Result<usize> {
    if changes.is_empty() {
        return Ok(0);
    }
    let reference = format!("{POSITION_TYPE}::{POSITION_SUBTYPE}");
    let workflow = match get_version(&mut *conn, account, &reference, None, None).await {
        Ok(w) => w,
        Err(Error::WorkflowNotFound { .. }) => return Ok(0),
        Err(e) => return Err(e),
    };
    let status = if workflow.definition.declares("CREATED") {
        "CREATED".to_owned()
    } else {
        workflow
            .definition
            .statuses
            .first()
            .map(|s| s.name.clone())
            .ok_or_else(|| Error::Corrupt(format!("workflow {reference} declares no status")))?
    };
    let mut refs: Vec<String> = changes.iter().map(|(s, l, _)| position_ref(s, l)).collect();
    let accepts: Vec<Accept> = changes
        .iter()
        .zip(&refs)
        .map(|((_, _, attributes), r)| Accept {
            name: INVENTORY_CHANGED.to_owned(),
            entity: EntityKey {
                entity_type: POSITION_TYPE.to_owned(),
                entity_ref: r.clone(),
            },
            attributes: attributes.clone(),
            scheduled_at: None,
            source_event_id: None,
            idempotency_key: None,
            traceparent: None,
        })
        .collect();
    // Sorted, so two chunks creating overlapping entities take the index locks in the same order.
    refs.sort_unstable();
    refs.dedup();
    sqlx::query(
        r#"
        insert into entity (account_id, type, ref, subtype, status, workflow_major)
        select $1, $2, r.ref, $3, $4, $5
        from unnest($6::text[]) as r(ref)
        order by r.ref
        on conflict (account_id, type, ref) do nothing
        "#,
    )
    .bind(account.as_str())
    .bind(POSITION_TYPE)
    .bind(POSITION_SUBTYPE)
    .bind(&status)
    .bind(workflow.version.major)
    .bind(&refs)
    .execute(&mut *conn)
    .await?;
    let n = accepts.len();
    accept_events_locking(conn, account, accepts, locks).await?;
    Ok(n)
}

/// Current `on_hand` of the given positions (absent ones are left out). `lock` takes their row locks in key order
/// (the order [`super::inventory`] locks in too), so concurrent writers of overlapping positions queue up instead
/// of deadlocking.
pub(crate) async fn positions_on_hand(
    conn: &mut PgConnection,
    account: &AccountId,
    skus: &[&str],
    locs: &[&str],
    lock: bool,
) -> Result<Vec<(String, String, i64)>> {
    if skus.is_empty() {
        return Ok(Vec::new());
    }
    // One index probe per key (`lateral … limit 1` keeps the planner from hashing the account's whole table when
    // its statistics are stale, as they are right after a big load), keys sorted by the database's collation so
    // the locks are taken in the order `inventory::lock_positions` takes them.
    let sql = format!(
        r#"
        select p.sku_ref, p.location_ref, p.on_hand
        from (select k.sku_ref, k.location_ref
              from unnest($2::text[], $3::text[]) as k(sku_ref, location_ref)
              order by k.sku_ref, k.location_ref) as k
        cross join lateral (
            select p.sku_ref, p.location_ref, p.on_hand
            from inventory_position p
            where p.account_id = $1
              and p.sku_ref = k.sku_ref
              and p.location_ref = k.location_ref
            limit 1
            {}
        ) as p
        "#,
        if lock { "for update" } else { "" }
    );
    Ok(sqlx::query_as(&sql)
        .bind(account.as_str())
        .bind(skus)
        .bind(locs)
        .fetch_all(&mut *conn)
        .await?)
}

/// Sets `on_hand` of many positions with one statement (creating missing ones with nothing reserved); `reserved`
/// of existing ones is kept.
pub(crate) async fn set_on_hand(
    conn: &mut PgConnection,
    account: &AccountId,
    skus: &[&str],
    locs: &[&str],
    on_hand: &[i64],
) -> Result<()> {
    if skus.is_empty() {
        return Ok(());
    }
    sqlx::query(
        r#"
        insert into inventory_position (account_id, sku_ref, location_ref, on_hand)
        select $1, t.sku_ref, t.location_ref, t.on_hand
        from unnest($2::text[], $3::text[], $4::bigint[]) as t(sku_ref, location_ref, on_hand)
        order by t.sku_ref, t.location_ref
        on conflict (account_id, sku_ref, location_ref) do update
        set on_hand = excluded.on_hand,
            updated_at = now()
        "#,
    )
    .bind(account.as_str())
    .bind(skus)
    .bind(locs)
    .bind(on_hand)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
