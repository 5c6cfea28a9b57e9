-- Fair share and limits (CONTRACT §12). Weights and limits are the administrator's, per account; a claim reads
-- them for the accounts it serves. The tables hold no tenant data, but the API's role reads them under the same
-- isolation as everything else.

-- An account's share of each queue it has waiting work in, against the other accounts there (default 1).
create table account_share (
    account_id text not null,
    weight integer not null default 1,
    constraint account_share_pkey primary key (account_id),
    constraint account_share_weight_check check (weight between 1 and 10000)
);

-- At most `max_running` of the account's jobs of `queue` leased at once, across every worker.
create table account_queue_limit (
    account_id text not null,
    queue text not null,
    max_running integer not null,
    constraint account_queue_limit_pkey primary key (account_id, queue),
    constraint account_queue_limit_max_running_check check (max_running >= 1)
);

-- At most `max_running` of the account's jobs of `kind` leased at once, and at most `max_per_second` started in
-- any one second, in every queue.
create table account_kind_limit (
    account_id text not null,
    kind text not null,
    max_running integer,
    max_per_second integer,
    constraint account_kind_limit_pkey primary key (account_id, kind),
    constraint account_kind_limit_max_running_check check (max_running is null or max_running >= 1),
    constraint account_kind_limit_max_per_second_check check (max_per_second is null or max_per_second >= 1),
    constraint account_kind_limit_some_check check (max_running is not null or max_per_second is not null)
);

-- The starts of rate-limited kinds, one row per claim, kept for about two seconds: a claim counts the starts of
-- the last second before it takes more. Claims of a limited account lock its `account_share` row first (a row
-- exists for every limited account), so two claims never count the same window at once.
create table account_kind_start (
    account_id text not null,
    kind text not null,
    at timestamptz not null,
    n integer not null
);
create index account_kind_start_account_id_kind_at_idx on account_kind_start (account_id, kind, at);

alter table account_share enable row level security;
create policy account_share_account_isolation on account_share to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));

alter table account_queue_limit enable row level security;
create policy account_queue_limit_account_isolation on account_queue_limit to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));

alter table account_kind_limit enable row level security;
create policy account_kind_limit_account_isolation on account_kind_limit to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));

alter table account_kind_start enable row level security;
create policy account_kind_start_account_isolation on account_kind_start to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));

-- The jobs a claim takes of one account: up to `p_limit` waiting jobs of `p_queue`, due, of `p_kinds`, routed to
-- `p_version` or to none, not in `p_skip`, in claim order, locked (those another claim holds are skipped). A
-- keyed job that is not its lane's head is parked and never seen here; a keyed scheduled job joins its lane when
-- maintenance promotes it, so it is not taken directly.
--
-- Its plan must be the ordered walk of job_claim_idx, whatever the statistics say: when one account held nearly
-- every row at the last ANALYZE, the planner takes any account for that one, and (not knowing the limit) reads the
-- whole account and sorts it, for every claim. So the function pins the walk: no sequential or bitmap scan, no
-- sort, and an order (`id + 0`) only job_claim_idx has. Its settings hold only while it runs.
create function job_claim_pick(
    p_queue text, p_account text, p_kinds text[], p_version text, p_limit bigint, p_skip bigint[]
)
returns setof bigint
language sql
volatile
set enable_seqscan = off
set enable_bitmapscan = off
set enable_sort = off
as $$
    select j.id
    from job j
    where j.queue = p_queue
      and j.account_id = p_account
      and j.state in ('available', 'scheduled', 'retryable')
      and j.run_at <= now()
      and j.kind = any(p_kinds)
      and (j.version is null or j.version = p_version)
      and (j.concurrency_key is null or j.state <> 'scheduled')
      and j.id <> all(p_skip)
    order by j.priority, j.run_at, j.id + 0
    limit greatest(p_limit, 0)
    for update skip locked
$$;
