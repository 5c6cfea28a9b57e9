-- Per-key order at constant cost. A job that waits behind an earlier unfinished job of its concurrency key is
-- `parked`: outside the claim index (whose predicate names the three waiting states), so a claim never walks a
-- key's run. The statement that finishes a key's job releases the next parked one (see queue::complete). The API
-- shows a parked job as `available`.
--
-- A lane (the jobs of one account and key) has members: its jobs that are available, retryable, running, parked,
-- or scheduled and due. A job scheduled in the future is no member until it is due, so it blocks nothing; a keyed
-- job that falls due is not claimed directly but promoted into its lane by maintenance (available when nothing of
-- its lane is active, else parked), so a claim never has to probe a lane.
alter table job drop constraint job_state_check;
alter table job add constraint job_state_check check (
    state in ('scheduled', 'available', 'running', 'completed', 'retryable', 'discarded', 'cancelled', 'parked')
) not valid;
alter table job validate constraint job_state_check;

-- The lane in id order, parked jobs included: enqueue asks whether a lane has members, a finish finds the next
-- parked job, an executor walks the run behind its job. Its last column is `id + 0`, and lane-ordered queries
-- order by that expression: by `id` itself, the primary key offers the same order once account and key are fixed,
-- and a plan that walks it (filtering on the key) reads every row below the lane, finished history included,
-- whenever statistics call the key common.
create index job_lane_idx on job (account_id, concurrency_key, (id + 0))
    where concurrency_key is not null and state in ('available', 'scheduled', 'retryable', 'running', 'parked');
drop index job_account_id_concurrency_key_id_idx;

-- A lane's few unparked members (its head, and scheduled jobs): what a finish, a promotion and a release ask
-- about ("is anything else of this lane active?", "is a job of it due?") without walking the jobs parked behind.
create index job_lane_head_idx on job (account_id, concurrency_key, run_at)
    where concurrency_key is not null and state in ('available', 'retryable', 'running', 'scheduled');

-- Lanes to look at again. A finish that could not release (nothing parked was visible to its statement, or the
-- next job was locked) marks its lane: an enqueuer of that key may be committing a parked job the statement could
-- not see. `job_lane_release` settles marks once no enqueuer holds the key.
create table job_lane_mark (
    account_id text not null,
    concurrency_key text not null,
    marked_at timestamptz not null default clock_timestamp(),
    constraint job_lane_mark_pkey primary key (account_id, concurrency_key)
);

alter table job_lane_mark enable row level security;
create policy job_lane_mark_account_isolation on job_lane_mark to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));

-- Settles up to `p_limit` marks and returns the queues of the jobs it released. Safe to run anywhere, any number
-- of times at once: it never waits. A mark being written is skipped (its writer commits first); a lane whose key
-- an enqueuer holds (the advisory lock enqueue takes) is left marked, and looked at again after that commit.
-- Statements of a volatile PL/pgSQL function each take a fresh snapshot, so the lane is read after the key lock
-- is held: every enqueue of the key that committed before is visible.
create function job_lane_release(p_limit integer)
returns table (released_queue text)
language plpgsql
volatile
as $$
declare
    v_account text[];
    v_key text[];
begin
    select array_agg(m.account_id), array_agg(m.concurrency_key)
    into v_account, v_key
    from (
        select l.account_id, l.concurrency_key
        from job_lane_mark l
        order by l.marked_at
        limit p_limit
        for update skip locked
    ) m
    where pg_try_advisory_xact_lock(hashtextextended(m.account_id || ':' || m.concurrency_key, 0));
    if v_account is null then
        return;
    end if;
    return query
    with lane as (
        select t.account_id, t.concurrency_key
        from unnest(v_account, v_key) as t(account_id, concurrency_key)
    ),
    lane_state as (
        select l.account_id, l.concurrency_key,
               exists (
                   select 1 from job e
                   where e.account_id = l.account_id
                     and e.concurrency_key = l.concurrency_key
                     and e.state in ('available', 'retryable', 'running')
               ) as active,
               -- a due job waiting for its promotion goes first: the mark stays until it is promoted
               exists (
                   select 1 from job e
                   where e.account_id = l.account_id
                     and e.concurrency_key = l.concurrency_key
                     and e.state = 'scheduled'
                     and e.run_at <= now()
               ) as due,
               (select p.id from job p
                where p.account_id = l.account_id
                  and p.concurrency_key = l.concurrency_key
                  and p.state = 'parked'
                -- the lane index's order (see job_lane_idx)
                order by p.account_id, p.concurrency_key, (p.id + 0)
                limit 1) as next_id
        from lane l
    ),
    released as (
        update job
        set state = 'available', run_at = least(job.run_at, now())
        from (
            select j.id
            from job j
            join lane_state s on j.id = s.next_id and not s.active and not s.due
            where j.state = 'parked'
            for update of j skip locked
        ) r
        where job.id = r.id
        returning job.id, job.queue
    ),
    cleared as (
        delete from job_lane_mark m
        using lane_state s
        where m.account_id = s.account_id
          and m.concurrency_key = s.concurrency_key
          and (s.active
               or (s.next_id is null and not s.due)
               -- a hashed `in`: a join between the CTEs per lane may run as a quadratic nested loop
               or s.next_id in (select r.id from released r))
    )
    select r.queue from released r;
end
$$;

-- Promotes up to `p_limit` due scheduled jobs of concurrency keys into their lanes and returns their queues: the
-- head (available) when nothing of the lane is active, else parked behind it (released in id order, so it still
-- runs before the jobs enqueued after it). Like enqueue it holds the key's advisory lock, taken without waiting: a
-- key another transaction holds is promoted on a later round.
create function job_lane_promote(p_limit integer)
returns table (promoted_queue text)
language plpgsql
volatile
as $$
declare
    v_ids bigint[];
begin
    select array_agg(d.id)
    into v_ids
    from (
        select j.id, j.account_id, j.concurrency_key
        from job j
        where j.state = 'scheduled'
          and j.run_at <= now()
          and j.concurrency_key is not null
        order by j.run_at
        limit p_limit
        for update skip locked
    ) d
    where pg_try_advisory_xact_lock(hashtextextended(d.account_id || ':' || d.concurrency_key, 0));
    if v_ids is null then
        return;
    end if;
    return query
    with due as (
        select j.id,
               -- of several due jobs of one key, only the first may become its head
               row_number() over (partition by j.account_id, j.concurrency_key order by j.id) as nth
        from job j
        where j.id = any(v_ids)
    )
    update job
    set state = case when due.nth > 1 or exists (
                         select 1 from job e
                         where e.account_id = job.account_id
                           and e.concurrency_key = job.concurrency_key
                           and e.state in ('available', 'retryable', 'running')
                     ) then 'parked' else 'available' end
    from due
    where job.id = due.id
    returning job.queue;
end
$$;

-- Jobs of today's schema that wait behind an earlier member of their lane are parked; each lane's first member
-- stays claimable (a due scheduled one is promoted), so draining with the new binary keeps every key's order.
update job j
set state = 'parked'
where j.state = 'available'
  and j.concurrency_key is not null
  and exists (
      select 1 from job e
      where e.account_id = j.account_id
        and e.concurrency_key = j.concurrency_key
        and e.id < j.id
        and (e.state in ('available', 'retryable', 'running') or (e.state = 'scheduled' and e.run_at <= now()))
  );
