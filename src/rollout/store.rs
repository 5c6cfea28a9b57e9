//! SQL of pools, pool versions and rollouts. Transitions lock the rollout row and run in one transaction, so two
//! operators (or an operator and the controller) racing cannot both win.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serializer;
use sqlx::{Acquire, PgConnection, PgExecutor, PgPool, Postgres};

use super::{weight, Error, Result, Role, RolloutState, Transition};
use crate::queue::{self, FieldError};

fn id_string<S: Serializer>(id: &i64, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_string())
}

/// A rollout of a pool from one version to another.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Rollout {
    /// Id (a string in JSON).
    #[serde(serialize_with = "id_string")]
    #[schema(value_type = String)]
    pub id: i64,
    /// The pool rolled out.
    pub pool: String,
    /// The version being replaced (stable when the rollout began).
    pub from_version: String,
    /// The new version.
    pub to_version: String,
    /// Where the rollout stands.
    pub state: RolloutState,
    /// Share of new work routed to the new version during the canary, 0..100.
    pub canary_percent: i16,
    /// Promote on its own this many seconds after the start (none: only by hand).
    pub auto_promote_after_s: Option<i32>,
    /// Abort on its own when the canary's failed attempts exceed this share of its finished ones.
    pub max_failure_rate: Option<f64>,
    /// Why it ended, when the controller ended it.
    pub reason: Option<String>,
    /// Start.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it was promoted.
    pub promoted_at: Option<DateTime<Utc>>,
    /// When it completed or was aborted.
    pub finished_at: Option<DateTime<Utc>>,
    /// The canary's failure rate is measured over jobs with larger ids.
    #[serde(skip)]
    pub start_job_id: i64,
}

const ROLLOUT_COLUMNS: &str = "id, pool, from_version, to_version, state, canary_percent, auto_promote_after_s, \
    max_failure_rate, reason, created_at, updated_at, promoted_at, finished_at, start_job_id";

/// What `POST /api/rollouts` asks for.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRollout {
    /// The pool.
    pub pool: String,
    /// The new version.
    #[schema(pattern = "^[a-zA-Z0-9._-]{1,63}$")]
    pub version: String,
    /// Share of new work for the new version during the canary (default 10).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100)]
    pub canary_percent: Option<i16>,
    /// Promote on its own after this many seconds.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2147483647)]
    pub auto_promote_after_s: Option<i32>,
    /// Abort on its own above this failure rate (0..1).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub max_failure_rate: Option<f64>,
}

impl NewRollout {
    /// A canary of `version` in `pool` at the default weight.
    pub fn new(pool: &str, version: &str) -> Self {
        NewRollout {
            pool: pool.to_owned(),
            version: version.to_owned(),
            canary_percent: None,
            auto_promote_after_s: None,
            max_failure_rate: None,
        }
    }

    /// Checks the fields (422 naming each invalid one).
    pub fn validate(&self) -> Result<()> {
        let mut errs = Vec::new();
        if !valid_name(&self.version) {
            errs.push(FieldError::new(
                "/version",
                "must be 1 to 63 characters of a-z, A-Z, 0-9, '.', '_', '-'",
            ));
        }
        if let Some(p) = self.canary_percent {
            if !(0..=100).contains(&p) {
                errs.push(FieldError::new("/canary_percent", "must be 0 to 100"));
            }
        }
        if let Some(s) = self.auto_promote_after_s {
            if s <= 0 {
                errs.push(FieldError::new("/auto_promote_after_s", "must be positive"));
            }
        }
        if let Some(r) = self.max_failure_rate {
            if !(0.0..=1.0).contains(&r) {
                errs.push(FieldError::new("/max_failure_rate", "must be between 0 and 1"));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(errs.into()))
        }
    }
}

/// Pool and version names: what a Kubernetes Deployment name (`ordo-worker-<pool>-<version>`) can carry once
/// lowercased, plus `.` and `_`.
fn valid_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A pool and the queues it serves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct WorkerPool {
    /// Name.
    #[sqlx(rename = "name")]
    pub pool: String,
    /// Queues served (pool `default` also serves every queue no other pool lists).
    pub queues: Vec<String>,
}

