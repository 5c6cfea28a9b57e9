//! Lanes: the jobs of one account and concurrency key, run one at a time in id order.
//!
//! Only a lane's head is ever a claim candidate. A job enqueued behind an earlier member of its lane is `parked`
//! (outside the claim index), and the statement that finishes a lane's job releases the next parked one, so a
//! claim's cost never depends on how long any lane is.
//!
//! Members of a lane are its jobs that are available, retryable, running or parked, and scheduled ones once due: a
//! job scheduled in the future blocks nothing. A keyed job that falls due is not claimed directly: maintenance
//! promotes it into its lane ([`super::promote_due`]), as its head when nothing of the lane is active, else parked,
//! so no claim ever probes a lane. The race this leaves is an enqueue committing a parked job while
//! the lane's last active member finishes: the finishing statement cannot see the new job. Enqueuers hold the
//! key's advisory lock (see `enqueue`), so such a finish marks its lane (`job_lane_mark`) and
//! [`release_lanes`] settles the mark once no enqueuer holds the key.

use sqlx::{PgConnection, PgExecutor};

use super::types::by_id;
use super::Result;
use crate::tenancy::AccountId;

/// Whether `{e}` is a member of its lane (see the module docs).
pub(crate) fn member(e: &str) -> String {
    format!(
        "({e}.state in ('available', 'retryable', 'running', 'parked') \
         or ({e}.state = 'scheduled' and {e}.run_at <= now()))"
    )
}

/// CTEs that release the next parked job of each lane a statement finished jobs of. `done` names an earlier CTE
/// with the columns `id`, `account_id`, `concurrency_key` and `finished` (false for a job that stays in its lane,
/// e.g. a failure that will be retried). Append after `done`, comma first; the statement then selects from `done`.
///
/// A lane is released only when no other job of it is active (available, retryable or running) as the statement
/// sees it; the next job is the lowest parked id not finished by this statement. A lane with nothing to release,
/// one with a due job that maintenance has yet to promote, or whose next job another transaction holds locked, is
/// marked for [`release_lanes`].
pub(crate) fn release_after(done: &str) -> String {
    release(
        done,
        &format!(
            r#"
        lane_released as (
            update job
            set state = 'available', run_at = least(job.run_at, now())
            from (
                select j.id
                from job j
                join lane_next n on {next} and not n.due
                where j.state = 'parked'
                for update of j skip locked
            ) r
            where {released}
            returning job.id, false as handed
        ),"#,
            next = by_id("j.id", "n.next_id"),
            released = by_id("job.id", "r.id")
        ),
    )
}

/// [`release_after`] for a worker's completions, handing the released jobs over to that worker where it can run
/// them: each is leased to it in the same statement as a claim would lease it (its queue and kind served, its
/// version the worker's or none, its queue not paused, the worker's version not retired), up to a number of jobs;
/// the rest become available. The statement binds the offer from `$first` on: worker id, lease seconds, kinds,
/// queues, pool, version and the most jobs to hand over. `lane_released` returns `handed` for each job.
pub(crate) fn release_after_handing_off(done: &str, first: usize) -> String {
    let p = |i: usize| format!("${}", first + i);
    let (owner, lease, kinds, queues, pool, version, limit) = (p(0), p(1), p(2), p(3), p(4), p(5), p(6));
    release(
        done,
        &format!(
            r#"
        lane_locked as (
            select j.id, j.account_id, j.queue, j.kind, j.version
            from job j
            join lane_next n on {next} and not n.due
            where j.state = 'parked'
            for update of j skip locked
        ),
        lane_offered as (
            select l.id,
                   l.queue = any({queues}::text[])
                   and l.kind = any({kinds}::text[])
                   and (l.version is null or l.version = {version}::text)
                   and not exists (select 1 from queue_pause p where p.account_id = l.account_id and p.queue = l.queue)
                   and not exists (
                       select 1 from pool_version v
                       where v.pool = {pool}::text and v.version = {version}::text and v.role = 'retired'
                   ) as fits
            from lane_locked l
        ),
        lane_handed as (
            select o.id, o.fits and row_number() over (partition by o.fits order by o.id) <= {limit}::bigint as handed
            from lane_offered o
        ),
        lane_released as (
            update job
            set state = case when r.handed then 'running' else 'available' end,
                run_at = least(job.run_at, now()),
                attempt = job.attempt + r.handed::int,
                started_at = case when r.handed then now() else job.started_at end,
                leased_until = case when r.handed then now() + make_interval(secs => {lease}::float8) end,
                lease_owner = case when r.handed then {owner}::text else job.lease_owner end,
                pool = case when r.handed then {pool}::text else job.pool end,
                version = case when r.handed then {version}::text else job.version end
            from lane_handed r
            where {handed}
            returning job.id, r.handed
        ),"#,
            next = by_id("j.id", "n.next_id"),
            handed = by_id("job.id", "r.id")
        ),
    )
}

