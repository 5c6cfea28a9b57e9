//! Runs one claimed job: finds its handler, applies the timeout, catches panics, and sends the outcome to the
//! completer.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use ordo_workers::{Outcome, StepContext, StepError, StepHandlers};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::settle::{LaneHook, Outbox, Settle, SettleKind};
use super::Running;
use crate::engine::{panic_message, EngineHandlers, EngineResult};
use crate::queue::{Job, JobId};
use crate::telemetry::metrics as m;

pub(crate) struct AttemptRunner {
    pub pool: PgPool,
    pub steps: StepHandlers,
    pub engine: EngineHandlers,
    pub default_timeout: Duration,
    pub running: Running,
    pub settle: Outbox,
    /// Fires when the worker begins to stop; a handler cancelled after that hands its job back.
    pub stopping: CancellationToken,
    /// Told when a handler settled a job of a concurrency key itself (committed): the key's next job is released.
    pub lanes: LaneHook,
}

enum Ran {
    Outcome(Result<Outcome, StepError>),
    Settled,
    TimedOut,
    Panicked(String),
}

impl AttemptRunner {
    /// Runs the job, stopped by `cancel` when its lease is lost, and settles it (or its handler did).
    pub async fn execute(&self, mut job: Job, cancel: CancellationToken) {
        let id = job.id;
        let attempt = job.attempt;
        // Claims read the args as stored: open them here, where the handler needs them (see `crate::crypt`).
        let opened = crate::queue::open_jobs(std::slice::from_mut(&mut job)).await;
        let account = job.account_id.clone();
        if let Ok(mut r) = self.running.lock() {
            r.insert(id, (attempt, cancel.clone()));
        }
        let timeout = job
            .timeout_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map(Duration::from_millis)
            .unwrap_or(self.default_timeout);
        let ctx = StepContext {
            job_id: id.0,
            attempt,
            max_attempts: job.max_attempts,
            kind: job.kind.clone(),
            queue: job.queue.clone(),
            account_id: job.account_id.clone(),
            cancel: cancel.clone(),
        };
        let kind_label = job.kind.clone();
        let lane = job.concurrency_key.is_some().then(|| job.queue.clone());
        // Kept for the failure logs only; parsed there, off the path of jobs that succeed.
        let traceparent = job.traceparent.clone();
        let delay = (chrono::Utc::now() - job.run_at).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::histogram!(m::JOB_START_DELAY_SECONDS, "queue" => m::queue_label(&job.queue)).record(delay);
        let started = std::time::Instant::now();
        let ran = match opened {
            Ok(()) => self.run_handler(job, ctx, timeout).await,
            // The database could not give the data key: another attempt may succeed.
            Err(e @ crate::crypt::Error::Database(_)) => Ran::Outcome(Err(StepError::Retry {
                reason: format!("failed to load the account's data key: {e}"),
                after: None,
            })),
            Err(e) => Ran::Outcome(Err(StepError::Fail {
                reason: format!("cannot open the job's args: {e}"),
            })),
        };
        metrics::histogram!(m::JOB_DURATION_SECONDS, "kind" => kind_label).record(started.elapsed().as_secs_f64());
        if let Ok(mut r) = self.running.lock() {
            r.remove(&id);
        }
        let kind = match ran {
            Ran::Settled => {
                // Committed by the handler: the next job of its key was released in that transaction, so claim
                // again at once instead of at the next poll, or a serial chain would advance one step per poll.
                self.lanes.settled(lane.iter().map(String::as_str));
                return;
            }
            Ran::Outcome(Ok(Outcome::Done(v))) => SettleKind::Complete(v),
            Ran::Outcome(Ok(Outcome::Snooze(d))) => SettleKind::Snooze(d),
            Ran::Outcome(Ok(Outcome::Cancel { reason })) => SettleKind::Cancel(reason),
            Ran::Outcome(Err(StepError::Retry { reason, after })) => {
                tracing::info!(job.id = %id, attempt, trace_id = trace_id(traceparent.as_deref()), error = %reason,
                    "attempt failed; will retry");
                SettleKind::Fail {
                    message: reason,
                    permanent: false,
                    after,
                }
            }
            Ran::Outcome(Err(StepError::Fail { reason })) => {
                tracing::info!(job.id = %id, attempt, trace_id = trace_id(traceparent.as_deref()), error = %reason,
                    "attempt failed permanently");
                SettleKind::Fail {
                    message: reason,
                    permanent: true,
                    after: None,
                }
            }
            Ran::Outcome(Err(_)) if self.stopping.is_cancelled() => SettleKind::HandBack,
            Ran::Outcome(Err(e)) => SettleKind::Fail {
                message: e.to_string(),
                permanent: false,
                after: None,
            },
            Ran::TimedOut => SettleKind::Fail {
                message: format!("timed out after {} ms", timeout.as_millis()),
                permanent: false,
                after: None,
            },
            Ran::Panicked(msg) => SettleKind::Fail {
                message: format!("handler panicked: {msg}"),
                permanent: false,
                after: None,
            },
        };
        let kind = seal_outcome(&account, id, kind).unwrap_or_else(|e| SettleKind::Fail {
            message: format!("cannot encrypt the job's outcome: {e}"),
            permanent: false,
            after: None,
        });
        self.settle.send(Settle {
            id,
            attempt,
            kind,
            lane,
        });
    }

