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
