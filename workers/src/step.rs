//! The step contract: what a handler receives, what it returns, and how handlers are found.
//!
//! A handler is pure with respect to storage: it reads its [`StepContext`] and JSON args
//! and returns an [`Outcome`] or a [`StepError`]. The runtime alone turns that into job
//! state changes, so a handler must never assume its side effects ran only once (a lease can
//! be lost mid-run and the job run again elsewhere).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A boxed, sendable future, the return type of [`Handler::run`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a handler knows about the job it is running.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// The job's id.
    pub job_id: i64,
    /// The attempt being run, starting at 1.
    pub attempt: i32,
    /// The attempt after which a retryable error discards the job.
    pub max_attempts: i32,
    /// The job's kind, the key the handler was looked up by.
    pub kind: String,
    /// The queue the job was claimed from.
    pub queue: String,
    /// The account that owns the job.
    pub account_id: String,
    /// Cancelled when the job times out or the worker shuts down hard; long handlers select
    /// on it so a stopped job gives back its slot promptly instead of running on unobserved.
    pub cancel: CancellationToken,
}

impl StepContext {
    /// A context for unit tests of handlers: job 1, attempt 1 of 20, queue and account `default`.
    pub fn for_test(kind: &str) -> StepContext {
        StepContext {
            job_id: 1,
            attempt: 1,
            max_attempts: 20,
            kind: kind.to_owned(),
            queue: "default".to_owned(),
            account_id: "default".to_owned(),
            cancel: CancellationToken::new(),
        }
    }
}

/// What a successful run asks the engine to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The job is complete with this result (`Value::Null` for none).
    Done(Value),
    /// Run the job again after this delay without using up an attempt.
    Snooze(Duration),
    /// Stop the job for good as cancelled.
    Cancel {
        /// Why the job was cancelled, stored on the job for operators.
        reason: String,
    },
}

/// Why a run did not produce an [`Outcome`]; the variant is the retry policy.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum StepError {
    /// A transient failure: the engine retries with its backoff, or after `after` if given.
    #[error("{reason}")]
    Retry {
        /// What went wrong, stored on the attempt.
        reason: String,
        /// A delay the handler knows better than the engine's backoff (e.g. `Retry-After`).
        after: Option<Duration>,
    },
    /// A permanent failure: retrying cannot help, so the job is discarded.
    #[error("{reason}")]
    Fail {
        /// What went wrong, stored on the job.
        reason: String,
    },
    /// The handler stopped because its cancel token fired.
    #[error("cancelled")]
    Cancelled,
}

impl StepError {
    /// A transient failure retried on the engine's backoff.
    pub fn retry(reason: impl Into<String>) -> Self {
        StepError::Retry {
            reason: reason.into(),
            after: None,
        }
    }

    /// A transient failure retried after `after` instead of the engine's backoff.
    pub fn retry_after(reason: impl Into<String>, after: Duration) -> Self {
        StepError::Retry {
            reason: reason.into(),
            after: Some(after),
        }
    }

    /// A permanent failure.
    pub fn fail(reason: impl Into<String>) -> Self {
        StepError::Fail { reason: reason.into() }
    }
}

/// Classifies a foreign error as transient or permanent, so handlers write `.retryable()?`.
pub trait ResultExt<T> {
    /// Turns an error into [`StepError::Retry`] with the error's message.
    fn retryable(self) -> Result<T, StepError>;
    /// Turns an error into [`StepError::Fail`] with the error's message.
    fn permanent(self) -> Result<T, StepError>;
}

impl<T, E: fmt::Display> ResultExt<T> for Result<T, E> {
    fn retryable(self) -> Result<T, StepError> {
        self.map_err(|e| StepError::retry(e.to_string()))
    }

    fn permanent(self) -> Result<T, StepError> {
        self.map_err(|e| StepError::fail(e.to_string()))
    }
}

/// Decodes a job's args, reporting malformed args as a permanent failure naming the kind.
///
/// `null` args decode like an empty object, so kinds whose args are all optional can be
/// enqueued without any. Unknown fields are ignored unless `T` denies them.
pub fn parse_args<T: DeserializeOwned>(kind: &str, args: Value) -> Result<T, StepError> {
    let args = if args.is_null() {
        Value::Object(serde_json::Map::new())
    } else {
        args
    };
    // Retrying cannot fix args that were stored malformed, hence a permanent failure.
    serde_json::from_value(args).map_err(|e| StepError::fail(format!("invalid args for {kind}: {e}")))
}

