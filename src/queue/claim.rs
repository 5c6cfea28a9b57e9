//! Claiming: one statement takes up to N runnable jobs of one queue, shared out between the accounts with waiting
//! work, and leases them (a short transaction around it when a limited account has work, see [`super::share`]).

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgExecutor};

use super::share::{FairShare, Unit, ACCOUNTS_WITH_WORK};

use super::types::{job_columns_of, JOB_COLUMNS, WAITING_BY_ID};
use super::{Job, JobId, Result};
use crate::tenancy::AccountId;

/// The rules every claim applies to a row `r` beyond its own selection: its account has not paused its queue, and
/// when it has a concurrency key it is its lane's head. Jobs behind the head are parked (never candidates), and a
/// keyed job scheduled for later joins its lane only when maintenance promotes it once due (see
/// [`super::promote_due`]), so every keyed candidate that is not `scheduled` is a head: no probe of the lane, and
/// a claim walks only heads, whatever waits behind them.
fn turn_has_come(r: &str) -> String {
    format!(
        r#"not exists (
              select 1 from queue_pause p where p.account_id = {r}.account_id and p.queue = {r}.queue
          )
          and ({r}.concurrency_key is null or {r}.state <> 'scheduled')"#
    )
}

/// The lease a claim takes: `running`, one more attempt, until `lease` seconds from now, held by `owner`.
fn lease(lease: &str, owner: &str) -> String {
    format!(
        "state = 'running', attempt = job.attempt + 1, started_at = now(), \
         leased_until = now() + make_interval(secs => {lease}), lease_owner = {owner}"
    )
}

/// The fair claim. `$2` is the claim's share-out ([`Unit`]s as JSON, in turn order): first each unit takes up to
/// its quota of its account's jobs, then units marked to take leftovers take what the claim has room for, in the
/// same order. Each part is `job_claim_walk` (see its migration), which walks one account's jobs in the claim
/// index (queue, account, priority, run_at, id), from the floors `$8` gives per account (see [`super::floor`]),
/// and locks only the rows it takes. With `record_starts`, the
/// starts of rate-limited kinds are written down in the same statement (the caller holds the accounts' share rows
/// locked).
fn fair_claim_sql(record_starts: bool) -> String {
    let starts = if record_starts {
        r#",
        started as (
            insert into account_kind_start (account_id, kind, at, n)
            select c.account_id, c.kind, now(), count(*)
            from claimed c
            join account_kind_limit k
              on k.account_id = c.account_id and k.kind = c.kind and k.max_per_second is not null
            group by c.account_id, c.kind
        )"#
    } else {
        ""
    };
    format!(
        r#"
        with unit as (
            select u.a, u.k, u.q, u.f, u.n,
                   -- the unit's walk (see floor.rs): every priority from the start unless $8 says where to start
                   coalesce(w.lo, '{{-32768}}') as lo, coalesce(w.hi, '{{32767}}') as hi,
                   coalesce(w.t, '{{-infinity}}') as t
            from rows from (jsonb_to_recordset($2::jsonb) as (a text, k text[], q bigint, f boolean))
                with ordinality as u(a, k, q, f, n)
            left join lateral jsonb_to_record($8::jsonb -> u.a) as w(lo smallint[], hi smallint[], t timestamptz[])
                on true
            where not exists (select 1 from queue_pause p where p.account_id = u.a and p.queue = $1)
              -- a retired version claims nothing (evaluated once per statement: it does not depend on the row)
              and not exists (
                  select 1 from pool_version v where v.pool = $7 and v.version = $3 and v.role = 'retired'
              )
        ),
        first as (
            select u.n, c.id
            from unit u
            cross join lateral job_claim_walk($1, u.a, u.k, $3, u.q, '{{}}', u.lo, u.hi, u.t) as c(id)
            where u.q > 0
        ),
        leftover as (
            select c.id
            from unit u
            -- rows `first` locked are this transaction's own: skip locked would not skip them
            cross join lateral job_claim_walk(
                $1, u.a, u.k, $3, $4 - (select count(*) from first), array(select id from first), u.lo, u.hi, u.t
            ) as c(id)
            where u.f and $4 > (select count(*) from first)
              -- a unit that took less than its quota has nothing more to give: another walk would only pass over
              -- what the first one passed (dead index entries, after a drain)
              and (u.q = 0 or (select count(*) from first f where f.n = u.n) >= u.q)
            limit greatest($4 - (select count(*) from first), 0)
        ),
        claimed as (
            update job
            set {lease},
                pool = $7,
                version = $3
            -- the ids as one array: index probes, whatever the planner guesses of the parts' sizes
            where job.id = any(array(select id from first union all select id from leftover))
            returning {cols}
        ){starts}
        -- started in claim order
        select * from claimed order by priority, run_at, id
        "#,
        lease = lease("$5", "$6"),
        cols = job_columns_of("job"),
    )
}

