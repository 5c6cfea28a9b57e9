//! Enqueue one or many jobs, idempotently when a key is given.
//!
//! Idempotency is race-free without check-then-insert: the statement that inserts a job first claims its key in
//! `job_key` with `on conflict do nothing` (which waits for a concurrent inserter of the same key to commit) and
//! inserts the job only if the key was its own; a conflict then reads the winner back and compares payload
//! fingerprints. Keys live in a table of their own because a job leaves `job` when it finishes, and a replay must
//! find it in history for as long as the key is kept.

use std::sync::LazyLock;

use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use super::lane::{lock_concurrency_keys, member, KeyLocks};
use super::stats::count_after;
use super::types::JOB_COLUMNS;
use super::{Error, Job, JobId, NewJob, Result};
use crate::tenancy::AccountId;

/// The result of enqueueing one job.
#[derive(Debug, Clone)]
pub struct Enqueued {
    /// The job (the existing one on a replay).
    pub job: Job,
    /// True when the idempotency key matched an existing job with the same payload.
    pub replayed: bool,
}

/// The result for one job of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnqueueOutcome {
    /// The job's id.
    pub id: JobId,
    /// True when an existing job was returned for its idempotency key.
    pub replayed: bool,
}

/// The fingerprint of a payload: SHA-256 of its canonical JSON (object keys sorted).
pub fn fingerprint(payload: &serde_json::Value) -> Vec<u8> {
    // serde_json's map is ordered by key (no `preserve_order`), so equal payloads serialise identically.
    Sha256::digest(payload.to_string().as_bytes()).to_vec()
}

fn job_fingerprint(job: &NewJob) -> Vec<u8> {
    if let Some(f) = &job.fingerprint {
        return f.clone();
    }
    fingerprint(&serde_json::json!({
        "kind": job.kind,
        "args": job.args,
        "queue": job.queue,
        "priority": job.priority,
        "run_at": job.run_at,
        "max_attempts": job.max_attempts,
        "timeout_ms": job.timeout_ms,
        "concurrency_key": job.concurrency_key,
    }))
}

/// The version a new job is routed to (see the migration `create_rollout`): the uncorrelated `exists` is
/// evaluated once per statement, so without an active rollout enqueue pays one probe of an empty index and never
/// calls `route_version` per row. The key is the job's concurrency key (sticky per root entity), else its id.
fn route_sql(queue: &str, key: &str) -> String {
    format!(
        "case when (select exists (select 1 from rollout where state in ('canary', 'promoted'))) \
         then route_version({queue}, {key}) end"
    )
}

/// Enqueues one job on `conn` (which may be inside the caller's transaction). Wake workers after commit with
/// [`crate::wake::Waker::wake`]; [`super::Queue::enqueue`] does both.
pub async fn enqueue(conn: &mut PgConnection, account: &AccountId, job: NewJob) -> Result<Enqueued> {
    job.validate().map_err(|e| Error::Invalid(e.into()))?;
    match job.concurrency_key.clone() {
        Some(key) => {
            // A savepoint when the caller already runs a transaction; the advisory lock lives until the outer
            // commit either way.
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            lock_concurrency_keys(&mut tx, account, &[key.as_str()], KeyLocks::Exclusive).await?;
            let out = insert_one(&mut tx, account, job).await?;
            tx.commit().await?;
            Ok(out)
        }
        None => insert_one(conn, account, job).await,
    }
}

/// Loads the account's data key (see [`crate::crypt::prepare`]); an account without one does not exist.
pub(super) async fn prepare(account: &AccountId) -> Result<()> {
    match crate::crypt::prepare(account.as_str()).await {
        Err(crate::crypt::Error::NoDataKey { .. }) => Err(Error::UnknownAccount {
            account: account.to_string(),
        }),
        other => Ok(other?),
    }
}

