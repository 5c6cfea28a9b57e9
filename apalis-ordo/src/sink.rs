//! Pushing tasks: apalis's `TaskSink` (implemented by apalis for any `Sink` of encoded tasks) enqueues ordo jobs.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use apalis_core::task::Task;
use chrono::{DateTime, Utc};
use ordo::queue::{NewJob, Queue};
use serde_json::Value;

use crate::{Config, Error, OrdoBackend, CONCURRENCY_KEY};

/// Jobs buffered at most before a push writes them (one transaction each, all or nothing).
const CHUNK: usize = 1000;

type Flush = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// Tasks accepted but not yet written, and the write in flight.
#[derive(Default)]
pub(crate) struct PushState {
    buffer: Vec<NewJob>,
    flushing: Option<Flush>,
}

/// The ordo job a pushed task becomes (see the crate docs for what carries over).
pub(crate) fn job_of(config: &Config, task: Task<Value>) -> Result<NewJob, Error> {
    let (args, ctx) = task.take();
    let queue = ctx
        .queue()
        .map_or_else(|| config.queue.clone(), |q| q.as_ref().to_owned());
    let mut job = NewJob::new(&config.kind, args)
        .queue(queue)
        .max_attempts(config.max_attempts);
    if let Some(p) = ctx.priority() {
        job.priority = i16::try_from(p)
            .ok()
            .filter(|p| (0..=9).contains(p))
            .ok_or_else(|| Error::InvalidTask(format!("priority {p} is not ordo's 0..9 (0 first)")))?;
    }
    if let Some(n) = ctx.max_attempts() {
        job.max_attempts =
            i32::try_from(n).map_err(|_| Error::InvalidTask(format!("max_attempts {n} is too large")))?;
    }
    if let Some(at) = ctx.run_at() {
        let at = i64::try_from(at)
            .ok()
            .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
            .ok_or_else(|| Error::InvalidTask(format!("run_at {at} is not a time")))?;
        job = job.run_at(at);
    }
    if let Some(k) = ctx.idempotency_key() {
        job = job.idempotency_key(k);
    }
    if let Some(k) = ctx.metadata().get(CONCURRENCY_KEY) {
        job = job.concurrency_key(k);
    }
    job.validate().map_err(|errs| {
        let all: Vec<String> = errs.iter().map(|e| format!("{}: {}", e.path, e.message)).collect();
        Error::InvalidTask(all.join("; "))
    })?;
    Ok(job)
}

impl<Args> OrdoBackend<Args> {
    /// Starts writing the buffer when nothing is in flight; polls the write in flight.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            if let Some(f) = self.push.flushing.as_mut() {
                let done = std::task::ready!(f.as_mut().poll(cx));
                self.push.flushing = None;
                done?;
            }
            if self.push.buffer.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let jobs = std::mem::take(&mut self.push.buffer);
            let queue = Queue::new(self.pool.clone(), self.waker.clone());
            let account = self.config.account.clone();
            let pushed = self.pushed.clone();
            self.push.flushing = Some(Box::pin(async move {
                queue.enqueue_many(&account, jobs).await?;
                // Every claim loop of this process waiting now, and the next one to wait.
                pushed.notify_waiters();
                pushed.notify_one();
                Ok(())
            }));
        }
    }
}

impl<Args> futures_sink::Sink<Task<Value>> for OrdoBackend<Args> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if this.push.buffer.len() >= CHUNK {
            return this.poll_write(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, task: Task<Value>) -> Result<(), Error> {
        let this = self.get_mut();
        let job = job_of(&this.config, task)?;
        this.push.buffer.push(job);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_write(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_write(cx)
    }
}

#[cfg(test)]
mod tests {
    use apalis_core::task::builder::TaskBuilder;
    use serde_json::json;

    use super::*;
    use crate::ConcurrencyKey;

    /// A task's idempotency key, priority, run_at, max_attempts, queue and concurrency key become the job's.
    #[test]
    fn task_fields_carry_over_to_the_job() {
        let config = Config::new("email.send").queue("mail");
        let task = TaskBuilder::new(json!({"to": "a@example.com"}))
            .idempotency_key("welcome:42")
            .priority(2)
            .run_at_timestamp(4_102_444_800)
            .max_attempts(3)
            .metadata(&ConcurrencyKey("user-42".into()))
            .build();
        let job = job_of(&config, task).unwrap();
        assert_eq!(job.kind, "email.send");
        assert_eq!(job.queue, "mail");
        assert_eq!(job.priority, 2);
        assert_eq!(job.max_attempts, 3);
        assert_eq!(job.run_at.unwrap().timestamp(), 4_102_444_800);
        assert_eq!(job.idempotency_key.as_deref(), Some("welcome:42"));
        assert_eq!(job.concurrency_key.as_deref(), Some("user-42"));

        let other = TaskBuilder::new(json!(1)).queue("urgent".into()).build();
        let job = job_of(&config, other).unwrap();
        assert_eq!((job.queue.as_str(), job.priority, job.max_attempts), ("urgent", 5, 20));
    }

    /// A priority outside ordo's range is refused with a message, not clamped.
    #[test]
    fn priority_outside_ordo_range_is_refused() {
        let task = TaskBuilder::new(json!(1)).priority(10).build();
        let err = job_of(&Config::new("k"), task).unwrap_err();
        assert!(err.to_string().contains("priority 10"), "{err}");
    }
}
