//! The root cancellation token and signal handling: SIGINT/SIGTERM cancel the token, every role watches a child
//! of it and stops in its own orderly way. A role's [`Supervisor`] also owns the process's own background tasks
//! (the signal and orphan watches, the metrics listener), which end with the token and are awaited when it stops.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often a process that stops with its parent looks whether the parent is still there.
const PARENT_CHECK: Duration = Duration::from_millis(200);
/// How long [`Supervisor::stop`] waits for the background tasks: they end with the token, so this only bounds a
/// listener whose last connection is slow to close.
const TASKS_STOP: Duration = Duration::from_secs(2);

/// The root of a role: the shutdown token every part of it watches, and the background tasks of the process.
#[derive(Debug)]
pub struct Supervisor {
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Supervisor {
    /// A supervisor whose token the first SIGINT or SIGTERM cancels.
    pub fn on_signals() -> Self {
        let supervisor = Supervisor {
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        let token = supervisor.token();
        supervisor.spawn(async move {
            tokio::select! {
                _ = wait_for_signal() => {
                    tracing::info!("shutdown requested");
                    token.cancel();
                }
                _ = token.cancelled() => {}
            }
        });
        supervisor
    }

    /// The token the role runs until; cancelled by a signal or by [`Supervisor::stop`].
    pub fn token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs a background task of the process; it must end once the token is cancelled.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Cancels the token once the process that started this one has exited (this process was handed to another
    /// parent), as SIGTERM would. The autoscaler's process driver starts its workers so: a worker that outlived an
    /// autoscaler killed with SIGKILL would run beside the workers of the autoscaler that replaces it, and the
    /// pool would be larger than decided.
    pub fn cancel_when_orphaned(&self) {
        #[cfg(unix)]
        {
            let token = self.token();
            let parent = std::os::unix::process::parent_id();
            self.spawn(async move {
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(PARENT_CHECK) => {}
                    }
                    if std::os::unix::process::parent_id() != parent {
                        tracing::info!(parent, "the process that started this one exited; stopping");
                        token.cancel();
                        return;
                    }
                }
            });
        }
    }

    /// Ends the role's background tasks: cancels the token and waits for them (at most [`TASKS_STOP`]).
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(TASKS_STOP, self.tasks.wait()).await.is_err() {
            tracing::warn!(tasks = self.tasks.len(), "background tasks still running at exit");
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A signal one process sends another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: an ordo role stops claiming, drains and exits 0.
    Term,
    /// SIGINT: as SIGTERM, from a terminal.
    Int,
    /// SIGKILL: gone at once, nothing cleaned up.
    Kill,
}

impl Signal {
    /// The signal's name as `kill -s` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Kill => "KILL",
        }
    }
}

/// Sends `signal` to the process `pid`; true when it was delivered. Runs the `kill` utility, present wherever ordo
/// runs: `unsafe` is forbidden in this crate, so no `libc::kill`, and no crate in the dependency tree sends a
/// signal without it.
pub fn send_signal(pid: u32, signal: Signal) -> bool {
    std::process::Command::new("kill")
        .args(["-s", signal.name(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