static CLAIM_SQL: LazyLock<String> = LazyLock::new(|| fair_claim_sql(false));

/// The claim of a claimer that has no list of accounts (see [`FairShare::idle`]): it finds the accounts with work
/// itself, in account order, and takes from each unlimited one in turn until the claim is full (`$2`: the kinds).
/// Limited accounts are left to the planned claim, which counts them first.
static BLIND_CLAIM_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
        with recursive {ACCOUNTS_WITH_WORK},
        picked as (
            select c.id
            from active a
            cross join lateral job_claim_pick($1, a.account_id, $2, $3, $4, '{{}}') as c(id)
            where a.account_id is not null
              and not exists (select 1 from queue_pause p where p.account_id = a.account_id and p.queue = $1)
              and not exists (
                  select 1 from account_queue_limit l where l.account_id = a.account_id and l.queue = $1
              )
              and not exists (select 1 from account_kind_limit k where k.account_id = a.account_id)
              and not exists (
                  select 1 from pool_version v where v.pool = $7 and v.version = $3 and v.role = 'retired'
              )
            -- the walk stops at the account that fills the claim
            limit $4
        ),
        claimed as (
            update job
            set {lease},
                pool = $7,
                version = $3
            where job.id = any(array(select id from picked))
            returning {cols}
        )
        -- started in claim order
        select * from claimed order by priority, run_at, id
        "#,
        lease = lease("$5", "$6"),
        cols = job_columns_of("job"),
    )
});
static LIMITED_CLAIM_SQL: LazyLock<String> = LazyLock::new(|| fair_claim_sql(true));

static LOCK_IDS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
        select {cols}
        from job
        where job.id = any($1)
          and job.account_id = $2
          and {waiting}
          and job.state <> 'parked'
          and job.run_at <= now()
          and {turn}
        order by job.id
        for update of job skip locked
        "#,
        turn = turn_has_come("job"),
        waiting = WAITING_BY_ID,
        cols = JOB_COLUMNS
    )
});

/// Locks these jobs of `account` for the caller's transaction to run (the API node running sync events inline),
/// each under the same rules as [`claim`] but for routing: it must be due, its queue not paused, and no earlier
/// unfinished job of its concurrency key may exist (so of two jobs of one key asked for together, only the first
/// is taken). Jobs a worker has, or is claiming, and jobs that must wait their turn are left out. The jobs stay
/// as they are (no attempt is taken): the transaction settles them with [`super::complete_locked`], so each costs
/// one new row version instead of two. Returned in id order.
pub async fn lock_ids<'e>(exec: impl PgExecutor<'e>, account: &AccountId, ids: &[JobId]) -> Result<Vec<Job>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
    Ok(sqlx::query_as::<_, Job>(LOCK_IDS_SQL.as_str())
        .bind(&ids)
        .bind(account.as_str())
        .fetch_all(exec)
        .await?)
}

static LOCK_FOLLOWING_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
        select {cols}
        from job
        -- the ids as one array: index probes per key, whatever a fresh table's statistics make of a join
        where job.id = any(array(
                select r.id
                from unnest($2::text[], $3::bigint[]) as k(concurrency_key, after)
                cross join lateral (
                    select w.id,
                           -- the run ends at the first job this call may not take: it waits, and so do the rest
                           bool_and(w.state <> 'running' and w.kind = $4 and (w.version is null or w.version = $5)
                                    -- due by now, not by the start of the transaction: it may have run a while
                                    and w.run_at <= statement_timestamp())
                               over (order by w.id + 0) as takeable
                    from job w
                    where w.account_id = $1
                      and w.concurrency_key = k.concurrency_key
                      and w.id > k.after
                      -- the states of the lane index, so that it serves the scan in lane order: the claim index has
                      -- no key, and a plan that filters it by key reads every waiting job of the queue
                      and w.state in ('available', 'scheduled', 'retryable', 'running', 'parked')
                      -- a future scheduled job does not block the ones after it
                      and (w.state <> 'scheduled' or w.run_at <= statement_timestamp())
                    -- the lane index's order (see the migration of job_lane_idx)
                    order by w.account_id, w.concurrency_key, (w.id + 0)
                    limit $6
                ) r
                where r.takeable
            ))
          -- checked again on the row as locked: a job cancelled meanwhile is left out
          and {waiting}
          and not exists (
              select 1 from queue_pause p where p.account_id = job.account_id and p.queue = job.queue
          )
        order by job.id
        for update of job
        "#,
        waiting = WAITING_BY_ID,
        cols = job_columns_of("job")
    )
});