/// The lane CTEs around `released`, the CTE named `lane_released` that releases `lane_next`'s jobs.
fn release(done: &str, released: &str) -> String {
    // Every lane's facts are columns of one row (no join between CTEs per lane, which the planner may run as a
    // nested loop: quadratic in the lanes of a batch), and the last step's membership test is a hashed `in`.
    format!(
        r#",
        lane as (
            select f.account_id, f.concurrency_key, array_agg(f.id) as ids
            from {done} f
            where f.finished and f.concurrency_key is not null
            group by f.account_id, f.concurrency_key
        ),
        lane_next as (
            select l.account_id, l.concurrency_key,
                   -- the lowest parked job not finished here: among the first (finished + 1) parked, in lane order
                   (select min(p.id)
                    from (select p.id
                          from job p
                          where p.account_id = l.account_id
                            and p.concurrency_key = l.concurrency_key
                            and p.state = 'parked'
                          -- the lane index's order (see the migration of job_lane_idx)
                          order by p.account_id, p.concurrency_key, (p.id + 0)
                          limit cardinality(l.ids) + 1) p
                    where p.id <> all(l.ids)) as next_id,
                   -- a due job of the lane waiting for its promotion goes first: release nothing, mark the lane
                   exists (
                       select 1 from job e
                       where e.account_id = l.account_id
                         and e.concurrency_key = l.concurrency_key
                         and e.state = 'scheduled'
                         and e.run_at <= now()
                   ) as due
            from lane l
            -- nothing else of the lane is active (the head index holds its few unparked jobs). `offset 0` keeps
            -- this a probe per lane: as an anti-join, statistics that call `job` empty chose a walk of the whole
            -- head index per lane, every keyed job's dead versions included under a snapshot held open.
            where not exists (
                select 1 from job e
                where e.account_id = l.account_id
                  and e.concurrency_key = l.concurrency_key
                  and e.state in ('available', 'retryable', 'running')
                  and e.id <> all(l.ids)
                offset 0
            )
        ),{released}
        lane_marked as (
            insert into job_lane_mark (account_id, concurrency_key)
            select n.account_id, n.concurrency_key
            from lane_next n
            where n.next_id is null
               or n.due
               or n.next_id not in (select r.id from lane_released r)
            on conflict (account_id, concurrency_key) do update set marked_at = excluded.marked_at
        )"#
    )
}

/// Settles up to `limit` lane marks (at most 1 000; see the module docs) and returns the queues of the jobs it released, one
/// entry per job. Never waits on a lock, so any process may call it at any time; the queue maintenance does every
/// round, and a worker after it finished jobs of a lane.
pub async fn release_lanes<'e>(exec: impl PgExecutor<'e>, limit: i64) -> Result<Vec<String>> {
    // Each mark looked at holds an advisory lock until the call's transaction ends: keep rounds small.
    let limit = i32::try_from(limit.clamp(1, 1000)).unwrap_or(1000);
    Ok(sqlx::query_scalar("select released_queue from job_lane_release($1)")
        .bind(limit)
        .fetch_all(exec)
        .await?)
}

/// How many lanes are marked, for tests and diagnostics.
pub async fn marked_lanes<'e>(exec: impl PgExecutor<'e>) -> Result<i64> {
    Ok(sqlx::query_scalar("select count(*) from job_lane_mark")
        .fetch_one(exec)
        .await?)
}

/// How an enqueue holds the locks of its keys' buckets (see [`lock_concurrency_keys`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyLocks {
    /// Enqueuers of a bucket's keys take turns: what every enqueue does unless its caller says otherwise.
    #[default]
    Exclusive,
    /// Enqueuers holding them shared go together; exclusive holders still wait for them and they for exclusive
    /// ones, and lane release and promotion leave their keys alone meanwhile. Only for a caller that never enqueues
    /// a key while another shared holder may enqueue the same key: a load's chunks, whose positions each belong to
    /// one partition, whose chunks run one at a time.
    Shared,
}

/// Takes the advisory locks of the keys' buckets (see the migration `bucket_key_locks`), so that within one
/// concurrency key id order is commit order; a transaction holds at most 512 of them however many keys it enqueues.
pub(super) async fn lock_concurrency_keys(
    conn: &mut PgConnection,
    account: &AccountId,
    keys: &[&str],
    locks: KeyLocks,
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    // In bucket order, each once, so two batches sharing buckets cannot deadlock (shared or not).
    macro_rules! lock_buckets {
        ($lock:literal) => {
            concat!(
                "select ",
                $lock,
                "(job_key_lock_class(), b) \
                 from (select distinct job_key_lock_bucket($1, k) as b from unnest($2::text[]) as k) t \
                 order by b"
            )
        };
    }
    let sql = match locks {
        KeyLocks::Exclusive => lock_buckets!("pg_advisory_xact_lock"),
        KeyLocks::Shared => lock_buckets!("pg_advisory_xact_lock_shared"),
    };
    sqlx::query(sql)
        .bind(account.as_str())
        .bind(keys)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
