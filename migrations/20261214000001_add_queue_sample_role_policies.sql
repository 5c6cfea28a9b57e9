-- queue_sample (the dashboard's per-minute samples) came beside the least-privilege roles: like every table with
-- row-level security, it admits the admin role (the admin's views) and the worker role (maintenance writes and
-- prunes the samples) to every row.
set local lock_timeout = '5s';
create policy queue_sample_admin on queue_sample to ordo_admin using (true) with check (true);
create policy queue_sample_worker on queue_sample to ordo_worker using (true) with check (true);
