//! The backend's configuration.

use std::time::Duration;

use ordo::queue::RetryPolicy;
use ordo::tenancy::AccountId;

/// How an [`OrdoBackend`](crate::OrdoBackend) fetches, holds, settles and pushes jobs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The ordo job kind of this worker's tasks: it claims jobs of this kind, and pushes enqueue jobs of it.
    pub kind: String,
    /// The account pushed tasks belong to. Fetching, like `ordo worker`, serves every account's jobs of the queue
    /// and kind (the claim shares the queue between accounts).
    pub account: AccountId,
    /// The queue claimed from, and that pushes use when the task names none.
    pub queue: String,
    /// The worker's pool: jobs routed to another pool's versions are not its own.
    pub pool: String,
    /// The worker's version: it takes jobs routed to it and unrouted ones, and stops claiming once retired.
    pub version: String,
    /// Most jobs held at once, running or fetched and waiting to start. apalis runs every task it is given at
    /// once unless a concurrency layer limits it, so this also bounds the tasks in flight. The default (1 000)
    /// keeps claims large for short tasks (see BENCHMARKS.md: 256 held drains no-op tasks at half the rate).
    pub held: usize,
    /// Most jobs one claim statement takes.
    pub max_claim: usize,
    /// Lease of a claimed job; heartbeats extend it every third of it. A worker that dies holds its jobs this long.
    pub lease: Duration,
    /// Longest wait between claims while idle (no wake-up arrived).
    pub poll: Duration,
    /// Backoff of failed attempts that name no delay.
    pub retry: RetryPolicy,
    /// Attempts of a pushed task that sets none (ordo's default).
    pub max_attempts: i32,
    /// Take part in ordo's queue maintenance (rescue of expired leases, promotion of due jobs, retention), under
    /// its leader lease, as `ordo worker` does.
    pub maintenance: bool,
    /// Redis for wake-ups (`redis://` or `rediss://`): an enqueue elsewhere starts the job at once instead of at
    /// the next poll. `None`: poll only.
    pub redis_url: Option<String>,
}

impl Config {
    /// Defaults for jobs of `kind` on queue `default`, account `default`, pool `default`, version `v1`.
    pub fn new(kind: impl Into<String>) -> Self {
        Config {
            kind: kind.into(),
            account: AccountId::default_account(),
            queue: "default".to_owned(),
            pool: "default".to_owned(),
            version: "v1".to_owned(),
            held: 1000,
            max_claim: 1000,
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            retry: RetryPolicy::default(),
            max_attempts: 20,
            maintenance: true,
            redis_url: None,
        }
    }

    /// Sets the account of pushed tasks.
    pub fn account(mut self, account: AccountId) -> Self {
        self.account = account;
        self
    }

    /// Sets the queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Sets the pool and version.
    pub fn pool(mut self, pool: impl Into<String>, version: impl Into<String>) -> Self {
        self.pool = pool.into();
        self.version = version.into();
        self
    }

    /// Sets the most jobs held at once.
    pub fn held(mut self, held: usize) -> Self {
        self.held = held.max(1);
        self
    }

    /// Sets the lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets the idle poll interval.
    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Sets the retry backoff.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the Redis URL for wake-ups.
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }
}
