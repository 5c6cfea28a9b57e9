-- Batch enqueue during a rollout called `route_version` once per row (a query per call: a third of the batch
-- enqueue rate). The choice itself is now `route_pick`, a plain expression Postgres inlines, so a batch looks the
-- rollout up once per queue and picks per row; `route_version` keeps the single-row form on top of it.
create function route_pick(p_state text, p_from text, p_to text, p_percent smallint, p_key text)
returns text
language sql
immutable
parallel safe
as $$
    select case
               when p_state = 'promoted' then p_to
               when abs(hashtextextended(p_key, 0)) % 100 < p_percent then p_to
               else p_from
           end
$$;

create or replace function route_version(p_queue text, p_key text)
returns text
language sql
stable
parallel safe
as $$
    select route_pick(r.state, r.from_version, r.to_version, r.canary_percent, p_key)
    from rollout r
    where r.state in ('canary', 'promoted')
      -- written out rather than `r.pool = pool_of_queue(p_queue)`, so without an active rollout this is one probe
      -- of an empty index and the pool is never looked up
      and case when r.pool = 'default'
               then not exists (select 1 from worker_pool p where p.name <> 'default' and p_queue = any(p.queues))
               else exists (select 1 from worker_pool p where p.name = r.pool and p_queue = any(p.queues))
          end
$$;
