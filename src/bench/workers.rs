//! The worker processes a benchmark measures: started from this binary, waited for, stopped, and their memory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::{BenchArgs, Error};

/// The largest peak resident set among the worker processes, in MiB.
pub(super) fn max_rss_mib(children: &[tokio::process::Child]) -> f64 {
    children
        .iter()
        .filter_map(|c| c.id())
        .filter_map(peak_rss_mib)
        .fold(0.0, f64::max)
}

/// Peak resident set (VmHWM) of a process, from /proc.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

/// Starts `args.workers` `ordo worker` processes of this binary against `url`.
pub(super) fn spawn_workers(args: &BenchArgs, url: &str) -> Result<Vec<tokio::process::Child>, Error> {
    (0..args.workers).map(|_| spawn_worker(args, url, None, None)).collect()
}

/// As [`spawn_workers`], each worker also serving `/metrics` on a free local port; returns those addresses.
/// `exe`: another build of ordo to run (an upgrade's previous release), this binary when `None`.
pub(super) fn spawn_workers_with_metrics(
    args: &BenchArgs,
    url: &str,
    exe: Option<&Path>,
) -> Result<(Vec<tokio::process::Child>, Vec<SocketAddr>), Error> {
    let mut children = Vec::with_capacity(args.workers);
    let mut addrs = Vec::with_capacity(args.workers);
    for _ in 0..args.workers {
        // The port is free when asked for; the worker binds it a moment later (nothing else here takes ports).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(Error::Spawn)?;
        children.push(spawn_worker(args, url, Some(addr), exe)?);
        addrs.push(addr);
    }
    Ok((children, addrs))
}

fn spawn_worker(
    args: &BenchArgs,
    url: &str,
    metrics: Option<SocketAddr>,
    exe: Option<&Path>,
) -> Result<tokio::process::Child, Error> {
    let exe: PathBuf = match exe {
        Some(e) => e.to_path_buf(),
        None => std::env::current_exe().map_err(Error::Spawn)?,
    };
    let mut c = tokio::process::Command::new(&exe);
    c.arg("worker")
        .args(["--concurrency", &args.concurrency.to_string()])
        .args(args.prefetch.map(|p| format!("--prefetch={p}")))
        .env("DATABASE_URL", url)
        .env("ORDO_POLL_MS", "50")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    match metrics {
        Some(addr) => c.env("ORDO_METRICS_LISTEN", addr.to_string()),
        None => c.env_remove("ORDO_METRICS_LISTEN"),
    };
    match &args.redis_url {
        Some(r) => c.env("REDIS_URL", r),
        None => c.env_remove("REDIS_URL"),
    };
    match &args.master_keys {
        Some(k) => c.env("ORDO_MASTER_KEYS", k.to_env()),
        None => c.env_remove("ORDO_MASTER_KEYS"),
    };
    c.spawn().map_err(Error::Spawn)
}

/// Waits (up to 30 s) until `n` workers have registered.
pub(super) async fn wait_for_workers(pool: &PgPool, n: usize) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let live: i64 = sqlx::query_scalar("select count(*) from worker")
            .fetch_one(pool)
            .await?;
        if live as usize >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Stalled(Duration::from_secs(30)));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long a worker may take to drain and exit after SIGTERM before it is killed: its default drain (25 s) and
/// its flush fit in it.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// SIGTERM to each worker, then a kill for any still running after [`STOP_GRACE`].
pub(super) async fn stop_workers(children: &mut [tokio::process::Child]) {
    for c in children.iter() {
        if let Some(pid) = c.id() {
            crate::supervisor::send_signal(pid, crate::supervisor::Signal::Term);
        }
    }
    for c in children.iter_mut() {
        if tokio::time::timeout(STOP_GRACE, c.wait()).await.is_err() {
            let _ = c.kill().await;
        }
    }
}
