//! apalis workers on ordo, against real PostgreSQL: jobs from ordo's HTTP API, a SIGKILLed worker process,
//! durable retries, per-key order.

mod api;
mod crash;
mod retry;
mod shutdown;
mod support;
