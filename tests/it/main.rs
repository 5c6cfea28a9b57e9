//! The one integration-test binary: real PostgreSQL, real Redis, real processes.

// Helpers outside #[test] functions unwrap too; a failed unwrap is a failed test here.
#![allow(clippy::unwrap_used)]

mod api;
mod autoscale;
mod chaos;
mod cli;
mod crash;
mod crypt;
mod dashboard;
mod deploy;
mod fairness;
mod history;
mod lanes;
mod layering;
mod load;
mod orchestration;
mod orchestration_batch;
mod queue;
mod quickstart;
mod restart;
mod rolling;
mod rollout;
mod sandbox;
mod scheduler;
mod support;
mod tls;
mod ui;
mod ui_console;
mod worker;