/// Draws `n` job ids, ascending, ahead of their insert: with encryption on, a job's id is part of the identity
/// its sealed args are bound to, so it must be known before the args are sealed.
async fn draw_ids(conn: &mut PgConnection, n: usize) -> Result<Vec<i64>> {
    let mut ids: Vec<i64> = sqlx::query_scalar("select nextval('job_id_seq') from generate_series(1, $1)")
        .bind(n as i64)
        .fetch_all(&mut *conn)
        .await?;
    ids.sort_unstable();
    Ok(ids)
}

async fn insert_one(conn: &mut PgConnection, account: &AccountId, job: NewJob) -> Result<Enqueued> {
    let fp = job.idempotency_key.as_ref().map(|_| job_fingerprint(&job));
    let sealed = if crate::crypt::enabled() {
        prepare(account).await?;
        let id = draw_ids(conn, 1).await?.first().copied().unwrap_or_default();
        Some((id, super::seal_json(account.as_str(), id, "args", &job.args)?))
    } else {
        None
    };
    // Twice at most: a key found taken by the insert can be released (its job's history dropped) before it is
    // read back, and is then free for this job.
    for _ in 0..2 {
        let inserted: Option<Job> = sqlx::query_as(INSERT_ONE_SQL.as_str())
            .bind(account.as_str())
            .bind(&job.queue)
            .bind(&job.kind)
            .bind(sealed.as_ref().map_or(&job.args, |s| &s.1))
            .bind(job.priority)
            .bind(job.max_attempts)
            .bind(job.run_at)
            .bind(job.timeout_ms)
            .bind(&job.idempotency_key)
            .bind(&fp)
            .bind(&job.concurrency_key)
            .bind(&job.version)
            .bind(&job.traceparent)
            .bind(sealed.as_ref().map(|s| s.0))
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(mut inserted) = inserted {
            // The caller's args, rather than opening what was just sealed.
            inserted.args = job.args;
            return Ok(Enqueued {
                job: inserted,
                replayed: false,
            });
        }
        account_exists(&mut *conn, account).await?;
        let key = job.idempotency_key.clone().unwrap_or_default();
        let Some((existing, existing_fp)) = find_by_key(conn, account, &key).await? else {
            continue;
        };
        if existing_fp != fp {
            return Err(Error::IdempotencyConflict { key, index: None });
        }
        return Ok(Enqueued {
            job: existing,
            replayed: true,
        });
    }
    Err(Error::IdempotencyConflict {
        key: job.idempotency_key.unwrap_or_default(),
        index: None,
    })
}

static INSERT_ONE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
        with n as (select coalesce($14::bigint, nextval('job_id_seq')) as id),
        -- the account exists (once per statement, instead of a foreign-key trigger per row)
        known as (select exists (select 1 from account a where a.id = $1) as ok),
        keyed as (
            insert into job_key (account_id, idempotency_key, job_id, fingerprint)
            select $1, $9, n.id, $10
            from n, known
            where known.ok and $9::text is not null
            on conflict (account_id, idempotency_key) do nothing
            returning job_id
        ),
        ins as (
            insert into job (id, account_id, queue, kind, args, state, priority, max_attempts, run_at, timeout_ms,
                             idempotency_key, fingerprint, concurrency_key, version, traceparent)
            select n.id, $1, $2, $3, $4,
                   case when coalesce($7, now()) > now() then 'scheduled'
                        when $11::text is not null and exists (
                            select 1 from job e
                            where e.account_id = $1
                              and e.concurrency_key = $11
                              and e.state in ('available', 'scheduled', 'retryable', 'running', 'parked')
                              and {MEMBER}
                        ) then 'parked'
                        else 'available' end,
                   $5, $6, coalesce($7, now()), $8, $9, $10, $11,
                   coalesce($12, {ROUTE}),
                   $13
            from n, known
            where known.ok and ($9::text is null or n.id in (select job_id from keyed))
            returning {JOB_COLUMNS}
        ){COUNT}
        select {JOB_COLUMNS} from ins
        "#,
        ROUTE = route_sql("$2", "coalesce($11, n.id::text)"),
        MEMBER = member("e"),
        COUNT = count_after("ins", &[("enqueued", "count(*)")])
    )
});

