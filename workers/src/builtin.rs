//! Built-in kinds for smoke tests, benchmarks and exercising the engine's retry paths:
//! `noop`, `sleep` and `fail`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::step::{parse_args, BoxFuture, Handler, Outcome, StepContext, StepError};

/// `noop`: completes at once with a `null` result, ignoring its args.
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

impl Handler for Noop {
    fn kind(&self) -> &'static str {
        "noop"
    }

    fn description(&self) -> &'static str {
        "completes at once with no result; args are ignored"
    }

    fn run(&self, _ctx: StepContext, _args: Value) -> BoxFuture<'static, Result<Outcome, StepError>> {
        // Benchmarks run this kind by the hundred thousand to measure the engine alone, so it
        // allocates nothing beyond the box: `Value::Null` owns no heap memory.
        Box::pin(std::future::ready(Ok(Outcome::Done(Value::Null))))
    }
}

/// `sleep {ms}`: sleeps `ms` milliseconds, stopping early when the job is cancelled.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sleep;

/// Args of `sleep`; extra fields (benchmarks add padding) are ignored.
#[derive(Debug, Deserialize)]
struct SleepArgs {
    ms: u64,
}

impl Handler for Sleep {
    fn kind(&self) -> &'static str {
        "sleep"
    }

    fn description(&self) -> &'static str {
        "sleeps {ms} milliseconds, stopping early on cancellation"
    }

    fn run(&self, ctx: StepContext, args: Value) -> BoxFuture<'static, Result<Outcome, StepError>> {
        Box::pin(async move {
            let SleepArgs { ms } = parse_args("sleep", args)?;
            tokio::select! {
                // Checked first so an already-cancelled job never starts its sleep.
                biased;
                () = ctx.cancel.cancelled() => Err(StepError::Cancelled),
                () = tokio::time::sleep(Duration::from_millis(ms)) => {
                    Ok(Outcome::Done(json!({ "slept_ms": ms })))
                }
            }
        })
    }
}

/// `fail {times?, permanent?}`: fails its first `times` attempts (default 1) with a
/// retryable error, or every attempt with a permanent one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fail;

/// Args of `fail`; all optional, so `null` args fail exactly once.
#[derive(Debug, Deserialize)]
struct FailArgs {
    #[serde(default = "one")]
    times: u32,
    #[serde(default)]
    permanent: bool,
}

fn one() -> u32 {
    1
}

