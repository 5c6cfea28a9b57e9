-- Versioned worker pools, blue-green rollouts and autoscaling targets. Routing happens in the queue itself
-- (pull-based workers ignore load balancers): enqueue stamps a job with the version it must run on while a
-- rollout is active, and leaves it null otherwise, so the no-rollout case costs one probe of an empty index.

-- A pool serves a set of queues. Pool `default` serves `default` and every queue no other pool claims.
create table worker_pool (
    name text not null,
    queues text[] not null default '{}',
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint worker_pool_pkey primary key (name),
    constraint worker_pool_name_check check (length(name) between 1 and 63)
);

insert into worker_pool (name, queues) values ('default', '{default}');

-- One rollout moves a pool from one version to another: canary → promoted → completed, or canary|promoted →
-- aborted. `start_job_id` is the last job id drawn when it began: the canary's failure rate is measured over
-- jobs after it (a primary-key range, no extra index).
create table rollout (
    id bigint generated always as identity,
    pool text not null,
    from_version text not null,
    to_version text not null,
    state text not null default 'canary',
    canary_percent smallint not null default 10,
    auto_promote_after_s integer,
    max_failure_rate double precision,
    start_job_id bigint not null default 0,
    reason text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    promoted_at timestamptz,
    finished_at timestamptz,
    constraint rollout_pkey primary key (id),
    constraint rollout_pool_fkey foreign key (pool) references worker_pool (name),
    constraint rollout_state_check check (state in ('canary', 'promoted', 'completed', 'aborted')),
    constraint rollout_canary_percent_check check (canary_percent between 0 and 100),
    constraint rollout_auto_promote_after_s_check check (auto_promote_after_s is null or auto_promote_after_s > 0),
    constraint rollout_max_failure_rate_check check (max_failure_rate is null or max_failure_rate between 0 and 1),
    constraint rollout_versions_check check (from_version <> to_version)
);

-- At most one active rollout per pool; also the index every enqueue probes (empty outside rollouts).
create unique index rollout_pool_key on rollout (pool) where state in ('canary', 'promoted');

-- The role of each version of a pool, read by workers on every heartbeat (a primary-key probe) and by the claim
-- (a retired version claims nothing).
create table pool_version (
    pool text not null,
    version text not null,
    role text not null,
    updated_at timestamptz not null default now(),
    constraint pool_version_pkey primary key (pool, version),
    constraint pool_version_pool_fkey foreign key (pool) references worker_pool (name),
    constraint pool_version_role_check check (role in ('stable', 'canary', 'draining', 'retired'))
);

-- Autoscaling policy per pool (applied to each of its versions).
create table pool_target (
    pool text not null,
    min integer not null default 0,
    max integer not null default 10,
    target_per_worker integer not null default 100,
    scale_down_delay_s integer not null default 60,
    updated_at timestamptz not null default now(),
    constraint pool_target_pkey primary key (pool),
    constraint pool_target_pool_fkey foreign key (pool) references worker_pool (name),
    constraint pool_target_min_check check (min >= 0),
    constraint pool_target_max_check check (max >= min and max <= 10000),
    constraint pool_target_target_per_worker_check check (target_per_worker >= 1),
    constraint pool_target_scale_down_delay_s_check check (scale_down_delay_s >= 0)
);

-- The pool serving a queue: a pool that lists it, else `default`.
create function pool_of_queue(p_queue text)
returns text
language sql
stable
parallel safe
as $$
    select coalesce(
        (select p.name from worker_pool p where p_queue = any(p.queues) order by p.name = 'default', p.name limit 1),
        'default')
$$;

-- The version a new (or retried) job of `p_queue` is routed to: during a canary by weight, sticky per key (the
-- job's concurrency key, else its id); after promote the new version; outside a rollout null (any version).
create function route_version(p_queue text, p_key text)
returns text
language sql
stable
parallel safe
as $$
    select case
               when r.state = 'promoted' then r.to_version
               when abs(hashtextextended(p_key, 0)) % 100 < r.canary_percent then r.to_version
               else r.from_version
           end
    from rollout r
    where r.state in ('canary', 'promoted')
      -- written out rather than `r.pool = pool_of_queue(p_queue)`, so without an active rollout this is one probe
      -- of an empty index and the pool is never looked up
      and case when r.pool = 'default'
               then not exists (select 1 from worker_pool p where p.name <> 'default' and p_queue = any(p.queues))
               else exists (select 1 from worker_pool p where p.name = r.pool and p_queue = any(p.queues))
          end
$$;

-- Waiting jobs routed to a version: abort moves a canary's back, promote waits for the old one to empty. Jobs
-- carry a version while waiting only during rollouts, so outside them this index stays empty and costs nothing.
create index job_version_idx on job (version)
    where version is not null and state in ('available', 'scheduled', 'retryable');
