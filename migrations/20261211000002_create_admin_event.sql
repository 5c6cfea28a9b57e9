-- The admin audit trail (`GET /api/admin-events`): one row per admin change (accounts, keys, limits, pools,
-- scaling, rollouts), written in the transaction of the change. `actor` names the kind of credential that made it
-- (`admin` for ORDO_ADMIN_TOKEN, `cli`, `sandbox`, `controller`), never the credential itself. Append-only: no
-- ordo role updates or deletes a row.
set local lock_timeout = '5s';
create table admin_event (
    id bigint generated always as identity,
    at timestamptz not null default now(),
    action text not null,
    target text not null,
    actor text not null,
    constraint admin_event_pkey primary key (id)
);

-- Account transactions never see it (the default privileges of the first row-level security migration granted
-- it to them); admin work and workers (the rollout controller) append and read.
revoke all on admin_event from ordo_api;
revoke update, delete on admin_event from ordo_admin, ordo_worker;
