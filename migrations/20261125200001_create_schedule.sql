-- Cron schedules. Each tick enqueues the schedule's target as a job keyed `schedule:<name>:<tick>`, so the job
-- table's unique idempotency index makes every tick fire exactly once; this table only remembers the next tick.
create table schedule (
    account_id text not null,
    name text not null,
    cron text not null,
    timezone text not null default 'UTC',
    -- What a tick fires, tagged by kind so events can join jobs later: {"job": {kind, args, queue, ...}}.
    target jsonb not null,
    paused boolean not null default false,
    -- Null while paused (or when the expression never matches again); resuming computes it from the present.
    next_fire_at timestamptz,
    last_fired_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint schedule_pkey primary key (account_id, name),
    constraint schedule_account_fkey foreign key (account_id) references account (id),
    constraint schedule_name_check check (name ~ '^[A-Za-z0-9._-]{1,128}$'),
    constraint schedule_cron_check check (length(cron) between 1 and 255),
    constraint schedule_timezone_check check (length(timezone) between 1 and 64),
    constraint schedule_target_check check (jsonb_typeof(target) = 'object' and target ? 'job'),
    constraint schedule_paused_check check (not paused or next_fire_at is null)
);

-- The scheduler's poll: the earliest due ticks across accounts.
create index schedule_next_fire_at_idx on schedule (next_fire_at) where not paused and next_fire_at is not null;

-- Tenant isolation, as for every tenant-owned table (see the row-level security migration).
alter table schedule enable row level security;
create policy schedule_account_isolation on schedule to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));