/// Errors with [`Error::UnknownAccount`] unless the account exists. A deleted account is gone already, though
/// its row stays until the purge reaches it: nothing more is enqueued or set for it.
pub(super) async fn account_exists(conn: &mut PgConnection, account: &AccountId) -> Result<()> {
    let found: bool = sqlx::query_scalar("select exists (select 1 from account where id = $1 and deleted_at is null)")
        .bind(account.as_str())
        .fetch_one(&mut *conn)
        .await?;
    if found {
        Ok(())
    } else {
        Err(Error::UnknownAccount {
            account: account.to_string(),
        })
    }
}

/// The job holding `key` and the fingerprint of its payload; `None` when no job holds the key (any more).
async fn find_by_key(
    conn: &mut PgConnection,
    account: &AccountId,
    key: &str,
) -> Result<Option<(Job, Option<Vec<u8>>)>> {
    let Some((id, fp)) = super::history::find_key(&mut *conn, account.as_str(), key).await? else {
        return Ok(None);
    };
    match super::get(&mut *conn, account, JobId(id)).await {
        Ok(job) => Ok(Some((job, fp))),
        Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Enqueues many jobs with one statement, or a binary `COPY` for a large batch of plain jobs (see
/// [`super::bulk`]). Call inside a transaction: a conflict on any idempotency key fails the whole batch (the caller
/// rolls back). Ids are drawn in batch order.
pub async fn enqueue_many(
    conn: &mut PgConnection,
    account: &AccountId,
    jobs: &[NewJob],
) -> Result<Vec<EnqueueOutcome>> {
    enqueue_many_locking(conn, account, jobs, KeyLocks::Exclusive).await
}

/// [`enqueue_many`], holding the locks of the jobs' concurrency keys as `locks` says (see [`KeyLocks`]).
pub async fn enqueue_many_locking(
    conn: &mut PgConnection,
    account: &AccountId,
    jobs: &[NewJob],
    locks: KeyLocks,
) -> Result<Vec<EnqueueOutcome>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let mut invalid = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        if let Err(errs) = j.validate() {
            invalid.extend(
                errs.into_iter()
                    .map(|e| super::FieldError::new(format!("/jobs/{i}{}", e.path), e.message)),
            );
        }
    }
    if !invalid.is_empty() {
        return Err(Error::Invalid(invalid.into()));
    }
    if super::bulk::copyable(jobs) {
        if let Some(ids) = super::bulk::copy_jobs(conn, account, jobs).await? {
            return Ok(ids
                .into_iter()
                .map(|id| EnqueueOutcome {
                    id: JobId(id),
                    replayed: false,
                })
                .collect());
        }
    }
    let keys: Vec<&str> = jobs.iter().filter_map(|j| j.concurrency_key.as_deref()).collect();
    lock_concurrency_keys(conn, account, &keys, locks).await?;

    let n = jobs.len();
    // Drawn after the key locks, as the statement would draw them.
    let (drawn, sealed) = if crate::crypt::enabled() {
        prepare(account).await?;
        let ids = draw_ids(conn, n).await?;
        let sealed = ids
            .iter()
            .zip(jobs)
            .map(|(id, j)| super::seal_json(account.as_str(), *id, "args", &j.args))
            .collect::<Result<Vec<_>, _>>()?;
        (ids, sealed)
    } else {
        (Vec::new(), Vec::new())
    };
    let mut queue = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut args = Vec::with_capacity(n);
    let mut priority = Vec::with_capacity(n);
    let mut max_attempts = Vec::with_capacity(n);
    let mut run_at = Vec::with_capacity(n);
    let mut timeout_ms = Vec::with_capacity(n);
    let mut idem = Vec::with_capacity(n);
    let mut fps = Vec::with_capacity(n);
    let mut ckey = Vec::with_capacity(n);
    let mut version = Vec::with_capacity(n);
    let mut trace = Vec::with_capacity(n);
    for (i, j) in jobs.iter().enumerate() {
        queue.push(j.queue.as_str());
        kind.push(j.kind.as_str());
        args.push(sealed.get(i).unwrap_or(&j.args));
        priority.push(j.priority);
        max_attempts.push(j.max_attempts);
        run_at.push(j.run_at);
        timeout_ms.push(j.timeout_ms);
        idem.push(j.idempotency_key.as_deref());
        fps.push(j.idempotency_key.as_ref().map(|_| job_fingerprint(j)));
        ckey.push(j.concurrency_key.as_deref());
        version.push(j.version.as_deref());
        trace.push(j.traceparent.as_deref());
    }
    let rows: Vec<(i64, i64, bool)> = sqlx::query_as(ENQUEUE_MANY_SQL.as_str())
        .bind(account.as_str())
        .bind(&queue)
        .bind(&kind)
        .bind(&args)
        .bind(&priority)
        .bind(&max_attempts)
        .bind(&run_at)
        .bind(&timeout_ms)
        .bind(&idem)
        .bind(&fps)
        .bind(&ckey)
        .bind(&version)
        .bind(&trace)
        .bind(&drawn)
        .fetch_all(&mut *conn)
        .await?;
    if rows.iter().all(|r| !r.2) {
        // nothing inserted: every job a replay, or no such account
        account_exists(&mut *conn, account).await?;
    }
    let replayed_keyed = rows
        .iter()
        .any(|&(ord, _, inserted)| !inserted && ckey.get((ord - 1) as usize).is_some_and(|k| k.is_some()));

    let mut out: Vec<EnqueueOutcome> = rows
        .iter()
        .map(|&(_, id, inserted)| EnqueueOutcome {
            id: JobId(id),
            replayed: !inserted,
        })
        .collect();
    if replayed_keyed {
        // A replayed job of a key was not inserted, yet the batch's later jobs of that key parked behind it: their
        // lanes are marked, and settled (here, under this transaction's key locks) like any other mark.
        unpark_behind_replays(conn, account, &ckey).await?;
    }
    let conflicted: Vec<usize> = rows.iter().enumerate().filter(|(_, r)| !r.2).map(|(i, _)| i).collect();
    if conflicted.is_empty() {
        return Ok(out);
    }
    let conflict_keys: Vec<&str> = conflicted.iter().filter_map(|&i| idem[i]).collect();
    let existing: Vec<(i64, String, Option<Vec<u8>>)> = sqlx::query_as(
        r#"
        select job_id, idempotency_key, fingerprint
        from job_key
        where account_id = $1
          and idempotency_key = any($2)
        "#,
    )
    .bind(account.as_str())
    .bind(&conflict_keys)
    .fetch_all(&mut *conn)
    .await?;
    for i in conflicted {
        let key = idem[i].unwrap_or_default();
        match existing.iter().find(|(_, k, _)| k == key) {
            Some((id, _, fp)) if *fp == fps[i] => {
                out[i] = EnqueueOutcome {
                    id: JobId(*id),
                    replayed: true,
                }
            }
            _ => {
                return Err(Error::IdempotencyConflict {
                    key: key.to_owned(),
                    index: Some(i),
                })
            }
        }
    }
    Ok(out)
}

static ENQUEUE_MANY_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
        -- ids drawn in batch order, before anything sorts the rows
        with drawn as materialized (
            -- or drawn already (empty $14 pads with nulls), when the ids are bound into sealed args
            select coalesce(t.drawn, nextval('job_id_seq')) as id, t.*
            from unnest($2::text[], $3::text[], $4::jsonb[], $5::smallint[], $6::int[], $7::timestamptz[],
                        $8::int[], $9::text[], $10::bytea[], $11::text[], $12::text[], $13::text[], $14::bigint[])
                 with ordinality
                 as t(queue, kind, args, priority, max_attempts, run_at, timeout_ms, idempotency_key,
                      fingerprint, concurrency_key, version, traceparent, drawn, ord)
        ),
        -- Due jobs of the same key earlier in this batch: the first is its lane's head at most, the rest park.
        input as materialized (
            select d.*,
                   count(*) filter (where d.concurrency_key is not null and coalesce(d.run_at, now()) <= now())
                       over (partition by d.concurrency_key order by d.ord
                             rows between unbounded preceding and 1 preceding) as ahead
            from drawn d
        ),
        -- Keys whose lane already has members: the batch's jobs of them park.
        busy as materialized (
            select k.concurrency_key
            from (select distinct concurrency_key from input where concurrency_key is not null) k
            where exists (
                select 1 from job e
                where e.account_id = $1
                  and e.concurrency_key = k.concurrency_key
                  and e.state in ('available', 'scheduled', 'retryable', 'running', 'parked')
                  and {member}
            )
        ),
        -- The active rollout of each queue's pool, looked up once per queue (and not at all without one).
        routes as materialized (
            select q.queue, r.state, r.from_version, r.to_version, r.canary_percent
            from (select distinct queue from input) q
            join rollout r on r.state in ('canary', 'promoted')
                          and r.pool = pool_of_queue(q.queue)
            where (select exists (select 1 from rollout where state in ('canary', 'promoted')))
        ),
        -- the account exists (once per statement, instead of a foreign-key trigger per row)
        known as (select exists (select 1 from account a where a.id = $1) as ok),
        -- each key is claimed by the first job of the batch that carries it
        keyed as (
            insert into job_key (account_id, idempotency_key, job_id, fingerprint)
            select $1, idempotency_key, id, fingerprint
            from input, known
            where known.ok and idempotency_key is not null
            order by ord
            on conflict (account_id, idempotency_key) do nothing
            returning job_id
        ),
        ins as (
            insert into job (id, account_id, queue, kind, args, state, priority, max_attempts, run_at, timeout_ms,
                             idempotency_key, fingerprint, concurrency_key, version, traceparent)
            select id, $1, queue, kind, args,
                   case when coalesce(run_at, now()) > now() then 'scheduled'
                        when concurrency_key is not null
                             and (ahead > 0 or exists (select 1 from busy b where b.concurrency_key = input.concurrency_key))
                        then 'parked'
                        else 'available' end,
                   priority, max_attempts, coalesce(run_at, now()), timeout_ms,
                   idempotency_key, fingerprint, concurrency_key,
                   coalesce(version, (
                       select route_pick(rt.state, rt.from_version, rt.to_version, rt.canary_percent,
                                         coalesce(input.concurrency_key, input.id::text))
                       from routes rt
                       where rt.queue = input.queue)),
                   traceparent
            from input, known
            where known.ok and (idempotency_key is null or id in (select job_id from keyed))
            order by ord
            returning id, account_id, queue
        ){count}
        select input.ord, input.id, ins.id is not null
        from input
        left join ins on ins.id = input.id
        order by input.ord
        "#,
        member = member("e"),
        count = count_after("ins", &[("enqueued", "count(*)")])
    )
});

/// Settles the lanes of `keys` after a batch in which a job of a key was a replay (not inserted): the batch's later
/// jobs of that key parked behind it. Marks the lanes and releases them in this transaction, which holds their
/// enqueue locks.
async fn unpark_behind_replays(conn: &mut PgConnection, account: &AccountId, keys: &[Option<&str>]) -> Result<()> {
    let mut keys: Vec<&str> = keys.iter().flatten().copied().collect();
    keys.sort_unstable();
    keys.dedup();
    sqlx::query(
        r#"
        insert into job_lane_mark (account_id, concurrency_key)
        select $1, k from unnest($2::text[]) as k
        on conflict (account_id, concurrency_key) do update set marked_at = excluded.marked_at
        "#,
    )
    .bind(account.as_str())
    .bind(&keys)
    .execute(&mut *conn)
    .await?;
    super::release_lanes(&mut *conn, keys.len() as i64 + 100).await?;
    Ok(())
}
