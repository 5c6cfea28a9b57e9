-- Per-minute samples of each account's queues, for the dashboard's history: depth and start delay are states, not
-- events, so no counter holds them (`job_stat` counts what happened). Maintenance writes one row per account,
-- queue and minute from the waiting and running jobs (the partial indexes `queue_stats` reads too), and prunes them
-- with `job_stat`. A second maintenance holder in the same minute writes nothing (`on conflict do nothing`).
set local lock_timeout = '5s';
create table queue_sample (
    account_id text not null,
    queue text not null,
    minute timestamptz not null,
    -- runnable now (due scheduled and retryable jobs included)
    available bigint not null,
    running bigint not null,
    -- waiting for a future run_at
    scheduled bigint not null,
    -- how long the oldest runnable job had waited at the sample: the start delay a new job would see at least
    oldest_wait_ms bigint not null,
    constraint queue_sample_pkey primary key (account_id, minute, queue)
);

-- Pruning by age.
create index queue_sample_minute_idx on queue_sample (minute);

alter table queue_sample enable row level security;
create policy queue_sample_account_isolation on queue_sample to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));
