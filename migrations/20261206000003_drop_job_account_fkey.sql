-- The foreign key from job to account ran a trigger per inserted job that locked the account row (`for key
-- share`): more than half of a bulk insert's time, measured (100 000 rows: 1.35 s with it, 0.58 s without), and a
-- row every enqueuer of an account contends on. Enqueue checks the account once per statement instead (see
-- queue::enqueue), which keeps the invariant that a job belongs to an existing account.
alter table job drop constraint job_account_fkey;
