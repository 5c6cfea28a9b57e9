-- Least-privilege database roles (README, "Database roles"). The role running `ordo migrate` owns the tables; the
-- other ordo roles can connect as login roles of their own that own nothing and bypass nothing:
--
--   ordo_api       (exists) account transactions: row-level security shows one account, the one in
--                  `ordo.account_id`; no data keys, no writes to cluster tables.
--   ordo_admin     the API's admin work (accounts, keys, limits, pools, rollouts, scaling, the admin audit):
--                  every account's rows through policies that admit it, no DDL.
--   ordo_worker    workers, scheduler, autoscaler and maintenance: every account's rows, no DDL; maintenance's
--                  two DDL steps (attach and drop a history day) go through owner functions granted to it.
--   ordo_api_node  what the API's login role is granted: its own rights are only the narrow path the API needs
--                  before it knows an account (find a key's owner, read and create data keys, the schema version,
--                  live workers); it can `set role` to ordo_api and ordo_admin but inherits neither (NOINHERIT),
--                  so a query that names no role can read no tenant data at all.
--
-- Everything here is conditional and idempotent, and works for a non-superuser owner with CREATEROLE; an owner
-- without it needs the roles created beforehand (the README gives the statements). No role gets BYPASSRLS: the
-- roles that cross accounts do so through policies, which a non-superuser can create.
--
-- Row-level security stays enabled, not forced: forcing it would subject the owner (`ordo migrate`, and workers
-- and the API of the simple set-up that connects as the owner) to the policies, which would then need one that
-- admits the owner to everything, i.e. the same as not forcing. Isolation comes from the API never querying as
-- the owner: account work is `ordo_api`, admin work `ordo_admin`.
set local lock_timeout = '5s';

do $$
declare
    r text;
begin
    foreach r in array array['ordo_admin', 'ordo_worker'] loop
        if not exists (select 1 from pg_roles where rolname = r) then
            execute format('create role %I nologin', r);
        end if;
    end loop;
    if not exists (select 1 from pg_roles where rolname = 'ordo_api_node') then
        create role ordo_api_node nologin noinherit;
    end if;
exception
    -- Roles are cluster-wide: a parallel migration of another database may have created one meanwhile.
    when duplicate_object or unique_violation then null;
end
$$;

-- The owner's own connections (the simple set-up: one login role for everything) switch to these roles too.
do $$
begin
    if not pg_has_role(current_user, 'ordo_admin', 'member') then
        execute format('grant ordo_admin to %I', current_user);
    end if;
    if not pg_has_role('ordo_api_node', 'ordo_api', 'member') then
        grant ordo_api to ordo_api_node;
    end if;
    if not pg_has_role('ordo_api_node', 'ordo_admin', 'member') then
        grant ordo_admin to ordo_api_node;
    end if;
end
$$;

grant usage on schema public to ordo_admin, ordo_worker, ordo_api_node;

-- Admin work and workers: rows of every table, sequences; tables of later migrations too.
grant select, insert, update, delete on all tables in schema public to ordo_admin, ordo_worker;
grant usage, select on all sequences in schema public to ordo_admin, ordo_worker;
alter default privileges in schema public grant select, insert, update, delete on tables to ordo_admin, ordo_worker;
alter default privileges in schema public grant usage, select on sequences to ordo_admin, ordo_worker;
-- The migrations' ledger is the owner's: the others only read the schema version.
do $$
begin
    if to_regclass('_sqlx_migrations') is not null then
        revoke insert, update, delete on _sqlx_migrations from ordo_admin, ordo_worker;
        grant select on _sqlx_migrations to ordo_api, ordo_api_node;
    end if;
end
$$;

-- Account transactions read the cluster tables enqueue routing needs but change none of them, nor accounts and
-- keys (admin work).
revoke insert, update, delete on worker_pool, pool_version, pool_target, rollout, account, api_key from ordo_api;

-- The API's narrow path: a key's owner (hash → account, region), data keys (read, and created on first use for
-- an existing account), live workers (the unknown-kind hint). Its policies admit the role to every row of these
-- two tables, for reading only; account transactions (role ordo_api) do not inherit them.
grant select on api_key, account, worker to ordo_api_node;
grant select, insert on account_key to ordo_api_node;
do $$
begin
    if not exists (select 1 from pg_policies
                   where schemaname = 'public' and tablename = 'api_key' and policyname = 'api_key_key_lookup') then
        create policy api_key_key_lookup on api_key for select to ordo_api_node using (true);
    end if;
    if not exists (select 1 from pg_policies
                   where schemaname = 'public' and tablename = 'account' and policyname = 'account_key_lookup') then
        create policy account_key_lookup on account for select to ordo_api_node using (true);
    end if;
end
$$;

-- Every table under row-level security admits ordo_admin and ordo_worker to every row. A later migration that
-- enables row-level security on a new table adds the same two policies (a test checks that none is missing).
do $$
declare
    t text;
begin
    for t in
        select c.relname
        from pg_class c
        where c.relnamespace = 'public'::regnamespace
          and c.relrowsecurity
    loop
        if not exists (select 1 from pg_policies
                       where schemaname = 'public' and tablename = t and policyname = t || '_admin') then
            execute format('create policy %I on %I to ordo_admin using (true) with check (true)', t || '_admin', t);
        end if;
        if not exists (select 1 from pg_policies
                       where schemaname = 'public' and tablename = t and policyname = t || '_worker') then
            execute format('create policy %I on %I to ordo_worker using (true) with check (true)', t || '_worker', t);
        end if;
    end loop;
end
$$;

-- Maintenance's DDL runs as the owner, through two functions only ordo_worker (and the owner) may call: attach a
-- history day, drop one past retention. Older binaries, which connect as the owner, are unaffected.
alter function job_history_add_day(text, date) security definer set search_path = public, pg_temp;
revoke execute on function job_history_add_day(text, date) from public;
grant execute on function job_history_add_day(text, date) to ordo_worker;

-- Drops a day partition of history (`job_history_<class>_<YYYYMMDD>`), nothing else; a missing one is no error.
create or replace function job_history_drop_day(p_partition text) returns void
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    if not exists (
        select 1
        from pg_inherits i
        join pg_class c on c.oid = i.inhrelid
        join pg_class p on p.oid = i.inhparent
        where c.relname = p_partition
          and p.relname in ('job_history_keyed', 'job_history_unkeyed')
          and c.relname ~ '^job_history_(keyed|unkeyed)_[0-9]{8}$'
    ) then
        return;
    end if;
    execute format('drop table %I', p_partition);
end;
$$;
revoke execute on function job_history_drop_day(text) from public;
grant execute on function job_history_drop_day(text) to ordo_worker;