impl Handler for Fail {
    fn kind(&self) -> &'static str {
        "fail"
    }

    fn description(&self) -> &'static str {
        "fails its first {times} attempts (default 1), or every attempt if {permanent}"
    }

    fn run(&self, ctx: StepContext, args: Value) -> BoxFuture<'static, Result<Outcome, StepError>> {
        Box::pin(async move {
            let FailArgs { times, permanent } = parse_args("fail", args)?;
            if permanent {
                return Err(StepError::fail("permanent failure requested"));
            }
            // Widened so a `times` above i32::MAX still compares correctly with the attempt.
            if i64::from(ctx.attempt) <= i64::from(times) {
                return Err(StepError::retry(format!("failing attempt {} of {times}", ctx.attempt)));
            }
            Ok(Outcome::Done(json!({ "attempts_failed": times })))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_at(kind: &str, attempt: i32) -> StepContext {
        StepContext {
            attempt,
            ..StepContext::for_test(kind)
        }
    }

    /// `noop` completes with a null result whatever args it is given.
    #[tokio::test]
    async fn noop_returns_done_with_null_for_any_args() {
        for args in [Value::Null, json!({}), json!({"pad": "xxxxxxxx"}), json!([1, 2])] {
            let outcome = Noop.run(StepContext::for_test("noop"), args.clone()).await;
            assert_eq!(outcome, Ok(Outcome::Done(Value::Null)), "args {args}");
        }
    }

    /// `sleep` completes after its delay, reporting it, and ignores padding fields.
    #[tokio::test(start_paused = true)]
    async fn sleep_completes_after_the_requested_delay() {
        let start = tokio::time::Instant::now();
        let outcome = Sleep
            .run(StepContext::for_test("sleep"), json!({"ms": 250, "pad": "xx"}))
            .await;
        assert_eq!(outcome, Ok(Outcome::Done(json!({"slept_ms": 250}))));
        assert!(start.elapsed() >= Duration::from_millis(250));
    }

    /// A sleeping job stops as soon as its token is cancelled instead of sleeping on.
    #[tokio::test(start_paused = true)]
    async fn sleep_returns_cancelled_when_the_token_fires_mid_sleep() {
        let ctx = StepContext::for_test("sleep");
        let cancel = ctx.cancel.clone();
        let start = tokio::time::Instant::now();
        let running = tokio::spawn(Sleep.run(ctx, json!({"ms": 3_600_000})));
        // Let the handler start its sleep before cancelling it.
        tokio::task::yield_now().await;
        cancel.cancel();
        let outcome = running.await.expect("handler task does not panic");
        assert_eq!(outcome, Err(StepError::Cancelled));
        assert!(start.elapsed() < Duration::from_secs(3600));
    }

    /// A job whose token is already cancelled never starts sleeping.
    #[tokio::test]
    async fn sleep_returns_cancelled_at_once_when_already_cancelled() {
        let ctx = StepContext::for_test("sleep");
        ctx.cancel.cancel();
        let outcome = Sleep.run(ctx, json!({"ms": 3_600_000})).await;
        assert_eq!(outcome, Err(StepError::Cancelled));
    }

    /// Missing or mistyped `ms` is a permanent failure naming the problem, not a retry.
    #[tokio::test]
    async fn sleep_with_bad_args_fails_permanently() {
        let cases = [
            (json!({}), "invalid args for sleep: missing field `ms`"),
            (json!({"pad": 1}), "invalid args for sleep: missing field `ms`"),
            (
                json!({"ms": -1}),
                "invalid args for sleep: invalid value: integer `-1`, expected u64",
            ),
        ];
        for (args, want) in cases {
            let outcome = Sleep.run(StepContext::for_test("sleep"), args.clone()).await;
            assert_eq!(outcome, Err(StepError::fail(want)), "args {args}");
        }
    }

    /// `fail` retries its first `times` attempts and then succeeds, reporting how many failed.
    #[tokio::test]
    async fn fail_fails_the_first_times_attempts_then_succeeds() {
        let cases: [(Value, i32, Result<Outcome, StepError>); 6] = [
            (json!({"times": 2}), 1, Err(StepError::retry("failing attempt 1 of 2"))),
            (json!({"times": 2}), 2, Err(StepError::retry("failing attempt 2 of 2"))),
            (json!({"times": 2}), 3, Ok(Outcome::Done(json!({"attempts_failed": 2})))),
            (Value::Null, 1, Err(StepError::retry("failing attempt 1 of 1"))),
            (json!({}), 2, Ok(Outcome::Done(json!({"attempts_failed": 1})))),
            (json!({"times": 0}), 1, Ok(Outcome::Done(json!({"attempts_failed": 0})))),
        ];
        for (args, attempt, want) in cases {
            let outcome = Fail.run(ctx_at("fail", attempt), args.clone()).await;
            assert_eq!(outcome, want, "args {args} attempt {attempt}");
        }
    }

    /// `permanent: true` fails every attempt permanently, whatever `times` says.
    #[tokio::test]
    async fn fail_permanent_fails_every_attempt_permanently() {
        for (args, attempt) in [
            (json!({"permanent": true}), 1),
            (json!({"permanent": true}), 5),
            (json!({"permanent": true, "times": 0}), 1),
        ] {
            let outcome = Fail.run(ctx_at("fail", attempt), args.clone()).await;
            assert_eq!(
                outcome,
                Err(StepError::fail("permanent failure requested")),
                "args {args} attempt {attempt}"
            );
        }
    }
}
