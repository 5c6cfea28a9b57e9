-- job_claim_pick (see create_account_limits) that walks only given ranges of the claim index: for each i, the
-- jobs of priorities p_lo[i]..p_hi[i] due from p_from[i] on, in that order, until p_limit jobs are taken. A
-- claimer passes the positions it has already claimed past, so that a claim starts where waiting work starts
-- instead of walking every index entry a snapshot held open still keeps (each costs a heap fetch to find it dead).
-- The previous release's workers keep calling job_claim_pick, which stays, now as job_claim_walk over everything.
--
-- The same pinned plan as job_claim_pick: the ordered walk of job_claim_idx, whose start key is (priority, run_at).
set local lock_timeout = '5s';

create function job_claim_walk(
    p_queue text, p_account text, p_kinds text[], p_version text, p_limit bigint, p_skip bigint[],
    p_lo smallint[], p_hi smallint[], p_from timestamptz[]
)
returns setof bigint
language plpgsql
volatile
set enable_seqscan = off
set enable_bitmapscan = off
set enable_sort = off
as $$
declare
    v_left bigint := greatest(p_limit, 0);
    v_got bigint;
begin
    for v_i in 1 .. coalesce(cardinality(p_lo), 0) loop
        exit when v_left <= 0;
        return query
            select j.id
            from job j
            where j.queue = p_queue
              and j.account_id = p_account
              and j.state in ('available', 'scheduled', 'retryable')
              and j.priority between p_lo[v_i] and p_hi[v_i]
              and j.run_at >= p_from[v_i]
              and j.run_at <= now()
              and j.kind = any(p_kinds)
              and (j.version is null or j.version = p_version)
              and (j.concurrency_key is null or j.state <> 'scheduled')
              and j.id <> all(p_skip)
            order by j.priority, j.run_at, j.id + 0
            limit v_left
            for update skip locked;
        get diagnostics v_got = row_count;
        v_left := v_left - v_got;
    end loop;
end
$$;

-- One definition of what a claim may take: job_claim_pick (the previous release's walk, and the blind claim's) is
-- job_claim_walk over every priority from the start. Same arguments, same rows, same order.
create or replace function job_claim_pick(
    p_queue text, p_account text, p_kinds text[], p_version text, p_limit bigint, p_skip bigint[]
)
returns setof bigint
language sql
volatile
as $$
    select job_claim_walk(p_queue, p_account, p_kinds, p_version, p_limit, p_skip, '{-32768}', '{32767}', '{-infinity}')
$$;