/// One version of a pool as `GET /api/pools` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct PoolVersionView {
    /// The version.
    pub version: String,
    /// Its role.
    pub role: Role,
    /// Share of new work it receives, 0..100.
    pub weight: i16,
    /// Live workers.
    pub workers: i64,
    /// Runnable-now jobs routed to it (the stable version also counts unrouted ones).
    pub available: i64,
    /// Jobs it runs.
    pub running: i64,
}

/// A pool as `GET /api/pools` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct PoolView {
    /// Name.
    pub pool: String,
    /// Queues served.
    pub queues: Vec<String>,
    /// Its versions.
    pub versions: Vec<PoolVersionView>,
}

/// Creates or replaces a pool's queues. A queue belongs to at most one pool besides `default`.
pub async fn put_pool<'a>(
    db: impl Acquire<'a, Database = Postgres>,
    pool: &str,
    queues: &[String],
) -> Result<WorkerPool> {
    let mut errs = Vec::new();
    if !valid_name(pool) {
        errs.push(FieldError::new(
            "/pool",
            "must be 1 to 63 characters of a-z, A-Z, 0-9, '.', '_', '-'",
        ));
    }
    for (i, q) in queues.iter().enumerate() {
        if q.is_empty() || q.chars().count() > 255 {
            errs.push(FieldError::new(format!("/queues/{i}"), "must be 1 to 255 characters"));
        }
    }
    if pool != "default" && queues.iter().any(|q| q == "default") {
        errs.push(FieldError::new(
            "/queues",
            "queue `default` always belongs to pool `default`",
        ));
    }
    if !errs.is_empty() {
        return Err(Error::Invalid(errs.into()));
    }
    let mut queues = queues.to_vec();
    if pool == "default" && !queues.iter().any(|q| q == "default") {
        queues.insert(0, "default".to_owned());
    }
    let mut tx = db.begin().await?;
    // One pool changes at a time, so two pools cannot claim one queue concurrently.
    sqlx::query("lock table worker_pool in share row exclusive mode")
        .execute(&mut *tx)
        .await?;
    if pool != "default" {
        let taken: Option<(String, String)> = sqlx::query_as(
            r#"
            select p.name, q
            from worker_pool p, unnest(p.queues) as q
            where p.name <> $1
              and p.name <> 'default'
              and q = any($2)
            limit 1
            "#,
        )
        .bind(pool)
        .bind(&queues)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((other, q)) = taken {
            return Err(Error::Conflict {
                message: format!("queue {q:?} already belongs to pool {other:?}"),
            });
        }
    }
    let row: WorkerPool = sqlx::query_as(
        r#"
        insert into worker_pool (name, queues)
        values ($1, $2)
        on conflict (name) do update
        set queues = excluded.queues,
            updated_at = now()
        returning name, queues
        "#,
    )
    .bind(pool)
    .bind(&queues)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// The queues a pool serves, if the pool exists.
pub async fn pool_queues<'e>(exec: impl PgExecutor<'e>, pool: &str) -> Result<Option<Vec<String>>> {
    Ok(sqlx::query_scalar("select queues from worker_pool where name = $1")
        .bind(pool)
        .fetch_optional(exec)
        .await?)
}

/// Queues with waiting jobs that no pool lists: pool `default` serves them. A loose scan of the claim index (one
/// probe per distinct queue), so it stays cheap however many jobs wait.
pub async fn unclaimed_queues<'e>(exec: impl PgExecutor<'e>) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        r#"
        with recursive q(queue) as (
            (select queue
             from job
             where state in ('available', 'scheduled', 'retryable')
             order by queue
             limit 1)
            union all
            select (select j.queue
                    from job j
                    where j.state in ('available', 'scheduled', 'retryable')
                      and j.queue > q.queue
                    order by j.queue
                    limit 1)
            from q
            where q.queue is not null
        )
        select queue
        from q
        where queue is not null
          and not exists (select 1 from worker_pool p where queue = any(p.queues))
        order by queue
        "#,
    )
    .fetch_all(exec)
    .await?)
}

