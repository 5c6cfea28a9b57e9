-- The hot table holds only live work. A statement that finishes jobs (complete, discard, cancel) deletes them from
-- `job` and appends them to `job_history` in the same statement, so claims, completions and vacuum of `job` never
-- touch history, and retention drops whole partitions instead of deleting rows.
--
-- Partitioned twice: by whether the job has an idempotency key (keyed jobs are kept longer: a replay within that
-- window must still find the job), then by the UTC day the job finished. Maintenance attaches the coming days'
-- partitions and drops those past retention (`job_history_add_day`); rows whose day has no partition land in the
-- class's default partition, which maintenance prunes row by row.
create table job_history (
    id bigint not null,
    account_id text not null,
    queue text not null,
    kind text not null,
    args jsonb not null,
    state text not null,
    priority smallint not null,
    attempt integer not null,
    max_attempts integer not null,
    run_at timestamptz not null,
    created_at timestamptz not null,
    started_at timestamptz,
    finished_at timestamptz not null,
    lease_owner text,
    leased_until timestamptz,
    timeout_ms integer,
    result jsonb,
    errors jsonb not null,
    idempotency_key text,
    fingerprint bytea,
    concurrency_key text,
    pool text,
    version text,
    traceparent text,
    constraint job_history_state_check check (state in ('completed', 'discarded', 'cancelled'))
) partition by list ((idempotency_key is not null));

create table job_history_keyed partition of job_history for values in (true) partition by range (finished_at);
create table job_history_unkeyed partition of job_history for values in (false) partition by range (finished_at);
create table job_history_keyed_default partition of job_history_keyed default;
create table job_history_unkeyed_default partition of job_history_unkeyed default;

-- Reads by id and listings (newest first) always name the account. Appends go to the right-hand edge of each
-- account's range, so this one index is cheap to keep.
create index job_history_account_id_id_idx on job_history (account_id, id);
-- A rollout counts the outcomes of jobs above an id, over every account: a block-range index, nearly free to
-- keep on an append-only table whose ids grow with time.
create index job_history_id_brin on job_history using brin (id);

alter table job_history enable row level security;
create policy job_history_account_isolation on job_history to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));
-- The API reaches history through `job_history` only, whose policy applies; partitions have no policy of their own.
revoke all on job_history_keyed, job_history_unkeyed, job_history_keyed_default, job_history_unkeyed_default
    from ordo_api;

-- Attaches the partition of `p_class` ('keyed' or 'unkeyed') for the UTC day `p_day`, unless it exists or the
-- class's default partition already holds rows of that day (they stay there until pruned). Returns whether it
-- attached one. Callers set a short lock_timeout: attaching locks the default partition.
create function job_history_add_day(p_class text, p_day date) returns boolean
language plpgsql as $$
declare
    parent text := 'job_history_' || p_class;
    part text := parent || '_' || to_char(p_day, 'YYYYMMDD');
    lo timestamptz := (p_day::timestamp at time zone 'UTC');
    hi timestamptz := ((p_day + 1)::timestamp at time zone 'UTC');
    taken boolean;
begin
    if p_class not in ('keyed', 'unkeyed') then
        raise exception 'unknown history class %', p_class;
    end if;
    if to_regclass(part) is not null then
        return false;
    end if;
    execute format('select exists (select 1 from %I where finished_at >= $1 and finished_at < $2)',
                   parent || '_default')
        into taken using lo, hi;
    if taken then
        return false;
    end if;
    execute format('create table %I (like %I including defaults including constraints)', part, parent);
    -- Attaching (not `create … partition of`) locks the parent in share update exclusive mode only, so
    -- completions appending to other days never wait for it.
    execute format('alter table %I attach partition %I for values from (%L) to (%L)', parent, part, lo, hi);
    if exists (select 1 from pg_roles where rolname = 'ordo_api') then
        execute format('revoke all on %I from ordo_api', part);
    end if;
    return true;
end;
$$;

-- Today's and tomorrow's partitions (UTC), so the first completions after the upgrade do not land in the defaults.
select job_history_add_day(c, (now() at time zone 'UTC')::date + d)
from unnest(array['keyed', 'unkeyed']) as c, generate_series(0, 1) as d;

-- Pruning a default partition finds its rows past retention by this index (the day partitions are dropped whole).
create index job_history_keyed_default_finished_at_idx on job_history_keyed_default (finished_at);
create index job_history_unkeyed_default_finished_at_idx on job_history_unkeyed_default (finished_at);

-- Idempotency keys span both tables: a replay must find a job however long ago it finished (within the keyed
-- retention). One row per key, written by the statement that enqueues the job (`on conflict do nothing` waits
-- for a concurrent enqueuer of the same key), removed when the job's history partition is dropped.
create table job_key (
    account_id text not null,
    idempotency_key text not null,
    job_id bigint not null,
    fingerprint bytea,
    constraint job_key_pkey primary key (account_id, idempotency_key)
);

alter table job_key enable row level security;
create policy job_key_account_isolation on job_key to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));

insert into job_key (account_id, idempotency_key, job_id, fingerprint)
select account_id, idempotency_key, id, fingerprint
from job
where idempotency_key is not null;

-- Finished jobs move now. Older binaries finish jobs in place and would leave them behind: stop them before
-- migrating (README, "Upgrading").
with moved as (
    delete from job
    where state in ('completed', 'discarded', 'cancelled')
    returning *
)
insert into job_history (id, account_id, queue, kind, args, state, priority, attempt, max_attempts, run_at,
                         created_at, started_at, finished_at, lease_owner, leased_until, timeout_ms, result, errors,
                         idempotency_key, fingerprint, concurrency_key, pool, version, traceparent)
select id, account_id, queue, kind, args, state, priority, attempt, max_attempts, run_at,
       created_at, started_at, coalesce(finished_at, now()), lease_owner, null, timeout_ms, result, errors,
       idempotency_key, fingerprint, concurrency_key, pool, version, traceparent
from moved;

-- Every job, waiting, running or finished, for operators' ad-hoc queries (ordo's own reads name both tables).
-- security_invoker: the reader's row-level security applies, as on the tables themselves.
create view job_all with (security_invoker = true) as
select id, account_id, queue, kind, args, state, priority, attempt, max_attempts, run_at, created_at, started_at,
       finished_at, lease_owner, leased_until, timeout_ms, result, errors, idempotency_key, fingerprint,
       concurrency_key, pool, version, traceparent
from job
union all
select id, account_id, queue, kind, args, state, priority, attempt, max_attempts, run_at, created_at, started_at,
       finished_at, lease_owner, leased_until, timeout_ms, result, errors, idempotency_key, fingerprint,
       concurrency_key, pool, version, traceparent
from job_history;
