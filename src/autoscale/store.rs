//! The `pool_target` table and the autoscaler's observation of every pool version.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::{PgExecutor, PgPool};

use super::{Error, Observed, Result, ScalePolicy};
use crate::queue::{self, FieldError};
use crate::rollout::Role;

/// A pool's scaling policy as stored and as `PUT /api/pools/{pool}/scaling` takes and returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleTarget {
    /// Fewest workers per live version.
    #[schema(minimum = 0, maximum = 10000)]
    pub min: i32,
    /// Most workers per version, at least `min`.
    #[schema(minimum = 0, maximum = 10000)]
    pub max: i32,
    /// Jobs (runnable now plus running) per worker.
    #[schema(minimum = 1, maximum = 2147483647)]
    pub target_per_worker: i32,
    /// Seconds of wanting fewer workers before scaling down.
    #[schema(minimum = 0, maximum = 2147483647)]
    pub scale_down_delay_s: i32,
}

impl ScaleTarget {
    fn validate(&self) -> Result<()> {
        let mut errs = Vec::new();
        if self.min < 0 {
            errs.push(FieldError::new("/min", "must be 0 or more"));
        }
        if self.max < self.min.max(0) || self.max > 10_000 {
            errs.push(FieldError::new("/max", "must be at least min and at most 10000"));
        }
        if self.target_per_worker < 1 {
            errs.push(FieldError::new("/target_per_worker", "must be 1 or more"));
        }
        if self.scale_down_delay_s < 0 {
            errs.push(FieldError::new("/scale_down_delay_s", "must be 0 or more"));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(errs.into()))
        }
    }

    /// The policy `decide` applies.
    pub fn policy(&self) -> ScalePolicy {
        ScalePolicy {
            min: self.min.max(0) as u32,
            max: self.max.max(0) as u32,
            target_per_worker: self.target_per_worker.max(1) as u32,
            scale_down_delay: Duration::from_secs(self.scale_down_delay_s.max(0) as u64),
        }
    }
}

/// Sets a pool's scaling policy.
pub async fn put_target<'e>(exec: impl PgExecutor<'e>, pool: &str, t: &ScaleTarget) -> Result<ScaleTarget> {
    t.validate()?;
    let row: Option<ScaleTarget> = sqlx::query_as(
        r#"
        insert into pool_target (pool, min, max, target_per_worker, scale_down_delay_s)
        select name, $2, $3, $4, $5
        from worker_pool
        where name = $1
        on conflict (pool) do update
        set min = excluded.min,
            max = excluded.max,
            target_per_worker = excluded.target_per_worker,
            scale_down_delay_s = excluded.scale_down_delay_s,
            updated_at = now()
        returning min, max, target_per_worker, scale_down_delay_s
        "#,
    )
    .bind(pool)
    .bind(t.min)
    .bind(t.max)
    .bind(t.target_per_worker)
    .bind(t.scale_down_delay_s)
    .fetch_optional(exec)
    .await?;
    row.ok_or_else(|| Error::PoolNotFound { pool: pool.to_owned() })
}

/// A pool's scaling policy, if it has one.
pub async fn get_target<'e>(exec: impl PgExecutor<'e>, pool: &str) -> Result<Option<ScaleTarget>> {
    Ok(
        sqlx::query_as("select min, max, target_per_worker, scale_down_delay_s from pool_target where pool = $1")
            .bind(pool)
            .fetch_optional(exec)
            .await?,
    )
}

/// One pool version as the autoscaler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionStatus {
    /// Pool.
    pub pool: String,
    /// Version.
    pub version: String,
    /// Role and depth.
    pub observed: Observed,
    /// The pool's policy.
    pub policy: ScalePolicy,
    /// Live workers (fresh heartbeat).
    pub workers: i64,
}

/// How long a retired version stays in view (scaled to zero) after it was retired.
const RETIRED_VISIBLE: Duration = Duration::from_secs(3600);

/// Every version of every pool that has a scaling policy: its role, depth and live workers. A pool with a policy
/// but no version yet gets `default_version` recorded as its stable version, so a fresh cluster can start.
pub async fn observe(db: &PgPool, default_version: &str, fresh: Duration) -> Result<Vec<VersionStatus>> {
    let targets: Vec<(String, ScaleTarget)> = sqlx::query_as::<_, (String, i32, i32, i32, i32)>(
        "select pool, min, max, target_per_worker, scale_down_delay_s from pool_target order by pool",
    )
    .fetch_all(db)
    .await?
    .into_iter()
    .map(|(p, min, max, target_per_worker, scale_down_delay_s)| {
        (
            p,
            ScaleTarget {
                min,
                max,
                target_per_worker,
                scale_down_delay_s,
            },
        )
    })
    .collect();
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let roles: Vec<(String, String, Role)> = sqlx::query_as(
        r#"
        select pool, version, role
        from pool_version
        where role <> 'retired'
           or updated_at >= now() - make_interval(secs => $1)
        order by pool, version
        "#,
    )
    .bind(RETIRED_VISIBLE.as_secs_f64())
    .fetch_all(db)
    .await?;
    let mut roles = roles;
    for (pool, _) in &targets {
        if !roles.iter().any(|(p, _, _)| p == pool) {
            crate::rollout::announce_version(db, pool, default_version, &[]).await?;
            roles.push((pool.clone(), default_version.to_owned(), Role::Stable));
        }
    }
    let depth = queue::pool_depth(db).await?;
    let workers = queue::live_workers(db, fresh).await?;
    let mut out = Vec::new();
    for (pool, target) in &targets {
        let mut versions: BTreeMap<&str, Observed> = BTreeMap::new();
        for (_, v, role) in roles.iter().filter(|(p, _, _)| p == pool) {
            versions.insert(
                v,
                Observed {
                    role: Some(*role),
                    depth: 0,
                },
            );
        }
        let stable = roles
            .iter()
            .find(|(p, _, r)| p == pool && *r == Role::Stable)
            .map(|(_, v, _)| v.as_str());
        for d in depth.iter().filter(|d| &d.pool == pool) {
            let Some(v) = d.version.as_deref().or(stable) else {
                continue;
            };
            let e = versions.entry(v).or_insert(Observed { role: None, depth: 0 });
            e.depth += d.available + d.running;
        }
        for (v, observed) in versions {
            out.push(VersionStatus {
                pool: pool.clone(),
                version: v.to_owned(),
                observed,
                policy: target.policy(),
                workers: workers.iter().filter(|w| &w.pool == pool && w.version == v).count() as i64,
            });
        }
    }
    Ok(out)
}
