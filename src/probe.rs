//! `test.record {ms?}`: records each execution (job, attempt, worker process, start and end) in the table
//! `test_execution`, which the test creates, so tests can prove what ran where and never twice at once.

use std::time::Duration;

use ordo_workers::{BoxFuture, Outcome, StepContext, StepError};
use sqlx::PgPool;

use crate::engine::{EngineHandler, EngineHandlers, EngineResult};
use crate::queue::Job;

struct Record;

impl EngineHandler for Record {
    fn kind(&self) -> &'static str {
        "test.record"
    }

    fn run(&self, pool: PgPool, job: Job, ctx: StepContext) -> BoxFuture<'static, EngineResult> {
        Box::pin(async move {
            let ms = job.args.get("ms").and_then(|v| v.as_u64()).unwrap_or(0);
            let r = async {
                let row: i64 = sqlx::query_scalar(
                    r#"
                    insert into test_execution (job_id, attempt, pid, started_at)
                    values ($1, $2, $3, clock_timestamp())
                    returning id
                    "#,
                )
                .bind(job.id.0)
                .bind(job.attempt)
                .bind(std::process::id() as i32)
                .fetch_one(&pool)
                .await?;
                if ms > 0 {
                    tokio::select! {
                        _ = ctx.cancel.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    }
                }
                sqlx::query("update test_execution set finished_at = clock_timestamp() where id = $1")
                    .bind(row)
                    .execute(&pool)
                    .await?;
                Ok::<_, sqlx::Error>(true)
            };
            match r.await {
                Ok(true) => EngineResult::Step(Ok(Outcome::Done(serde_json::Value::Null))),
                Ok(false) => EngineResult::Step(Err(StepError::Cancelled)),
                Err(e) => EngineResult::Step(Err(StepError::Retry {
                    reason: e.to_string(),
                    after: None,
                })),
            }
        })
    }
}

/// Adds the probe kinds.
pub fn register(h: &mut EngineHandlers) {
    h.register(Record);
}
