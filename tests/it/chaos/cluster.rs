//! The cluster a chaos run breaks: a private PostgreSQL and Redis of its own (never the shared servers), and the
//! `ordo` role processes, each of which can be killed, stopped and started again on the same address.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use ordo::pgserver::PgServer;
use ordo::testkit::{self, eventually};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::process::{Child, Command};

use crate::support::{ordo_command, signal};

/// How long a server or a role may take to come back after a restart on a loaded 2-core machine. Generous on
/// purpose: the test asserts that it comes back, not how fast.
pub const BACK_WITHIN: Duration = Duration::from_secs(90);

/// Settings of the private server: no fsync (a crash of the server process, not of the machine, loses nothing
/// the kernel already has), and room for every role's pool.
const PG_SETTINGS: [(&str, &str); 2] = [("fsync", "off"), ("max_connections", "200")];

/// A private PostgreSQL in a directory of its own; crashed and removed on drop.
pub struct ChaosPostgres {
    server: PgServer,
    dir: PathBuf,
}

impl ChaosPostgres {
    /// Initialises and starts a server on a free port, in a new directory under the system temp dir (not under
    /// /root, so the server can run as `postgres`).
    pub fn start() -> ChaosPostgres {
        let dir = std::env::temp_dir().join(format!("ordo-chaos-pg-{:016x}", rand::random::<u64>()));
        let server = PgServer::start(&dir.join("data"), testkit::free_port(), &PG_SETTINGS)
            .unwrap_or_else(|e| panic!("start a private PostgreSQL: {e}"));
        ChaosPostgres { server, dir }
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        self.server.url(db)
    }

    /// `pg_ctl stop -m immediate`, then a start on the same data directory and port (crash recovery from the WAL).
    pub fn crash_restart(&mut self) {
        self.server
            .crash()
            .unwrap_or_else(|e| panic!("crash the private PostgreSQL: {e}"));
        self.server = PgServer::start(&self.server.data_dir, self.server.port, &PG_SETTINGS)
            .unwrap_or_else(|e| panic!("restart the private PostgreSQL after a crash: {e}"));
    }

    /// A small pool for the test's own reads; its queries fail while the server is down.
    pub async fn pool(&self, db: &str) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.url(db))
            .await
            .unwrap_or_else(|e| panic!("connect to the private PostgreSQL: {e}"))
    }
}

impl Drop for ChaosPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.server.crash() {
            eprintln!("stop the private PostgreSQL: {e}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private Redis (no persistence) on a fixed port; stopped and started again on that port.
pub struct ChaosRedis {
    port: u16,
    server: Option<Child>,
}

impl ChaosRedis {
    /// Starts a Redis on a free port of 127.0.0.1.
    pub async fn start() -> ChaosRedis {
        let mut redis = ChaosRedis {
            port: testkit::free_port(),
            server: None,
        };
        redis.up().await;
        redis
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on its port and waits until it answers.
    pub async fn up(&mut self) {
        let server = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server (Debian: apt-get install redis-server)");
        self.server = Some(server);
        let url = self.url();
        eventually(BACK_WITHIN, "the private Redis to answer PING", || {
            let url = url.clone();
            async move {
                let client = redis::Client::open(url).ok()?;
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut conn).await.ok()
            }
        })
        .await;
    }

    /// Stops the server (SIGTERM) and waits until it has exited; clients see their connections close.
    pub async fn down(&mut self) {
        let mut server = self.server.take().expect("Redis is up");
        signal(&server, "-TERM");
        tokio::time::timeout(BACK_WITHIN, server.wait())
            .await
            .expect("redis-server exits on SIGTERM")
            .expect("wait for redis-server");
    }
}

/// One `ordo` role process: its command line and environment, so it can be started again the same way.
pub struct RoleProcess {
    /// For messages: `api`, `worker v1`, ….
    pub name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    db_url: String,
    child: Child,
}

impl RoleProcess {
    /// Starts `ordo <args>` against `db_url` with `env`.
    pub fn start(name: &str, args: &[&str], db_url: &str, env: &[(&str, &str)]) -> RoleProcess {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let child = spawn(&args, db_url, &env);
        RoleProcess {
            name: name.to_owned(),
            args,
            env,
            db_url: db_url.to_owned(),
            child,
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the role process is running")
    }

    /// SIGKILL, then a new process with the same command line.
    pub async fn kill_and_restart(&mut self) {
        signal(&self.child, "-KILL");
        let _ = self.child.wait().await;
        self.child = spawn(&self.args, &self.db_url, &self.env);
    }

    /// SIGTERM, which must end in exit 0, then a new process with the same command line.
    pub async fn stop_and_restart(&mut self) {
        self.stop_and_wait().await;
        self.child = spawn(&self.args, &self.db_url, &self.env);
    }

    /// SIGTERM, and asserts that the process exits 0.
    pub async fn stop_and_wait(&mut self) {
        signal(&self.child, "-TERM");
        self.exits_zero().await;
    }

    /// Waits for the process to exit on its own and asserts that it exited 0.
    pub async fn exits_zero(&mut self) {
        let status = tokio::time::timeout(BACK_WITHIN, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit", self.name))
            .expect("wait for a role process");
        assert!(status.success(), "{} exited with {status}", self.name);
    }

    /// Asserts that the process is still running: it rode out every fault instead of exiting.
    pub fn assert_running(&mut self) {
        let exited = self.child.try_wait().expect("poll a role process");
        assert!(exited.is_none(), "{} exited during the run: {exited:?}", self.name);
    }
}

/// Starts `ordo <args>` against `db_url` with `env` (killed when the handle is dropped).
fn spawn(args: &[String], db_url: &str, env: &[(String, String)]) -> Child {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    ordo_command(&args, db_url, &[&env])
        .spawn()
        .unwrap_or_else(|e| panic!("spawn ordo {args:?}: {e}"))
}