/// The code that runs one job kind.
pub trait Handler: Send + Sync + 'static {
    /// The job kind this handler runs, e.g. `http.request`.
    fn kind(&self) -> &'static str;
    /// One line saying what the kind does and which args it takes.
    fn description(&self) -> &'static str;
    /// Runs one attempt; the future owns what it needs so the runtime can spawn it.
    fn run(&self, ctx: StepContext, args: Value) -> BoxFuture<'static, Result<Outcome, StepError>>;
}

/// Step handlers by job kind; cheap to clone, shared by every job task of a worker.
#[derive(Clone, Default)]
pub struct StepHandlers {
    handlers: BTreeMap<&'static str, Arc<dyn Handler>>,
}

impl StepHandlers {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a handler under its kind, replacing any handler already registered for it.
    pub fn register(&mut self, h: impl Handler) -> &mut Self {
        self.handlers.insert(h.kind(), Arc::new(h));
        self
    }

    /// The handler for `kind`, if one is registered.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }

    /// The registered kinds, sorted.
    pub fn kinds(&self) -> Vec<String> {
        self.handlers.keys().map(|k| (*k).to_owned()).collect()
    }

    /// How many kinds are registered.
    pub fn len(&self) -> usize {
        self.handlers.len()
    }

    /// Whether no kind is registered.
    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }
}

impl fmt::Debug for StepHandlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepHandlers")
            .field("kinds", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Args {
        ms: u64,
        #[serde(default)]
        label: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    struct OptionalArgs {
        #[serde(default)]
        times: Option<u32>,
    }

    /// A handler for a test kind that completes with its description as the result.
    struct Fixed(&'static str, &'static str);

    impl Handler for Fixed {
        fn kind(&self) -> &'static str {
            self.0
        }
        fn description(&self) -> &'static str {
            self.1
        }
        fn run(&self, _: StepContext, _: Value) -> BoxFuture<'static, Result<Outcome, StepError>> {
            let result = Value::from(self.1);
            Box::pin(async move { Ok(Outcome::Done(result)) })
        }
    }

    /// Malformed args are permanent failures whose message names the kind and the problem.
    #[test]
    fn parse_args_reports_malformed_args_as_permanent_failure() {
        let cases = [
            (json!({}), "invalid args for sleep: missing field `ms`"),
            (
                json!({"ms": "ten"}),
                "invalid args for sleep: invalid type: string \"ten\", expected u64",
            ),
            (json!(null), "invalid args for sleep: missing field `ms`"),
        ];
        for (args, want) in cases {
            let err = parse_args::<Args>("sleep", args.clone()).expect_err("args are malformed");
            assert_eq!(err, StepError::fail(want), "args {args}");
        }
    }

    /// Extra fields are ignored and `null` decodes like `{}`, so callers can pad or omit args.
    #[test]
    fn parse_args_ignores_unknown_fields_and_accepts_null_for_optional_args() {
        let parsed: Args = parse_args("sleep", json!({"ms": 5, "pad": "xxxx"})).expect("valid");
        assert_eq!(parsed, Args { ms: 5, label: None });
        let parsed: OptionalArgs = parse_args("fail", Value::Null).expect("all fields optional");
        assert_eq!(parsed, OptionalArgs::default());
    }

    /// `.retryable()` and `.permanent()` keep the error's message and pick the policy.
    #[test]
    fn result_ext_maps_errors_to_the_chosen_policy() {
        let err: Result<(), &str> = Err("boom");
        assert_eq!(err.retryable(), Err(StepError::retry("boom")));
        assert_eq!(err.permanent(), Err(StepError::fail("boom")));
        let ok: Result<u8, &str> = Ok(7);
        assert_eq!(ok.retryable(), Ok(7));
    }

    /// A step error displays as its reason, which is what the engine stores on the attempt.
    #[test]
    fn step_error_displays_its_reason() {
        assert_eq!(StepError::retry("try later").to_string(), "try later");
        assert_eq!(StepError::fail("bad input").to_string(), "bad input");
        assert_eq!(StepError::Cancelled.to_string(), "cancelled");
    }

    /// Registering a kind twice keeps only the later handler, so overrides are possible.
    #[tokio::test]
    async fn registry_register_replaces_an_existing_kind() {
        let mut registry = StepHandlers::new();
        assert!(registry.is_empty());
        registry
            .register(Fixed("b", "first"))
            .register(Fixed("a", "other"))
            .register(Fixed("b", "second"));
        assert_eq!(registry.kinds(), ["a", "b"]);
        assert_eq!(registry.len(), 2);
        assert_eq!(format!("{registry:?}"), r#"StepHandlers { kinds: ["a", "b"] }"#);

        let handler = registry.get("b").expect("registered");
        let outcome = handler.run(StepContext::for_test("b"), Value::Null).await;
        assert_eq!(outcome, Ok(Outcome::Done(json!("second"))));
    }
}
