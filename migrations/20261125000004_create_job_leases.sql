-- Batch writes to running jobs (complete, fail, snooze, cancel, hand back, heartbeat) join a list of
-- (id, attempt) pairs against `job`. Given `unnest` of 1 000 pairs and statistics that say almost no job is
-- running, the planner may scan `job` and test every pair against every row: quadratic, seconds per batch.
-- This function hides the list's size (ROWS 1), so the only plan worth having is one primary-key probe per
-- pair, whatever the statistics say. `ord` indexes the caller's other per-job arrays.
create function job_leases(ids bigint[], attempts integer[])
returns table (ord integer, id bigint, attempt integer)
language plpgsql
immutable
parallel safe
rows 1
as $$
begin
    return query
    select t.ord::integer, t.id, t.attempt
    from unnest(ids, attempts) with ordinality as t(id, attempt, ord);
end
$$;