/// Called by a starting worker: makes sure its pool exists (serving the worker's queues when new) and, when the
/// pool has no stable version yet, records this one as stable (a lone version is stable). Returns its role.
pub async fn announce_version(db: &PgPool, pool: &str, version: &str, queues: &[String]) -> Result<Option<Role>> {
    let mut tx = db.begin().await?;
    sqlx::query("insert into worker_pool (name, queues) values ($1, $2) on conflict (name) do nothing")
        .bind(pool)
        .bind(queues)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        r#"
        insert into pool_version (pool, version, role)
        select $1, $2, 'stable'
        where not exists (select 1 from pool_version where pool = $1 and role in ('stable', 'canary'))
        on conflict (pool, version) do nothing
        "#,
    )
    .bind(pool)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    let role = role_of(&mut *tx, pool, version).await?;
    tx.commit().await?;
    Ok(role)
}

/// The role of a pool version (None: never part of a rollout, and not the pool's first version). One primary-key
/// probe: workers call it on every heartbeat.
pub async fn role_of<'e>(exec: impl PgExecutor<'e>, pool: &str, version: &str) -> Result<Option<Role>> {
    Ok(
        sqlx::query_scalar("select role from pool_version where pool = $1 and version = $2")
            .bind(pool)
            .bind(version)
            .fetch_optional(exec)
            .await?,
    )
}

async fn set_role(conn: &mut PgConnection, pool: &str, version: &str, role: Role) -> Result<()> {
    sqlx::query(
        r#"
        insert into pool_version (pool, version, role)
        values ($1, $2, $3)
        on conflict (pool, version) do update
        set role = excluded.role,
            updated_at = now()
        "#,
    )
    .bind(pool)
    .bind(version)
    .bind(role)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One rollout.
pub async fn get<'e>(exec: impl PgExecutor<'e>, id: i64) -> Result<Rollout> {
    sqlx::query_as(&format!("select {ROLLOUT_COLUMNS} from rollout where id = $1"))
        .bind(id)
        .fetch_optional(exec)
        .await?
        .ok_or(Error::NotFound { id })
}

/// Rollouts, newest first: of one pool and in one state when given, at most `limit`, older than `before` (an id)
/// when paging.
pub async fn list<'e>(
    exec: impl PgExecutor<'e>,
    pool: Option<&str>,
    state: Option<super::RolloutState>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Rollout>> {
    Ok(sqlx::query_as(&format!(
        r#"
        select {ROLLOUT_COLUMNS}
        from rollout
        where ($1::text is null or pool = $1)
          and ($2::text is null or state = $2)
          and ($3::bigint is null or id < $3)
        order by id desc
        limit $4
        "#
    ))
    .bind(pool)
    .bind(state.map(super::RolloutState::as_str))
    .bind(before)
    .bind(limit)
    .fetch_all(exec)
    .await?)
}

/// Active (canary or promoted) rollouts.
pub(super) async fn active<'e>(exec: impl PgExecutor<'e>) -> Result<Vec<Rollout>> {
    Ok(sqlx::query_as(&format!(
        "select {ROLLOUT_COLUMNS} from rollout where state in ('canary', 'promoted') order by id"
    ))
    .fetch_all(exec)
    .await?)
}

/// Rollouts that ended within `within`.
pub(super) async fn recently_finished<'e>(exec: impl PgExecutor<'e>, within: Duration) -> Result<Vec<Rollout>> {
    Ok(sqlx::query_as(&format!(
        r#"
        select {ROLLOUT_COLUMNS}
        from rollout
        where state in ('completed', 'aborted')
          and finished_at >= now() - make_interval(secs => $1)
        order by id
        "#
    ))
    .bind(within.as_secs_f64())
    .fetch_all(exec)
    .await?)
}

/// Applies `t` to the locked rollout `r` through the state machine and stores the state it gives, stamping when it
/// was promoted or finished, and the reason when one is given.
async fn transition(conn: &mut PgConnection, r: &Rollout, t: Transition, reason: Option<&str>) -> Result<Rollout> {
    let next = r.state.apply(t)?;
    Ok(sqlx::query_as(&format!(
        r#"
        update rollout
        set state = $2,
            reason = coalesce($3, reason),
            promoted_at = case when $2 = 'promoted' then now() else promoted_at end,
            finished_at = case when $2 in ('completed', 'aborted') then now() else finished_at end,
            updated_at = now()
        where id = $1
        returning {ROLLOUT_COLUMNS}
        "#
    ))
    .bind(r.id)
    .bind(next.as_str())
    .bind(reason)
    .fetch_one(&mut *conn)
    .await?)
}

