//! The root cancellation token and signal handling: SIGINT/SIGTERM cancel the token, every role watches a child
//! of it and stops in its own orderly way.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often a process that stops with its parent looks whether the parent is still there.
const PARENT_CHECK: Duration = Duration::from_millis(200);

/// A token cancelled on the first SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
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

/// Cancels `token` once the process that started this one has exited (this process was handed to another parent),
/// as SIGTERM would. The autoscaler's process driver starts its workers so: a worker that outlived an autoscaler
/// killed with SIGKILL would run beside the workers of the autoscaler that replaces it, and the pool would be
/// larger than decided.
pub fn cancel_when_orphaned(token: CancellationToken) {
    #[cfg(unix)]
    {
        let parent = std::os::unix::process::parent_id();
        tokio::spawn(async move {
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
    #[cfg(not(unix))]
    let _ = token;
}
