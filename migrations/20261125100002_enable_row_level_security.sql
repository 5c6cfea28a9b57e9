-- Tenant isolation enforced by the database. API transactions switch to the role `ordo_api` (no BYPASSRLS) and
-- set `ordo.account_id`; the policies below then hide every row of other accounts, even from a query that forgets
-- its account filter. The table owner (the role that runs migrations and workers) bypasses RLS on purpose: the
-- worker side claims jobs across accounts. `enable`, not `force`, for exactly that reason.

-- Roles are cluster-wide, so another database on the server (or a parallel migration) may have created it.
do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'ordo_api') then
        create role ordo_api nologin;
    end if;
exception
    when duplicate_object or unique_violation then null;
end
$$;

-- The connecting role must be a member to `set local role ordo_api` (a superuser already is).
do $$
begin
    if not pg_has_role(current_user, 'ordo_api', 'member') then
        execute format('grant ordo_api to %I', current_user);
    end if;
end
$$;

grant usage on schema public to ordo_api;
grant select, insert, update, delete on job, queue_pause, account, api_key to ordo_api;
-- Queue statistics count what live workers can claim; `worker` holds no tenant data.
grant select on worker to ordo_api;
grant usage, select on all sequences in schema public to ordo_api;
-- Tables of later migrations (created by the same owner) are granted too; each still needs its own policy.
alter default privileges in schema public grant select, insert, update, delete on tables to ordo_api;
alter default privileges in schema public grant usage, select on sequences to ordo_api;

alter table job enable row level security;
create policy job_account_isolation on job to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));

alter table queue_pause enable row level security;
create policy queue_pause_account_isolation on queue_pause to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));

alter table account enable row level security;
create policy account_isolation on account to ordo_api
    using (id = current_setting('ordo.account_id', true))
    with check (id = current_setting('ordo.account_id', true));

alter table api_key enable row level security;
create policy api_key_account_isolation on api_key to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));