async fn lock(conn: &mut PgConnection, id: i64) -> Result<Rollout> {
    sqlx::query_as(&format!(
        "select {ROLLOUT_COLUMNS} from rollout where id = $1 for update"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(Error::NotFound { id })
}

/// Starts a canary of `req.version` against the pool's stable version (or, before any rollout, the one version
/// its live workers run).
pub async fn start<'a>(db: impl Acquire<'a, Database = Postgres>, req: &NewRollout) -> Result<Rollout> {
    req.validate()?;
    let mut tx = db.begin().await?;
    // The pool row is the per-pool lock for starting rollouts.
    let exists: Option<String> = sqlx::query_scalar("select name from worker_pool where name = $1 for update")
        .bind(&req.pool)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Err(Error::PoolNotFound { pool: req.pool.clone() });
    }
    let running: Option<i64> =
        sqlx::query_scalar("select id from rollout where pool = $1 and state in ('canary', 'promoted')")
            .bind(&req.pool)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(id) = running {
        return Err(Error::Conflict {
            message: format!("pool {:?} already has an active rollout ({id})", req.pool),
        });
    }
    let mut stable: Vec<String> =
        sqlx::query_scalar("select version from pool_version where pool = $1 and role = 'stable' order by version")
            .bind(&req.pool)
            .fetch_all(&mut *tx)
            .await?;
    if stable.is_empty() {
        stable = sqlx::query_scalar("select distinct version from worker where pool = $1 order by version")
            .bind(&req.pool)
            .fetch_all(&mut *tx)
            .await?;
    }
    let from = match stable.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(Error::Conflict {
                message: format!("pool {:?} has no stable version to roll out from", req.pool),
            })
        }
        many => {
            return Err(Error::Conflict {
                message: format!("pool {:?} has several stable versions ({})", req.pool, many.join(", ")),
            })
        }
    };
    if from == req.version {
        return Err(Error::Conflict {
            message: format!(
                "version {:?} is already the stable version of pool {:?}",
                from, req.pool
            ),
        });
    }
    let start_job_id = queue::last_job_id(&mut *tx).await?;
    let rollout: Rollout = sqlx::query_as(&format!(
        r#"
        insert into rollout (pool, from_version, to_version, state, canary_percent, auto_promote_after_s,
                             max_failure_rate, start_job_id)
        values ($1, $2, $3, 'canary', $4, $5, $6, $7)
        returning {ROLLOUT_COLUMNS}
        "#
    ))
    .bind(&req.pool)
    .bind(&from)
    .bind(&req.version)
    .bind(req.canary_percent.unwrap_or(10))
    .bind(req.auto_promote_after_s)
    .bind(req.max_failure_rate)
    .bind(start_job_id)
    .fetch_one(&mut *tx)
    .await?;
    set_role(&mut tx, &req.pool, &from, Role::Stable).await?;
    set_role(&mut tx, &req.pool, &req.version, Role::Canary).await?;
    tx.commit().await?;
    tracing::info!(rollout.id = rollout.id, pool = %rollout.pool, from = %from, to = %req.version,
        canary_percent = rollout.canary_percent, "rollout started");
    Ok(rollout)
}

/// Promotes a canary: all new work goes to the new version, which becomes stable; the old one drains.
pub async fn promote<'a>(db: impl Acquire<'a, Database = Postgres>, id: i64) -> Result<Rollout> {
    let mut tx = db.begin().await?;
    let r = lock(&mut tx, id).await?;
    let r = transition(&mut tx, &r, Transition::Promote, None).await?;
    set_role(&mut tx, &r.pool, &r.to_version, Role::Stable).await?;
    set_role(&mut tx, &r.pool, &r.from_version, Role::Draining).await?;
    tx.commit().await?;
    tracing::info!(rollout.id = id, pool = %r.pool, pool.version = %r.to_version, "rollout promoted");
    Ok(r)
}