/// For each job of `after` (all of one account and kind, each run in `exec`'s open transaction), locks the run of
/// jobs that follow it in its concurrency key: up to `per_key` of them in id order, up to the first that is not
/// due, not of the same kind, or routed to a version other than `version` (`None`: routed to none). The jobs stay as they are (no attempt is
/// taken); the caller runs them in that transaction and settles them with [`super::complete_locked`], so each
/// costs one new row version instead of two. Returned in id order.
///
/// This skips the earlier-unfinished-job rule of [`claim`] on purpose, for an executor that holds the keys' root
/// entities locked in that transaction and has run `after` there: no one else can run the key until it commits
/// (other claims see `after` unfinished), so its waiting jobs are the executor's to run in order. The one job the
/// rule would put first, an earlier scheduled job that fell due meanwhile, runs right after the commit.
pub async fn lock_following<'e>(
    exec: impl PgExecutor<'e>,
    after: &[Job],
    version: Option<&str>,
    per_key: i64,
) -> Result<Vec<Job>> {
    let Some(first) = after.first() else {
        return Ok(Vec::new());
    };
    let (keys, ids): (Vec<&str>, Vec<i64>) = after
        .iter()
        .filter_map(|j| j.concurrency_key.as_deref().map(|k| (k, j.id.0)))
        .unzip();
    if keys.is_empty() || per_key <= 0 {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as::<_, Job>(LOCK_FOLLOWING_SQL.as_str())
        .bind(&first.account_id)
        .bind(&keys)
        .bind(&ids)
        .bind(&first.kind)
        .bind(version)
        .bind(per_key)
        .fetch_all(exec)
        .await?)
}

/// What a worker asks for in one claim.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    /// The queue to claim from (one queue per statement keeps the claim an ordered index scan).
    pub queue: &'a str,
    /// Kinds the worker has handlers for; others wait for a worker that knows them.
    pub kinds: &'a [String],
    /// The worker's pool, recorded on the job.
    pub pool: &'a str,
    /// The worker's version: it takes jobs routed to it and unrouted ones.
    pub version: &'a str,
    /// The worker id, recorded as lease owner.
    pub worker_id: &'a str,
    /// How long the lease lasts before another worker may take the job over.
    pub lease: Duration,
    /// At most this many jobs (the worker's free slots).
    pub limit: i64,
}

/// Claims up to `limit` runnable jobs: due, not paused, of a known kind, routed to this version or to none, and
/// not blocked by an earlier unfinished job of the same concurrency key. Each claimed job is `running`, its
/// `attempt` bumped and its lease set. The accounts with waiting work share the claim by their weights (`share`
/// keeps the turn and the credits between claims; see [`super::share`]), and no account's limits are exceeded.
pub async fn claim(conn: &mut PgConnection, req: &ClaimRequest<'_>, share: &mut FairShare) -> Result<Vec<Job>> {
    if req.limit <= 0 {
        return Ok(Vec::new());
    }
    let started = Instant::now();
    let full = share.walks_from_start(started);
    let (jobs, reads) = if full && share.counts_reads() {
        // The transaction's own statistics count what this walk read (see `floor::DEAD_READS`).
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let before = index_reads(&mut tx).await?;
        let jobs = claim_walking(&mut tx, req, share, full).await?;
        let read = index_reads(&mut tx).await? - before;
        tx.commit().await?;
        (jobs, Some(read))
    } else {
        (claim_walking(conn, req, share, full).await?, None)
    };
    share.walked(Instant::now(), full, started.elapsed(), reads, &jobs);
    if jobs.is_empty() {
        share.idle();
    }
    Ok(jobs)
}

