//! The admin audit trail: every admin change (accounts, keys, limits, pools, scaling, rollouts) as one row of
//! `admin_event`, appended in the transaction of the change, so a change and its record commit together or not
//! at all. All SQL on `admin_event` lives here.
//!
//! A record names the kind of credential that made the change ([`Actor`]), never the credential itself.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use utoipa::ToSchema;

/// Who made an admin change: the kind of credential, never the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// `ORDO_ADMIN_TOKEN`, over the HTTP API (scripts, the CLI's API commands, the dashboard).
    Admin,
    /// A CLI command that works on the database directly (`ordo account create`, `ordo keys rotate`).
    Cli,
    /// `ordo sandbox` setting up its demo account.
    Sandbox,
    /// The rollout controller acting on a rollout's own rules (automatic promotion or abort).
    Controller,
}

crate::text_enum::text_enum!(Actor as "actor" {
    Admin = "admin",
    Cli = "cli",
    Sandbox = "sandbox",
    Controller = "controller",
});

/// One admin change, as `GET /api/admin-events` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AdminEvent {
    /// Id, ascending in the order the changes were recorded.
    pub id: String,
    /// When the change was recorded (its transaction's time).
    pub at: DateTime<Utc>,
    /// What changed, e.g. `account.create`, `key.revoke`, `limits.put`, `pool.put`, `scaling.put`,
    /// `rollout.start`, `rollout.promote`, `rollout.abort`, `keys.rotate`.
    pub action: String,
    /// What it changed: an account id, `<account>/<key id>`, a pool, a rollout id.
    pub target: String,
    /// The kind of credential that made it: `admin`, `cli`, `sandbox` or `controller`.
    pub actor: String,
}

/// Appends a record of `action` on `target` by `actor` inside the caller's transaction.
pub async fn record(conn: &mut PgConnection, actor: Actor, action: &str, target: &str) -> Result<(), sqlx::Error> {
    sqlx::query("insert into admin_event (action, target, actor) values ($1, $2, $3)")
        .bind(action)
        .bind(target)
        .bind(actor.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

/// Records newest first: at most `limit`, older than the record `before` when given.
pub async fn list<'e>(
    exec: impl PgExecutor<'e>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AdminEvent>, sqlx::Error> {
    let rows: Vec<(i64, DateTime<Utc>, String, String, String)> = sqlx::query_as(
        r#"
        select id, at, action, target, actor
        from admin_event
        where ($1::bigint is null or id < $1)
        order by id desc
        limit $2
        "#,
    )
    .bind(before)
    .bind(limit)
    .fetch_all(exec)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, at, action, target, actor)| AdminEvent {
            id: id.to_string(),
            at,
            action,
            target,
            actor,
        })
        .collect())
}