/// Aborts a rollout: the new version's unstarted jobs go back to the old version in one statement, the old one
/// stays (or becomes again) stable, and the new one is retired.
pub async fn abort<'a>(db: impl Acquire<'a, Database = Postgres>, id: i64, reason: Option<&str>) -> Result<Rollout> {
    let mut tx = db.begin().await?;
    let r = lock(&mut tx, id).await?;
    // The state change comes first in the transaction, but all of it commits at once: an enqueue that read the
    // old state and commits later is caught by the controller's sweep of recently finished rollouts.
    let r = transition(&mut tx, &r, Transition::Abort, reason).await?;
    let moved = queue::reroute_waiting(&mut *tx, &r.pool, &r.to_version, &r.from_version).await?;
    set_role(&mut tx, &r.pool, &r.from_version, Role::Stable).await?;
    set_role(&mut tx, &r.pool, &r.to_version, Role::Retired).await?;
    tx.commit().await?;
    tracing::info!(rollout.id = id, pool = %r.pool, pool.version = %r.to_version, moved, reason = reason.unwrap_or("operator"),
        "rollout aborted");
    Ok(r)
}

/// Completes a promoted rollout once no job routed to the old version waits or runs: the old version is retired.
/// Returns the rollout when it completed now.
pub async fn try_complete(db: &PgPool, id: i64) -> Result<Option<Rollout>> {
    let mut tx = db.begin().await?;
    let r = lock(&mut tx, id).await?;
    if r.state != RolloutState::Promoted {
        return Ok(None);
    }
    if queue::routed_active(&mut *tx, &r.pool, &r.from_version).await? > 0 {
        return Ok(None);
    }
    let r = transition(&mut tx, &r, Transition::Complete, None).await?;
    set_role(&mut tx, &r.pool, &r.from_version, Role::Retired).await?;
    tx.commit().await?;
    tracing::info!(rollout.id = id, pool = %r.pool, pool.version = %r.from_version, "old version drained and retired; rollout completed");
    Ok(Some(r))
}

/// Every pool with its versions, their roles, weights, live workers and depth. `fresh` is how recent a worker's
/// heartbeat must be for it to count.
pub async fn list_pools(db: &PgPool, fresh: Duration) -> Result<Vec<PoolView>> {
    let pools: Vec<WorkerPool> = sqlx::query_as("select name, queues from worker_pool order by name")
        .fetch_all(db)
        .await?;
    let roles: Vec<(String, String, Role)> =
        sqlx::query_as("select pool, version, role from pool_version order by pool, version")
            .fetch_all(db)
            .await?;
    let rollouts = active(db).await?;
    let workers = queue::live_workers(db, fresh).await?;
    let depth = queue::pool_depth(db).await?;

    let mut out = Vec::new();
    for p in pools {
        let mut versions: BTreeMap<String, PoolVersionView> = BTreeMap::new();
        let entry = |versions: &mut BTreeMap<String, PoolVersionView>, v: &str| {
            versions.entry(v.to_owned()).or_insert_with(|| PoolVersionView {
                version: v.to_owned(),
                role: Role::Stable,
                weight: 0,
                workers: 0,
                available: 0,
                running: 0,
            });
        };
        for (_, v, role) in roles.iter().filter(|(pool, _, _)| *pool == p.pool) {
            entry(&mut versions, v);
            if let Some(e) = versions.get_mut(v) {
                e.role = *role;
            }
        }
        for w in workers.iter().filter(|w| w.pool == p.pool) {
            entry(&mut versions, &w.version);
            if let Some(e) = versions.get_mut(&w.version) {
                e.workers += 1;
            }
        }
        let rollout = rollouts.iter().find(|r| r.pool == p.pool);
        // Unrouted waiting work counts for the version new work goes to.
        let stable = rollout
            .map(|r| match r.state {
                RolloutState::Promoted => r.to_version.clone(),
                _ => r.from_version.clone(),
            })
            .or_else(|| {
                versions
                    .values()
                    .find(|v| v.role == Role::Stable)
                    .map(|v| v.version.clone())
            });
        for d in depth.iter().filter(|d| d.pool == p.pool) {
            let Some(v) = d.version.clone().or_else(|| stable.clone()) else {
                continue;
            };
            entry(&mut versions, &v);
            if let Some(e) = versions.get_mut(&v) {
                e.available += d.available;
                e.running += d.running;
            }
        }
        let state = rollout.map(|r| (r.state, r.canary_percent));
        for v in versions.values_mut() {
            v.weight = weight(v.role, state);
        }
        out.push(PoolView {
            pool: p.pool,
            queues: p.queues,
            versions: versions.into_values().collect(),
        });
    }
    Ok(out)
}
