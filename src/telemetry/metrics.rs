//! Every metric name of ordo, its description, and the Prometheus recorder behind `/metrics`.
//!
//! Labels come only from bounded sets (route templates, methods, status codes, declared queue names); never ids.
//! Queue names are tenant input, so a queue is a label value only when an operator declared it (a worker pool's
//! queues, and the queue `default`); every other queue is counted under [`OTHER_QUEUE`].

use std::collections::BTreeSet;
use std::sync::{OnceLock, RwLock};

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The `queue` label of every queue no operator declared.
pub const OTHER_QUEUE: &str = "other";
/// The queue that is always declared: the one jobs go to when they name none.
const DEFAULT_QUEUE: &str = "default";

static DECLARED_QUEUES: RwLock<BTreeSet<String>> = RwLock::new(BTreeSet::new());

/// Replaces the set of declared queues (the worker pools' queues), which may be label values.
pub fn declare_queues(queues: impl IntoIterator<Item = String>) {
    let set: BTreeSet<String> = queues.into_iter().collect();
    *DECLARED_QUEUES.write().unwrap_or_else(|p| p.into_inner()) = set;
}

/// The `queue` label of `queue`: its name when declared, else [`OTHER_QUEUE`].
pub fn queue_label(queue: &str) -> String {
    let declared = queue == DEFAULT_QUEUE
        || DECLARED_QUEUES
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(queue);
    if declared {
        queue.to_owned()
    } else {
        OTHER_QUEUE.to_owned()
    }
}

/// HTTP requests answered, by `route` template, `method` and `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "ordo_http_requests_total";
/// HTTP request duration in seconds, by `route` template and `method`.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "ordo_http_request_duration_seconds";
/// Jobs enqueued through the API (replays excluded), by `queue`.
pub const JOBS_ENQUEUED_TOTAL: &str = "ordo_jobs_enqueued_total";
/// Requests refused by the per-account rate limit.
pub const RATE_LIMITED_TOTAL: &str = "ordo_rate_limited_total";

/// Runnable-now plus running jobs per pool version, as the autoscaler reads them (`pool`, `pool.version`).
pub const POOL_DEPTH: &str = "ordo_pool_depth";
/// Workers the autoscaler wants per pool version.
pub const POOL_WORKERS_DESIRED: &str = "ordo_pool_workers_desired";
/// Live workers per pool version (fresh heartbeat).
pub const POOL_WORKERS: &str = "ordo_pool_workers";
/// Changes of a pool version's desired worker count.
pub const AUTOSCALER_DECISIONS_TOTAL: &str = "ordo_autoscaler_decisions_total";

/// Jobs claimed by workers, by `queue`.
pub const JOBS_CLAIMED_TOTAL: &str = "ordo_jobs_claimed_total";
/// Attempts settled by workers, by `outcome` (completed, failed, discarded, snoozed, cancelled, handed_back).
pub const JOBS_SETTLED_TOTAL: &str = "ordo_jobs_settled_total";
/// Duration of one claim statement, by `queue`.
pub const CLAIM_DURATION_SECONDS: &str = "ordo_claim_duration_seconds";
/// Handler run time of one attempt, by `kind`.
pub const JOB_DURATION_SECONDS: &str = "ordo_job_duration_seconds";
/// Time from a job being due (`run_at`) to its handler starting, by `queue`.
pub const JOB_START_DELAY_SECONDS: &str = "ordo_job_start_delay_seconds";
/// Jobs per `queue` and `state` (available counts due jobs), all accounts, as seen by the maintenance holder.
pub const QUEUE_JOBS: &str = "ordo_queue_jobs";
/// Age of the oldest due job per `queue`, all accounts.
pub const QUEUE_OLDEST_AVAILABLE_SECONDS: &str = "ordo_queue_oldest_available_seconds";
/// Live workers per `pool` and `version`, as seen by the maintenance holder.
pub const WORKERS_LIVE: &str = "ordo_workers_live";
/// Committed transactions of orchestration events, by `path` (`worker`: a worker's batch; `sync`: an API node's
/// shared transaction of sync events).
pub const EVENT_BATCHES_TOTAL: &str = "ordo_event_batches_total";
/// Events executed in those transactions, by `path`; divided by the batches, the average batch.
pub const EVENT_BATCH_EVENTS_TOTAL: &str = "ordo_event_batch_events_total";

/// Histogram buckets for durations in seconds: 1 ms to 10 s.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and describes every metric; later calls return the same
/// handle (tests build many routers in one process).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // Buckets make durations real histograms (aggregatable across nodes) rather than per-node summaries.
            let builder = PrometheusBuilder::new();
            let builder = builder
                .set_buckets(DURATION_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding application's); then ours only renders
            // what it sees, which is nothing, and /metrics stays valid but empty.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests answered, by route template, method and status"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "HTTP request duration, by route template and method"
    );
    describe_counter!(
        JOBS_ENQUEUED_TOTAL,
        "Jobs enqueued through the API, replays excluded, by queue"
    );
    describe_counter!(RATE_LIMITED_TOTAL, "Requests refused by the per-account rate limit");
    describe_gauge!(POOL_DEPTH, "Runnable-now plus running jobs per pool version");
    describe_gauge!(POOL_WORKERS_DESIRED, "Workers the autoscaler wants per pool version");
    describe_gauge!(POOL_WORKERS, "Live workers per pool version");
    describe_counter!(
        AUTOSCALER_DECISIONS_TOTAL,
        "Changes of a pool version's desired worker count"
    );
    describe_counter!(JOBS_CLAIMED_TOTAL, "Jobs claimed by workers, by queue");
    describe_counter!(JOBS_SETTLED_TOTAL, "Attempts settled by workers, by outcome");
    describe_histogram!(
        CLAIM_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one claim statement, by queue"
    );
    describe_histogram!(
        JOB_DURATION_SECONDS,
        Unit::Seconds,
        "Handler run time of one attempt, by kind"
    );
    describe_histogram!(
        JOB_START_DELAY_SECONDS,
        Unit::Seconds,
        "Time from a job being due to its handler starting, by queue"
    );
    describe_gauge!(
        QUEUE_JOBS,
        "Jobs per queue and state, all accounts (available counts due jobs)"
    );
    describe_gauge!(
        QUEUE_OLDEST_AVAILABLE_SECONDS,
        "Age of the oldest due job per queue, all accounts"
    );
    describe_gauge!(WORKERS_LIVE, "Live workers per pool and version");
    describe_counter!(
        EVENT_BATCHES_TOTAL,
        "Committed transactions of orchestration events, by path (worker, sync)"
    );
    describe_counter!(
        EVENT_BATCH_EVENTS_TOTAL,
        "Orchestration events executed in those transactions, by path"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A declared queue and `default` are label values; any other queue name, however many, is `other`.
    #[test]
    fn only_declared_queues_become_labels() {
        declare_queues(["orders".to_owned()]);
        assert_eq!(queue_label("orders"), "orders");
        assert_eq!(queue_label("default"), "default");
        for q in ["tenant-1", "tenant-2", "orders2", ""] {
            assert_eq!(queue_label(q), OTHER_QUEUE);
        }
        declare_queues([]);
        assert_eq!(queue_label("orders"), OTHER_QUEUE);
    }
}