/// Index entries of `job` the connection's transaction has read so far: exact and immediate, but the backend's
/// pending counters may also hold earlier transactions' reads, so callers take a difference.
pub(super) async fn index_reads(conn: &mut PgConnection) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "select coalesce(sum(pg_stat_get_xact_tuples_returned(indexrelid)), 0)::bigint \
         from pg_index where indrelid = 'job'::regclass",
    )
    .fetch_one(conn)
    .await?)
}

/// [`claim`], walking each account's jobs from the start when `full`, else from the share's floors.
async fn claim_walking(
    conn: &mut PgConnection,
    req: &ClaimRequest<'_>,
    share: &mut FairShare,
    full: bool,
) -> Result<Vec<Job>> {
    if full && share.take_blind() {
        let jobs = run_claim(&mut *conn, req, Blind(req.kinds), BLIND_CLAIM_SQL.as_str()).await?;
        if !jobs.is_empty() {
            return Ok(jobs);
        }
        // Nothing for an unlimited account: a limited one may have work, which only the planned claim counts.
    }
    let now = Instant::now();
    if share.stale(now) {
        let active = super::share::active_accounts(&mut *conn, req.queue).await?;
        share.set_active(active, now);
    }
    let ranges = if full {
        serde_json::Value::Object(Default::default())
    } else {
        share.ranges(now)
    };
    // Owned: the share is planned (mutably) while these are still needed.
    let limited: Vec<String> = share
        .active()
        .iter()
        .filter(|a| a.limited)
        .map(|a| a.account_id.clone())
        .collect();
    if limited.is_empty() {
        let units = share.plan(req.limit, req.kinds, &HashMap::new());
        let jobs = run_claim(&mut *conn, req, Planned(&units, ranges), CLAIM_SQL.as_str()).await?;
        settle(share, &units, &jobs);
        return Ok(jobs);
    }
    // Counted and taken one claim at a time per limited account: the share rows stay locked until commit.
    let limited: Vec<&str> = limited.iter().map(String::as_str).collect();
    // (a savepoint when the caller's connection is in a transaction already)
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    super::share::lock_limited(&mut tx, &limited).await?;
    let allowances = super::share::allowances(&mut tx, &limited, req.queue).await?;
    let units = share.plan(req.limit, req.kinds, &allowances);
    let jobs = run_claim(&mut *tx, req, Planned(&units, ranges), LIMITED_CLAIM_SQL.as_str()).await?;
    tx.commit().await?;
    settle(share, &units, &jobs);
    Ok(jobs)
}

fn settle(share: &mut FairShare, units: &[Unit], jobs: &[Job]) {
    let mut taken: HashMap<&str, i64> = HashMap::new();
    for job in jobs {
        *taken.entry(job.account_id.as_str()).or_default() += 1;
    }
    share.settle(units, &taken);
}

/// What a claim statement takes as `$2`.
enum Part<'a> {
    /// The share-out and the walks' ranges per account, for [`CLAIM_SQL`] and [`LIMITED_CLAIM_SQL`].
    Planned(&'a [Unit], serde_json::Value),
    /// The kinds, for [`BLIND_CLAIM_SQL`].
    Blind(&'a [String]),
}
use Part::{Blind, Planned};

async fn run_claim<'e>(
    exec: impl PgExecutor<'e>,
    req: &ClaimRequest<'_>,
    part: Part<'_>,
    sql: &'static str,
) -> Result<Vec<Job>> {
    let query = sqlx::query_as::<_, Job>(sql)
        // An unnamed statement, planned with the actual units every time: a cached generic plan can flip to a full
        // scan once statistics change.
        .persistent(false)
        .bind(req.queue);
    let (query, ranges) = match part {
        Planned([], _) => return Ok(Vec::new()),
        Planned(units, ranges) => (
            query.bind(serde_json::to_value(units).map_err(|e| sqlx::Error::Encode(Box::new(e)))?),
            Some(ranges),
        ),
        Blind(kinds) => (query.bind(kinds), None),
    };
    // The locking selects live in CTEs: as plain subqueries the planner may lock more rows than the limit.
    let query = query
        .bind(req.version)
        .bind(req.limit)
        .bind(req.lease.as_secs_f64())
        .bind(req.worker_id)
        .bind(req.pool);
    let query = match ranges {
        Some(ranges) => query.bind(ranges),
        None => query,
    };
    Ok(query.fetch_all(exec).await?)
}
