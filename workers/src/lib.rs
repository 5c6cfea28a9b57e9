//! The step contract of ordo and its built-in job kinds.
//!
//! This crate is a leaf: it knows nothing about Postgres, queues or leases. The engine's
//! worker runtime owns a [`StepHandlers`] built by [`registry()`], looks up the [`Handler`] for
//! a claimed job's kind, and calls [`Handler::run`] with a [`StepContext`] and the job's
//! JSON args. The handler *returns* what should happen next and the runtime applies it,
//! together with the job's completion, in one fenced transaction:
//!
//! ```text
//! API → queue → runtime ──run(ctx, args)──▶ Handler
//!                  ▲                          │
//!                  └── Result<Outcome, StepError>
//! ```
//!
//! - [`Outcome::Done`] completes the job with a JSON result.
//! - [`Outcome::Snooze`] runs the job again later without using up an attempt.
//! - [`Outcome::Cancel`] stops the job for good as cancelled.
//! - [`StepError::Retry`] is transient: the engine retries with its backoff (or after the
//!   given delay) until the job runs out of attempts.
//! - [`StepError::Fail`] is permanent: the job is discarded at once.
//! - [`StepError::Cancelled`] means the handler stopped because [`StepContext::cancel`]
//!   fired (job timeout or hard shutdown); long handlers select on that token.
//!
//! Because handlers never touch the database, every handler can be unit-tested with
//! [`StepContext::for_test`] and no other setup.
//!
//! # Adding a handler
//!
//! 1. Write one file (or add to the file of its family) with a unit struct implementing
//!    [`Handler`]; decode args with [`parse_args`] and map foreign errors with
//!    [`ResultExt::retryable`] / [`ResultExt::permanent`].
//! 2. Add one `.register(...)` line to [`registry()`].
//!
//! # Built-in kinds
//!
//! | kind | args | behaviour |
//! |------|------|-----------|
//! | `noop` | ignored | completes at once with a `null` result |
//! | `sleep` | `{ms}` | sleeps `ms` milliseconds, stops early on cancellation |
//! | `fail` | `{times?, permanent?}` | fails its first `times` attempts (default 1), or every attempt with a permanent error |
//! | `http.request` | `{method?, url, headers?, body?, timeout_ms?}` | 2xx succeeds; 408, 429 and 5xx retry; other 4xx fail permanently |

#![warn(missing_docs)]

pub mod builtin;
pub mod http;
pub mod rules;
pub mod step;

pub use step::{parse_args, BoxFuture, Handler, Outcome, ResultExt, StepContext, StepError, StepHandlers};

/// All built-in handlers: noop, sleep, fail, http.request.
pub fn registry() -> StepHandlers {
    let mut registry = StepHandlers::new();
    registry
        .register(builtin::Noop)
        .register(builtin::Sleep)
        .register(builtin::Fail)
        .register(http::HttpRequest::new());
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine relies on exactly these kinds being present, listed in sorted order.
    #[test]
    fn registry_lists_the_four_builtin_kinds_sorted() {
        let registry = registry();
        assert_eq!(
            registry.kinds(),
            ["fail", "http.request", "noop", "sleep"],
            "{registry:?}"
        );
        assert_eq!(registry.len(), 4);
        assert!(!registry.is_empty());
    }

    /// Each registered handler is found under the kind it reports for itself.
    #[test]
    fn registry_get_returns_the_handler_for_each_kind() {
        let registry = registry();
        for kind in registry.kinds() {
            let handler = registry.get(&kind).expect("listed kinds are registered");
            assert_eq!(handler.kind(), kind);
            assert!(!handler.description().is_empty(), "{kind} has no description");
        }
        assert!(registry.get("no.such.kind").is_none());
    }
}
