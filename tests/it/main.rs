//! The one integration-test binary: real PostgreSQL, real Redis, real processes.

mod crash;
mod queue;
mod support;
mod worker;