    /// Lets go of a prefetched job that never started: handed back (available again, its attempt not used up)
    /// when `hand_back`, else only forgotten (its lease was lost).
    pub fn release_unstarted(&self, job: Job, hand_back: bool) {
        if let Ok(mut r) = self.running.lock() {
            r.remove(&job.id);
        }
        if hand_back {
            self.settle.send(Settle {
                id: job.id,
                attempt: job.attempt,
                kind: SettleKind::HandBack,
                lane: None,
            });
        }
    }

    async fn run_handler(&self, job: Job, ctx: StepContext, timeout: Duration) -> Ran {
        let cancel = ctx.cancel.clone();
        let fut = if let Some(h) = self.steps.get(&ctx.kind) {
            let args = job.args;
            async move { EngineResultOrStep::Step(h.run(ctx, args).await) }.boxed()
        } else if let Some(h) = self.engine.get(&ctx.kind) {
            let pool = self.pool.clone();
            async move { EngineResultOrStep::Engine(h.run(pool, job, ctx).await) }.boxed()
        } else {
            // Claims only ask for registered kinds, so this is a registry change at run time.
            return Ran::Outcome(Err(StepError::Fail {
                reason: format!("no handler for kind {:?}", ctx.kind),
            }));
        };
        let guarded = AssertUnwindSafe(fut).catch_unwind();
        match tokio::time::timeout(timeout, guarded).await {
            Err(_) => {
                cancel.cancel();
                Ran::TimedOut
            }
            Ok(Err(panic)) => Ran::Panicked(panic_message(panic.as_ref())),
            Ok(Ok(EngineResultOrStep::Step(r))) => Ran::Outcome(r),
            Ok(Ok(EngineResultOrStep::Engine(EngineResult::Step(r)))) => Ran::Outcome(r),
            Ok(Ok(EngineResultOrStep::Engine(EngineResult::Settled))) => Ran::Settled,
        }
    }
}

/// Seals what an outcome stores of the customer's data (a result, an error message, a cancel reason) under the
/// job's identity; without master keys it is returned as it is.
fn seal_outcome(account: &str, id: JobId, kind: SettleKind) -> Result<SettleKind, crate::crypt::Error> {
    if !crate::crypt::enabled() {
        return Ok(kind);
    }
    let text = |m: &str| {
        let id = id.to_string();
        let row = [id.as_str()];
        let aad = crate::crypt::Aad::new(account, "job", &row, "error");
        crate::crypt::seal_text(&aad, &crate::queue::truncate_error(m))
    };
    Ok(match kind {
        SettleKind::Complete(v) if !v.is_null() => {
            SettleKind::Complete(crate::queue::seal_json(account, id.0, "result", &v)?)
        }
        SettleKind::Fail {
            message,
            permanent,
            after,
        } => SettleKind::Fail {
            message: text(&message)?,
            permanent,
            after,
        },
        SettleKind::Cancel(reason) => SettleKind::Cancel(text(&format!("cancelled: {reason}"))?),
        other => other,
    })
}

/// The trace id of a job's `traceparent`, so failure logs can be joined with the caller's; a job without one logs
/// no `trace_id` field at all (an absent `Option` field is not recorded), rather than an empty one.
fn trace_id(traceparent: Option<&str>) -> Option<String> {
    traceparent
        .and_then(crate::telemetry::trace::TraceParent::parse)
        .map(|t| t.trace_id())
}

enum EngineResultOrStep {
    Step(Result<Outcome, StepError>),
    Engine(EngineResult),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job with a valid traceparent logs its trace id; one without (or with a malformed one) logs no field.
    #[test]
    fn trace_id_is_absent_without_a_traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(Some(tp)).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(trace_id(None), None);
        assert_eq!(trace_id(Some("garbage")), None);
    }
}
