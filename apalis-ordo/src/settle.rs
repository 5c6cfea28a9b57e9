//! The backend's middleware: it settles each task's ordo job with the handler's outcome.
//!
//! apalis places the backend's layer outside the user's layers, so this sees the final outcome of a task after
//! whatever the user's middleware did. The outcome goes to ordo's batched, fenced completer: `Ok` completes the
//! job with the response as its result, an error records a failed attempt that ordo retries durably after its
//! backoff, or discards once `max_attempts` are used up.
//!
//! apalis's in-process retry layer (`.retry(RetryPolicy::retries(n))`) is not needed here: ordo retries every
//! failure durably, surviving restarts, with backoff, recording each attempt's error. The task's
//! [`Attempt`](apalis_core::task::attempt::Attempt) is ordo's attempt number (1 on the first run), and its
//! `max_attempts` the job's; a retry layer compares its count to that attempt, so with `retries(n)` a job runs
//! again in-process only while its ordo attempt is at most `n`. The handler's runs in one attempt share its lease
//! and settle once. A worker logs once when it sees a task run more than once in one attempt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::error::{AbortError, BoxDynError, RetryAfterError};
use apalis_core::task::Task;
use ordo::queue::JobId;
use ordo::runtime::embed::Holder;
use ordo::runtime::SettleKind;
use serde::Serialize;
use tokio::sync::Semaphore;

/// The ordo job behind a fetched task, in the task's data: a handler may take it as `Data<OrdoJob>`.
#[derive(Debug, Clone)]
pub struct OrdoJob {
    /// The job's id (also the task id, as `TaskId::Int`).
    pub id: JobId,
    /// The attempt running, 1 on the first run.
    pub attempt: i32,
    /// The account the job belongs to.
    pub account: String,
    /// Its queue.
    pub queue: String,
    /// Its concurrency key, if any.
    pub concurrency_key: Option<String>,
}

/// What the settling layer shares with the backend that made it.
pub(crate) struct Shared {
    pub holder: Holder,
    /// The backend's permits of held jobs: a settled job gives its permit back, so the fetcher may claim another.
    pub permits: Arc<Semaphore>,
    /// Whether the once-per-worker notice about in-process retries was logged.
    pub warned: AtomicBool,
}

impl Shared {
    /// Settles `job`'s attempt and frees its permit.
    pub fn settle(&self, job: &OrdoJob, kind: SettleKind) {
        let lane = job.concurrency_key.as_ref().map(|_| job.queue.clone());
        if !self.holder.settle(job.id, job.attempt, kind, lane) {
            tracing::warn!(job.id = %job.id, attempt = job.attempt,
                "outcome after the backend stopped; the job's lease will expire and it will run again");
        }
        self.permits.add_permits(1);
    }
}

/// The layer [`OrdoBackend`](crate::OrdoBackend) gives its worker (see the module docs).
#[derive(Clone)]
pub struct SettleLayer {
    pub(crate) shared: Arc<Shared>,
}

impl<S> tower_layer::Layer<S> for SettleLayer {
    type Service = SettleService<S>;

    fn layer(&self, inner: S) -> SettleService<S> {
        SettleService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`SettleLayer`].
#[derive(Clone)]
pub struct SettleService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, Args> tower_service::Service<Task<Args>> for SettleService<S>
where
    S: tower_service::Service<Task<Args>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
    S::Response: Serialize,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, BoxDynError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        let job = task.data().get::<OrdoJob>().cloned();
        let runs = task.raw_attempt().clone();
        let fut = self.inner.call(task);
        let shared = self.shared.clone();
        Box::pin(async move {
            let res = fut.await.map_err(Into::into);
            let Some(job) = job else {
                // Not one of this backend's tasks (a layer made it): nothing to settle.
                return res;
            };
            let ran = runs.current();
            if ran > usize::try_from(job.attempt).unwrap_or(0) && !shared.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(job.id = %job.id, attempt = job.attempt, runs = ran,
                    "a task ran more than once in one ordo attempt (an in-process retry layer?); ordo retries \
                     failures durably, so that layer is not needed");
            }
            let kind = match &res {
                Ok(response) => SettleKind::Complete(result_of(response, &job)),
                Err(e) => failure(e.as_ref()),
            };
            shared.settle(&job, kind);
            res
        })
    }
}

/// A handler's response as the job's result.
fn result_of<R: Serialize>(response: &R, job: &OrdoJob) -> serde_json::Value {
    serde_json::to_value(response).unwrap_or_else(|e| {
        // The work is done: completing without a result beats running it again.
        tracing::warn!(job.id = %job.id, error = %e, "task result is not JSON; completing without a result");
        serde_json::Value::Null
    })
}

/// How an error settles: an [`AbortError`] discards the job, a [`RetryAfterError`] retries it after its delay,
/// any other error after ordo's backoff (or discards the job when its attempts are used up).
pub fn failure(e: &(dyn std::error::Error + Send + Sync + 'static)) -> SettleKind {
    let after: Option<Duration> = e.downcast_ref::<RetryAfterError>().map(RetryAfterError::get_duration);
    SettleKind::Fail {
        message: e.to_string(),
        permanent: e.downcast_ref::<AbortError>().is_some(),
        after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(e: BoxDynError) -> (bool, Option<Duration>, String) {
        match failure(e.as_ref()) {
            SettleKind::Fail {
                message,
                permanent,
                after,
            } => (permanent, after, message),
            other => panic!("not a failure: {other:?}"),
        }
    }

    /// An abort is permanent, a retry-after keeps its delay, any other error retries after the backoff.
    #[test]
    fn errors_map_to_ordo_failures() {
        let (permanent, after, message) = kind_of(Box::new(AbortError::new("bad input")));
        assert!(permanent);
        assert_eq!(after, None);
        assert!(message.contains("bad input"), "{message}");

        let (permanent, after, _) = kind_of(Box::new(RetryAfterError::new("busy", Duration::from_secs(7))));
        assert!(!permanent);
        assert_eq!(after, Some(Duration::from_secs(7)));

        let (permanent, after, message) = kind_of("boom".into());
        assert!(!permanent);
        assert_eq!(after, None);
        assert_eq!(message, "boom");
    }
}
