//! The servers tests use, discovered and never assumed: `DATABASE_URL`/`REDIS_URL` when set, else the usual local
//! port when something answers there, else a private server started once per test run and shared by every test
//! process (a lock file and a port file in a shared temp directory make it a singleton; it stays up for later runs).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::{free_port, with_database, POLL_INTERVAL};
use crate::pgserver::PgServer;

/// The usual local PostgreSQL, used when `DATABASE_URL` is unset and something answers there.
const LOCAL_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The usual local Redis, used when `REDIS_URL` is unset and something answers there.
const LOCAL_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Shared directory (under the system temp dir) of the private PostgreSQL: lock, port, data, log.
const PG_DIR: &str = "ordo-testkit-pg";
/// Shared directory (under the system temp dir) of the private Redis: lock, port, log.
const REDIS_DIR: &str = "ordo-testkit-redis";
/// How long a private server may take to accept connections after it was started.
const START_DEADLINE: Duration = Duration::from_secs(60);
const NO_POSTGRES: &str = "no PostgreSQL for tests: DATABASE_URL is unset, nothing answers on 127.0.0.1:5432, and \
    no private server could be started. Set DATABASE_URL=postgres://user@host:port/db, start a server on \
    127.0.0.1:5432, or install PostgreSQL (Debian: `apt-get install postgresql`)";
const NO_REDIS: &str = "no Redis for tests: REDIS_URL is unset, nothing answers on 127.0.0.1:6379, and no \
    `redis-server` was found on PATH or in /usr/bin to start a private one. Set REDIS_URL=redis://host:port, start \
    Redis on 127.0.0.1:6379, or install it (Debian: `apt-get install redis-server`)";

static POSTGRES_URL: OnceCell<String> = OnceCell::const_new();
static REDIS_URL: OnceCell<String> = OnceCell::const_new();
/// The admin URL (database `postgres`) of the PostgreSQL server tests use; discovered once per process.
pub async fn postgres_url() -> String {
    POSTGRES_URL.get_or_init(discover_postgres).await.clone()
}

/// The admin URL of the PostgreSQL server, if this process discovered it already.
pub(super) fn known_postgres_url() -> Option<String> {
    POSTGRES_URL.get().cloned()
}

/// The URL of the Redis server tests use; discovered once per process.
pub async fn redis_url() -> String {
    REDIS_URL.get_or_init(discover_redis).await.clone()
}

async fn discover_postgres() -> String {
    if let Some(url) = env_url("DATABASE_URL") {
        // Same server, user and password; admin work happens in the `postgres` database.
        return with_database(&url, "postgres");
    }
    if answers(local(5432)) {
        return LOCAL_POSTGRES_URL.to_owned();
    }
    let port = run_blocking(private_postgres).await;
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

async fn discover_redis() -> String {
    if let Some(url) = env_url("REDIS_URL") {
        return url;
    }
    if answers(local(6379)) {
        return LOCAL_REDIS_URL.to_owned();
    }
    let port = run_blocking(private_redis).await;
    format!("redis://127.0.0.1:{port}")
}

fn env_url(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|url| !url.trim().is_empty())
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Whether something accepts TCP connections on `addr` (bounded to one second).
fn answers(addr: SocketAddr) -> bool {
    StdTcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Runs blocking server management off the async threads, re-raising its panic in the caller.
async fn run_blocking<T: Send + 'static>(f: fn() -> T) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Polls `ready` until it holds or `deadline` passes; `Err` carries the reason it gave up.
fn wait_until(deadline: Duration, mut ready: impl FnMut() -> Result<bool, String>) -> Result<(), String> {
    let until = Instant::now() + deadline;
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(format!("not ready after {deadline:?}"));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The shared directory of a private server, and its lock, held until the returned file is dropped: the first
/// test process starts the server, the others wait here and then reuse it through the port file.
fn lock_shared_dir(name: &str) -> (PathBuf, File) {
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join("lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    lock_file(&lock).unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    (dir, lock)
}

fn lock_file(file: &File) -> std::io::Result<()> {
    file.lock()
}

/// The port in `dir/port` when the server recorded there still answers.
fn live_port(dir: &Path, alive: impl Fn(u16) -> bool) -> Option<u16> {
    let port = std::fs::read_to_string(dir.join("port")).ok()?.trim().parse().ok()?;
    alive(port).then_some(port)
}

fn record_port(dir: &Path, port: u16) {
    let path = dir.join("port");
    std::fs::write(&path, port.to_string()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Starts (or finds) the private PostgreSQL of this test run and returns its port. The cluster lives in the
/// shared directory and the server is left running for later test processes and runs.
fn private_postgres() -> u16 {
    let (dir, _lock) = lock_shared_dir(PG_DIR);
    if let Some(port) = live_port(&dir, |port| answers(local(port))) {
        return port;
    }
    let settings = [("fsync", "off"), ("max_connections", "300")];
    let server =
        PgServer::start(&dir.join("data"), free_port(), &settings).unwrap_or_else(|e| panic!("{NO_POSTGRES}: {e}"));
    record_port(&dir, server.port);
    server.port
}

/// Starts (or finds) the private Redis of this test run and returns its port; it is left running.
fn private_redis() -> u16 {
    let (dir, _lock) = lock_shared_dir(REDIS_DIR);
    if let Some(port) = live_port(&dir, redis_pongs) {
        return port;
    }
    let bin = redis_server_bin().unwrap_or_else(|| panic!("{NO_REDIS}"));
    let port = free_port();
    let log_path = dir.join("redis.log");
    // Errors before daemonizing go to stderr: keep them in a file, not a pipe the daemon could hold open.
    let early_path = dir.join("redis-start.log");
    let early = File::create(&early_path).unwrap_or_else(|e| panic!("create {}: {e}", early_path.display()));
    let status = Command::new(&bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "yes"])
        .arg("--dir")
        .arg(&dir)
        .arg("--logfile")
        .arg(&log_path)
        .arg("--pidfile")
        .arg(dir.join("redis.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(early)
        .status()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    if !status.success() {
        panic!("redis-server exited with {status}\n{}", tail(&early_path));
    }
    wait_until(START_DEADLINE, || Ok(redis_pongs(port)))
        .unwrap_or_else(|e| panic!("private Redis on port {port}: {e}\n{}", tail(&log_path)));
    record_port(&dir, port);
    port
}

/// Whether a Redis on 127.0.0.1:`port` answers `PING`.
fn redis_pongs(port: u16) -> bool {
    let ping = || -> std::io::Result<bool> {
        let mut stream = StdTcpStream::connect_timeout(&local(port), Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.write_all(b"PING\r\n")?;
        let mut reply = [0_u8; 7];
        stream.read_exact(&mut reply)?;
        Ok(&reply == b"+PONG\r\n")
    };
    ping().unwrap_or(false)
}

fn redis_server_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("redis-server"))
        .find(|bin| bin.is_file())
}

/// The last lines of a server log, for a panic message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let last = lines[lines.len().saturating_sub(20)..].join("\n");
    format!("--- last lines of {} ---\n{last}", path.display())
}
