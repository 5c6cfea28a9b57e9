//! A private PostgreSQL server started from the local binaries, for `ordo bench`, `ordo sandbox` and the test kit
//! when no `DATABASE_URL` is given. `initdb` and `postgres` refuse to run as root, so as root they run as the
//! `postgres` user, with a data directory that user owns.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Errors starting or stopping a private server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No PostgreSQL binaries were found.
    #[error(
        "no PostgreSQL server binaries found (looked at $PG_BIN, `pg_config --bindir`, /usr/lib/postgresql/*/bin): \
         install PostgreSQL (e.g. `apt-get install postgresql`) or set DATABASE_URL to a running server"
    )]
    NoBinaries,
    /// A command failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// What ran.
        command: String,
        /// Its error output.
        detail: String,
    },
    /// The server did not accept connections in time.
    #[error("postgres in {dir} did not start within {secs} s; see {dir}/postgres.log")]
    Timeout {
        /// Data directory.
        dir: String,
        /// Seconds waited.
        secs: u64,
    },
    /// File system error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running private server; stopped by [`PgServer::stop`] (not on drop: the test kit shares one across
/// processes).
#[derive(Debug, Clone)]
pub struct PgServer {
    /// Directory holding the cluster.
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    bin_dir: PathBuf,
}

/// Finds the server binaries: `$PG_BIN`, then `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> Result<PathBuf, Error> {
    let has_initdb = |p: &Path| p.join("initdb").is_file() && p.join("pg_ctl").is_file();
    if let Some(p) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        if has_initdb(&p) {
            return Ok(p);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_initdb(&p) {
            return Ok(p);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v: u32 = e.file_name().to_string_lossy().parse().ok()?;
                    let bin = e.path().join("bin");
                    has_initdb(&bin).then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|(_, p)| p).ok_or(Error::NoBinaries)
}
/// How long a server has to accept connections after it started, and how often it is tried.
const START_WITHIN: Duration = Duration::from_secs(60);
const START_POLL: Duration = Duration::from_millis(50);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

fn is_root() -> bool {
    // The effective uid without libc: /proc/self/status has "Uid: real effective ...".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs a server binary, as the `postgres` user when we are root.
fn pg_command(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

/// Whether the user the server runs as can reach `dir` (search every directory on the way): always when we are
/// not root; as root the server runs as `postgres`, which cannot enter a directory only root may enter.
pub fn server_user_can_reach(dir: &Path) -> bool {
    if !is_root() {
        return true;
    }
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Hands `path` (recursively) to the user the server runs as, when we are root, so it can read or write there
/// (its data directory; certificate and key files, which PostgreSQL wants owned by itself).
pub fn give_to_server_user(path: &Path) -> Result<(), Error> {
    if !is_root() {
        return Ok(());
    }
    run({
        let mut c = Command::new("chown");
        c.args(["-R", "postgres:postgres"]).arg(path);
        c
    })
}

fn run(mut cmd: Command) -> Result<(), Error> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: format!("{cmd:?}"),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ),
        })
    }
}

impl PgServer {
    /// Initialises `data_dir` if it holds no cluster yet, then starts a server on `port` with the given settings
    /// (`name=value`), waiting until it accepts connections. A server already running there is reused.
    pub fn start(data_dir: &Path, port: u16, settings: &[(&str, &str)]) -> Result<PgServer, Error> {
        let bin_dir = find_bin_dir()?;
        std::fs::create_dir_all(data_dir)?;
        let data_dir = data_dir.canonicalize()?;
        give_to_server_user(&data_dir)?;
        let server = PgServer {
            data_dir: data_dir.clone(),
            port,
            bin_dir: bin_dir.clone(),
        };
        if !data_dir.join("PG_VERSION").exists() {
            run({
                let mut c = pg_command(&bin_dir.join("initdb"));
                c.args(["-D"])
                    .arg(&data_dir)
                    .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
                c
            })?;
        }
        if server.accepts() {
            return Ok(server);
        }
        let mut opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            data_dir.display()
        );
        for (k, v) in settings {
            opts.push_str(&format!(" -c {k}={v}"));
        }
        run({
            let mut c = pg_command(&bin_dir.join("pg_ctl"));
            c.args(["-D"])
                .arg(&data_dir)
                .args(["-l"])
                .arg(data_dir.join("postgres.log"))
                .args(["-o", &opts, "-w", "-t", "60", "start"]);
            c
        })?;
        let deadline = Instant::now() + START_WITHIN;
        while !server.accepts() {
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    dir: data_dir.display().to_string(),
                    secs: 60,
                });
            }
            std::thread::sleep(START_POLL);
        }
        Ok(server)
    }

    /// Whether something accepts TCP connections on the port.
    pub fn accepts(&self) -> bool {
        std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), CONNECT_TIMEOUT).is_ok()
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Stops the server as a crash would (immediate shutdown: no checkpoint, so the next start recovers from the
    /// WAL), for tests that crash-restart PostgreSQL under load; start it again with [`PgServer::start`].
    pub fn crash(&self) -> Result<(), Error> {
        run({
            let mut c = pg_command(&self.bin_dir.join("pg_ctl"));
            c.args(["-D"])
                .arg(&self.data_dir)
                .args(["-m", "immediate", "-w", "stop"]);
            c
        })
    }

    /// Stops the server (fast shutdown: clients are disconnected, data is kept).
    pub fn stop(&self) -> Result<(), Error> {
        run({
            let mut c = pg_command(&self.bin_dir.join("pg_ctl"));
            c.args(["-D"]).arg(&self.data_dir).args(["-m", "fast", "-w", "stop"]);
            c
        })
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
