//! Named leases: one holder at a time for singleton work (queue maintenance, cron firing, controllers).
//! Leadership only saves wasted work; what a leader writes is still deduplicated by key, so two holders
//! overlapping after a handover cannot double anything.

use std::time::Duration;

use sqlx::PgExecutor;

/// Errors of the lease table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Any database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Takes or renews the lease `name` for `holder` for `ttl`; true when `holder` now holds it.
pub async fn acquire<'e>(exec: impl PgExecutor<'e>, name: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
    let got: Option<String> = sqlx::query_scalar(
        r#"
        insert into leader_lease (name, holder, expires_at, acquired_at)
        values ($1, $2, now() + make_interval(secs => $3), now())
        on conflict (name) do update
        set holder = excluded.holder,
            expires_at = excluded.expires_at,
            acquired_at = case when leader_lease.holder = excluded.holder
                               then leader_lease.acquired_at else now() end
        where leader_lease.holder = excluded.holder
           or leader_lease.expires_at < now()
        returning holder
        "#,
    )
    .bind(name)
    .bind(holder)
    .bind(ttl.as_secs_f64())
    .fetch_optional(exec)
    .await?;
    Ok(got.is_some())
}

/// Gives the lease up at a clean exit, so another process takes over at once instead of after `ttl`.
pub async fn release<'e>(exec: impl PgExecutor<'e>, name: &str, holder: &str) -> Result<(), Error> {
    sqlx::query("delete from leader_lease where name = $1 and holder = $2")
        .bind(name)
        .bind(holder)
        .execute(exec)
        .await?;
    Ok(())
}

/// The current holder of `name`, if its lease has not expired.
pub async fn holder<'e>(exec: impl PgExecutor<'e>, name: &str) -> Result<Option<String>, Error> {
    Ok(
        sqlx::query_scalar("select holder from leader_lease where name = $1 and expires_at >= now()")
            .bind(name)
            .fetch_optional(exec)
            .await?,
    )
}
