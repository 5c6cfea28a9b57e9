//! Drivers act on the autoscaler's decisions: [`ProcessDriver`] runs local `ordo worker` processes,
//! [`super::KubernetesDriver`] sets Deployment replicas, [`NoneDriver`] does nothing (the counts are only published).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::Result;

/// The worker count wanted for one pool version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Pool.
    pub pool: String,
    /// Version.
    pub version: String,
    /// Workers.
    pub workers: u32,
}

/// How decisions become workers.
pub trait PoolDriver: Send {
    /// The driver's name, for logs.
    fn name(&self) -> &'static str;

    /// Brings every listed pool version to its count. Versions the driver runs that are not listed go to zero.
    /// Each call is a full reconciliation, so a failed one is simply repeated next round.
    fn apply(&mut self, desired: &[Desired]) -> impl Future<Output = Result<()>> + Send;

    /// Workers this driver knows to be running per (pool, version), when it can tell.
    fn actual(&self) -> Option<BTreeMap<(String, String), u32>>;

    /// Stops what the driver started (the process driver's children); Kubernetes Deployments are left as they are.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}

/// Publishes counts and changes nothing.
#[derive(Debug, Default)]
pub struct NoneDriver;

impl PoolDriver for NoneDriver {
    fn name(&self) -> &'static str {
        "none"
    }

    async fn apply(&mut self, _desired: &[Desired]) -> Result<()> {
        Ok(())
    }

    fn actual(&self) -> Option<BTreeMap<(String, String), u32>> {
        None
    }

    async fn shutdown(&mut self) {}
}

/// Runs `ordo worker --pool P --version V` children of this executable (the environment passes through),
/// SIGTERMs the surplus, and replaces any that die. The children stop on their own when this process exits,
/// even by SIGKILL.
pub struct ProcessDriver {
    exe: PathBuf,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    running: BTreeMap<(String, String), Vec<Child>>,
    stopping: Vec<Child>,
}

impl ProcessDriver {
    /// Children of `exe` (normally the current executable), each also given `extra_args`.
    pub fn new(exe: PathBuf, extra_args: Vec<String>) -> Self {
        ProcessDriver {
            exe,
            extra_args,
            env: Vec::new(),
            running: BTreeMap::new(),
            stopping: Vec::new(),
        }
    }

    /// Sets an environment variable for every child (e.g. `DATABASE_URL` given to the autoscaler as a flag).
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    fn spawn(&self, pool: &str, version: &str) -> Result<Child> {
        let child = Command::new(&self.exe)
            .arg("worker")
            .args(["--pool", pool, "--version", version])
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // A worker must not outlive this process: after a SIGKILL the replacing autoscaler starts its own.
            .env("ORDO_STOP_WITH_PARENT", "true")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        tracing::info!(pool, pool.version = version, pid = child.id(), "started worker process");
        Ok(child)
    }
}

/// SIGTERM: the worker stops claiming, drains and exits 0.
fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        crate::supervisor::send_signal(pid, crate::supervisor::Signal::Term);
    }
}

impl PoolDriver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn apply(&mut self, desired: &[Desired]) -> Result<()> {
        // Reap: forget children that exited (a worker that dies is replaced below).
        for ((pool, version), children) in self.running.iter_mut() {
            children.retain_mut(|c| match c.try_wait() {
                Ok(None) => true,
                Ok(Some(status)) => {
                    tracing::warn!(pool, pool.version = version, %status, "worker process exited; replacing it");
                    false
                }
                Err(_) => false,
            });
        }
        self.stopping.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        let mut want: BTreeMap<(String, String), u32> = self.running.keys().map(|k| (k.clone(), 0)).collect();
        for d in desired {
            want.insert((d.pool.clone(), d.version.clone()), d.workers);
        }
        for ((pool, version), n) in want {
            let have = self.running.get(&(pool.clone(), version.clone())).map_or(0, Vec::len);
            let n = n as usize;
            if have < n {
                let mut started = Vec::new();
                for _ in have..n {
                    started.push(self.spawn(&pool, &version)?);
                }
                self.running
                    .entry((pool.clone(), version.clone()))
                    .or_default()
                    .extend(started);
            } else if have > n {
                let children = self.running.entry((pool.clone(), version.clone())).or_default();
                // Newest first: the oldest workers have warm connections and are least likely to be mid-start.
                for c in children.drain(n..) {
                    tracing::info!(
                        pool,
                        pool.version = version,
                        pid = c.id(),
                        "stopping surplus worker process"
                    );
                    terminate(&c);
                    self.stopping.push(c);
                }
            }
        }
        self.running.retain(|_, c| !c.is_empty());
        Ok(())
    }

    fn actual(&self) -> Option<BTreeMap<(String, String), u32>> {
        Some(self.running.iter().map(|(k, c)| (k.clone(), c.len() as u32)).collect())
    }

    async fn shutdown(&mut self) {
        let mut all: Vec<Child> = std::mem::take(&mut self.running).into_values().flatten().collect();
        all.append(&mut self.stopping);
        for c in &all {
            terminate(c);
        }
        for mut c in all {
            let _ = c.wait().await;
        }
    }
}
