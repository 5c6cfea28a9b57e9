-- job_lane_release and job_lane_promote join `job` by id to the rows they already hold as `= any(array[id])`, as
-- every statement of the queue now does (see queue::types::by_id): an `=` between them is an equijoin, and on
-- statistics taken while the queue was briefly empty the planner chose to walk job_pkey in order for a merge
-- join. Under a snapshot held open that walk reads every row version written since; it cannot be planned any more.
-- Same signatures, same results: the previous release calls them unchanged.
set local lock_timeout = '5s';

create or replace function job_lane_release(p_limit integer)
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
    where pg_try_advisory_xact_lock(job_key_lock_class(), job_key_lock_bucket(m.account_id, m.concurrency_key));
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
            join lane_state s on j.id = any(array[s.next_id]) and not s.active and not s.due
            where j.state = 'parked'
            for update of j skip locked
        ) r
        where job.id = any(array[r.id])
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

create or replace function job_lane_promote(p_limit integer)
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
    where pg_try_advisory_xact_lock(job_key_lock_class(), job_key_lock_bucket(d.account_id, d.concurrency_key));
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
    where job.id = any(array[due.id])
    returning job.queue;
end
$$;
