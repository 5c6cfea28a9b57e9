-- Counters instead of scans. Every statement that enqueues, fails or finishes jobs appends one row per (account,
-- queue) it touched to `job_stat_delta` (no index, no conflict: appends never wait on each other), and maintenance
-- folds the deltas into `job_stat`, one row per account, queue and minute. Finished counts (`GET /api/queues`)
-- and per-minute throughput are sums over both, exact at the moment they are read, and never read job history.
create table job_stat (
    account_id text not null,
    queue text not null,
    minute timestamptz not null,
    enqueued bigint not null default 0,
    completed bigint not null default 0,
    discarded bigint not null default 0,
    cancelled bigint not null default 0,
    -- failed attempts (retried or not)
    failed bigint not null default 0,
    constraint job_stat_pkey primary key (account_id, queue, minute)
);

create table job_stat_delta (
    account_id text not null,
    queue text not null,
    minute timestamptz not null,
    enqueued bigint not null default 0,
    completed bigint not null default 0,
    discarded bigint not null default 0,
    cancelled bigint not null default 0,
    failed bigint not null default 0
);

alter table job_stat enable row level security;
create policy job_stat_account_isolation on job_stat to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));

alter table job_stat_delta enable row level security;
create policy job_stat_delta_account_isolation on job_stat_delta to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));

-- The counts of the jobs already there: finished ones in the minute they finished, enqueued ones when created.
insert into job_stat (account_id, queue, minute, enqueued, completed, discarded, cancelled)
select account_id, queue, minute, sum(enqueued), sum(completed), sum(discarded), sum(cancelled)
from (
    select account_id, queue, date_trunc('minute', created_at) as minute, 1 as enqueued,
           0 as completed, 0 as discarded, 0 as cancelled
    from job
    union all
    select account_id, queue, date_trunc('minute', finished_at), 0,
           (state = 'completed')::int, (state = 'discarded')::int, (state = 'cancelled')::int
    from job
    where state in ('completed', 'discarded', 'cancelled') and finished_at is not null
) c
group by account_id, queue, minute;
