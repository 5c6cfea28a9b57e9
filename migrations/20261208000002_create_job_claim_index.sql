-- no-transaction
-- The fair claim walks each account's waiting jobs of a queue in claim order, and finds the accounts with waiting
-- work by skipping from one account to the next. Built concurrently: enqueues and claims go on meanwhile. The
-- previous release's index (queue, priority, run_at, id) stays until a later release drops it: that release's
-- workers claim by it during a rollout. The last column is `id + 0` and the fair claim orders by it, so only this
-- index gives its order (see job_claim_pick).
create index concurrently if not exists job_claim_idx on job (queue, account_id, priority, run_at, (id + 0))
    where state in ('available', 'scheduled', 'retryable');
