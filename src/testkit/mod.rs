//! Test kit: real servers, a fresh database per test, polling with a deadline, and a TCP proxy for outages.
//!
//! Owns nothing in production: it is compiled only for tests and under the `testkit` feature.
//!
//! - Servers are discovered, never assumed: `DATABASE_URL`/`REDIS_URL` when set, else the usual local port when
//!   something answers there, else a private server started once per test run and shared by every test process
//!   (a lock file and a port file in a shared temp directory make it a singleton; it stays up for later runs).
//! - [`db`] clones a migrated template, `ordo_tpl_<hash of the migrations>`, built once under an advisory lock.
//!   Nothing stays connected to the template (it refuses connections), so cloning it never waits.
//! - A [`TestDb`] drops its database when dropped, even when the test panicked.
//! - Outage tests put a [`TcpProxy`] between ordo and the server and cut it; the shared servers are never stopped.
//! - No test waits with a fixed sleep: [`eventually`] polls a condition until a deadline.
//!
//! A missing server is a failure with a message saying how to get one, never a skipped test.

use std::future::Future;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;

use crate::db::MIGRATOR;

mod proxy;
mod roles;
mod servers;

pub use proxy::{server_addr, with_host_port, TcpProxy};
pub use roles::{login_role, LoginRole};
pub use servers::{postgres_url, redis_url};

/// Interval between two polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Advisory-lock key serialising template builds across test processes ("ordo_tpl" in ASCII).
const TEMPLATE_LOCK: i64 = 0x6f72_646f_5f74_706c;
/// Connections a test database's pool may open unless the test asks for more.
const DEFAULT_POOL_SIZE: u32 = 10;

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// A database of its own for one test, cloned from the migrated template and dropped on drop.
#[derive(Debug)]
pub struct TestDb {
    /// Database name, `ordo_t_<16 hex>`.
    pub name: String,
    /// Full URL of this database (same server and user as [`postgres_url`]).
    pub url: String,
    /// A pool on this database (10 connections unless made by [`db_with_max`]).
    pub pool: PgPool,
}

/// A fresh, migrated, empty database for one test, with a pool of at most 10 connections.
pub async fn db() -> TestDb {
    db_with_max(DEFAULT_POOL_SIZE).await
}

/// Like [`db`], for tests that need a pool of more (or fewer) than 10 connections.
pub async fn db_with_max(max: u32) -> TestDb {
    let admin = postgres_url().await;
    let template = template(&admin).await;
    let name = format!("ordo_t_{:016x}", rand::random::<u64>());
    let mut conn = admin_connection(&admin).await;
    sqlx::query(&format!(r#"create database "{name}" template "{template}""#))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("create test database {name} from template {template}: {e}"));
    let _ = conn.close().await;
    let url = with_database(&admin, &name);
    let pool = match PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await
    {
        Ok(pool) => pool,
        Err(e) => {
            drop_database(admin, name.clone());
            panic!("connect to test database {name}: {e}");
        }
    };
    TestDb { name, url, pool }
}

/// A fresh database of its own migrated only up to (not including) migration `version`: the schema an older ordo
/// left, for upgrade tests. Apply the rest with [`crate::db::migrate`] or `ordo migrate`.
pub async fn db_before_migration(version: i64) -> TestDb {
    let admin = postgres_url().await;
    let name = format!("ordo_t_{:016x}", rand::random::<u64>());
    let mut conn = admin_connection(&admin).await;
    exec(&mut conn, &format!(r#"create database "{name}""#)).await;
    let _ = conn.close().await;
    let url = with_database(&admin, &name);
    let pool = PgPoolOptions::new()
        .max_connections(DEFAULT_POOL_SIZE)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect to test database {name}: {e}"));
    let db = TestDb { name, url, pool };
    let older = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(MIGRATOR.iter().filter(|m| m.version < version).cloned().collect()),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    older
        .run(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("migrate {} up to {version}: {e}", db.name));
    db
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Set by `db_with_max` before any TestDb exists.
        if let Some(admin) = servers::known_postgres_url() {
            drop_database(admin, self.name.clone());
        }
    }
}

/// Drops `name` from a thread of its own with its own runtime: works from `Drop`, inside or outside a runtime,
/// and while a test unwinds. `with (force)` ends the connections the test's pool still holds.
fn drop_database(admin: String, name: String) {
    let worker = std::thread::spawn(move || -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("start a runtime: {e}"))?;
        runtime.block_on(async {
            let work = async {
                let mut conn = PgConnection::connect(&admin).await?;
                sqlx::query(&format!(r#"drop database if exists "{name}" with (force)"#))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            };
            match tokio::time::timeout(Duration::from_secs(30), work).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("drop test database {name}: {e}")),
                Err(_) => Err(format!("drop test database {name}: timed out")),
            }
        })
    });
    // Report, never panic: this may run while a failed test is already unwinding.
    match worker.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("testkit: {e}"),
        Err(_) => eprintln!("testkit: the thread dropping a test database panicked"),
    }
}

/// Name of the template for the current migrations: a hash of every migration's version and checksum, so a
/// changed or added migration gets a new template instead of a stale one.
fn template_name() -> String {
    let mut hash = Sha256::new();
    for migration in MIGRATOR.iter() {
        hash.update(migration.version.to_le_bytes());
        hash.update(&migration.checksum);
    }
    let digest = hex::encode(hash.finalize());
    format!("ordo_tpl_{}", &digest[..12])
}

/// The migrated template, built by the first test process that needs it.
async fn template(admin: &str) -> &'static str {
    TEMPLATE.get_or_init(|| build_template(admin)).await
}

async fn build_template(admin: &str) -> String {
    let name = template_name();
    let mut conn = admin_connection(admin).await;
    // Parallel test processes queue here; the first builds, the rest find the template done.
    sqlx::query("select pg_advisory_lock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("take the template lock: {e}"));
    let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(&name)
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("look for template {name}: {e}"));
    if !exists {
        // Built under another name and renamed when complete, so a build that died half-way is never cloned.
        let build = format!("{name}_build");
        for sql in [
            format!(r#"drop database if exists "{build}" with (force)"#),
            format!(r#"create database "{build}""#),
        ] {
            exec(&mut conn, &sql).await;
        }
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&with_database(admin, &build))
            .await
            .unwrap_or_else(|e| panic!("connect to {build}: {e}"));
        crate::db::migrate(&pool)
            .await
            .unwrap_or_else(|e| panic!("migrate template {build}: {e}"));
        // Every connection to the template must be gone before it is renamed or cloned. A closed client socket
        // leaves its server backend exiting for a moment, and on a busy machine the pool's connection has been
        // seen to outlive `close()`: end whatever is left, and wait until the server no longer lists it.
        pool.close().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left: i64 =
                sqlx::query_scalar("select count(pg_terminate_backend(pid)) from pg_stat_activity where datname = $1")
                    .bind(&build)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("count connections to {build}: {e}"));
            if left == 0 || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for sql in [
            format!(r#"alter database "{build}" rename to "{name}""#),
            format!(r#"alter database "{name}" with is_template true allow_connections false"#),
        ] {
            exec(&mut conn, &sql).await;
        }
    }
    exec(&mut conn, &format!("select pg_advisory_unlock({TEMPLATE_LOCK})")).await;
    let _ = conn.close().await;
    name
}

async fn admin_connection(admin: &str) -> PgConnection {
    PgConnection::connect(admin)
        .await
        .unwrap_or_else(|e| panic!("connect to the test PostgreSQL server: {e}"))
}

async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::query(sql)
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Polls `f` every 20 ms until it returns `Some`, and returns that value; panics once `timeout` has passed.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Sends `sig` (as `kill` spells it: `-TERM`, `-INT` or `-KILL`) to a running child process.
pub fn signal(child: &tokio::process::Child, sig: &str) {
    use crate::supervisor::{send_signal, Signal};
    let pid = child.id().expect("child is running");
    let signal = match sig {
        "-TERM" => Signal::Term,
        "-INT" => Signal::Int,
        "-KILL" => Signal::Kill,
        other => panic!("no such signal in the test kit: {other}"),
    };
    assert!(send_signal(pid, signal), "kill {sig} {pid}");
}

/// Sends SIGTERM to a child process and asserts that it exits 0 within 30 s.
pub async fn terminate(child: tokio::process::Child) {
    signal(&child, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("stops on SIGTERM")
        .expect("wait for the child")
        .status;
    assert!(status.success(), "{status:?}");
}

/// Counts jobs in `state`, waiting and finished alike.
pub async fn count_state(pool: &PgPool, state: &str) -> i64 {
    sqlx::query_scalar("select count(*) from job_all where state = $1")
        .bind(state)
        .fetch_one(pool)
        .await
        .expect("count jobs by state")
}

/// A free TCP port on 127.0.0.1 (free when asked; bind it soon).
pub fn free_port() -> u16 {
    crate::pgserver::free_port().expect("binding 127.0.0.1:0 succeeds on any test machine")
}

/// `scheme://[userinfo@]host[:port][/path][?query]`, split without decoding anything.
struct UrlParts<'a> {
    scheme: &'a str,
    /// Empty, or ending with `@`.
    userinfo: &'a str,
    host_port: &'a str,
    /// Empty, or starting with `/`, `?` or `#`.
    rest: &'a str,
}

impl<'a> UrlParts<'a> {
    fn split(url: &'a str) -> Self {
        let (scheme, after) = url
            .split_once("://")
            .unwrap_or_else(|| panic!("not a scheme://host URL: {url:?}"));
        let (authority, rest) = after.split_at(after.find(['/', '?', '#']).unwrap_or(after.len()));
        let (userinfo, host_port) = authority.split_at(authority.rfind('@').map_or(0, |at| at + 1));
        UrlParts {
            scheme,
            userinfo,
            host_port,
            rest,
        }
    }
}

/// The same URL with its path replaced by `/<database>`; the query string is kept.
fn with_database(url: &str, database: &str) -> String {
    let parts = UrlParts::split(url);
    let query = &parts.rest[parts.rest.find(['?', '#']).unwrap_or(parts.rest.len())..];
    format!(
        "{}://{}{}/{database}{query}",
        parts.scheme, parts.userinfo, parts.host_port
    )
}

/// A transaction as the API opens one for an account request (role `ordo_api`, the account set, both
/// transaction-local): what row-level security tests must run under, since a superuser bypasses it.
pub async fn api_transaction(
    pool: &PgPool,
    account: &crate::tenancy::AccountId,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    crate::api::auth::begin_tenant(pool, account)
        .await
        .expect("open a transaction as the API's role")
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    async fn database_exists(admin: &str, name: &str) -> bool {
        let mut conn = admin_connection(admin).await;
        let exists = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        exists
    }

    /// Each `db()` is its own migrated, empty database, and dropping a TestDb removes its database.
    #[tokio::test]
    async fn db_gives_distinct_migrated_databases_dropped_on_drop() {
        let a = db().await;
        let b = db().await;
        assert_ne!(a.name, b.name);
        assert!(a.name.starts_with("ordo_t_") && a.name.len() == "ordo_t_".len() + 16);
        for t in [&a, &b] {
            let jobs: i64 = sqlx::query_scalar("select count(*) from job")
                .fetch_one(&t.pool)
                .await
                .unwrap();
            assert_eq!(jobs, 0, "{} starts empty", t.name);
        }
        sqlx::query("insert into job (kind) values ('probe')")
            .execute(&a.pool)
            .await
            .unwrap();
        let in_b: i64 = sqlx::query_scalar("select count(*) from job")
            .fetch_one(&b.pool)
            .await
            .unwrap();
        assert_eq!(in_b, 0, "a row written in one test database is invisible in another");
        let (a_name, b_name) = (a.name.clone(), b.name.clone());
        let admin = postgres_url().await;
        assert!(database_exists(&admin, &a_name).await);
        drop(a);
        drop(b);
        assert!(!database_exists(&admin, &a_name).await, "{a_name} dropped");
        assert!(!database_exists(&admin, &b_name).await, "{b_name} dropped");
    }

    /// The template carries the migrations' hash, holds no connection and refuses new ones.
    #[tokio::test]
    async fn template_is_unconnectable_after_build() {
        let _t = db().await;
        let admin = postgres_url().await;
        let name = template_name();
        assert_eq!(TEMPLATE.get().map(String::as_str), Some(name.as_str()));
        let mut conn = admin_connection(&admin).await;
        let (is_template, allow_conn): (bool, bool) =
            sqlx::query_as("select datistemplate, datallowconn from pg_database where datname = $1")
                .bind(&name)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert!(is_template && !allow_conn);
        let connected: i64 = sqlx::query_scalar("select count(*) from pg_stat_activity where datname = $1")
            .bind(&name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(connected, 0);
    }

    /// The proxy forwards; `cut` breaks open connections and refuses new ones; `restore` lets new ones through.
    #[tokio::test]
    async fn proxy_cut_breaks_connections_and_restore_heals() {
        let t = db().await;
        let proxy = TcpProxy::start(server_addr(&t.url).await).await;
        let url = with_host_port(&t.url, proxy.addr());
        let mut conn = PgConnection::connect(&url).await.unwrap();
        let one: i32 = sqlx::query_scalar("select 1").fetch_one(&mut conn).await.unwrap();
        assert_eq!(one, 1);

        proxy.cut();
        let broken = tokio::time::timeout(Duration::from_secs(10), sqlx::query("select 1").execute(&mut conn)).await;
        assert!(
            matches!(broken, Ok(Err(_))),
            "a query over a cut link fails: {broken:?}"
        );
        let refused = tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&url)).await;
        assert!(matches!(refused, Ok(Err(_))), "a new connection over a cut link fails");

        proxy.restore();
        let mut fresh = PgConnection::connect(&url).await.unwrap();
        let one: i32 = sqlx::query_scalar("select 1").fetch_one(&mut fresh).await.unwrap();
        assert_eq!(one, 1);
        fresh.close().await.unwrap();
    }

    /// The Redis the kit finds answers commands.
    #[tokio::test]
    async fn redis_url_answers_ping() {
        let client = redis::Client::open(redis_url().await).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        assert_eq!(pong, "PONG");
    }

    /// `eventually` keeps polling and returns the first `Some`.
    #[tokio::test]
    async fn eventually_returns_the_first_some() {
        let calls = AtomicU32::new(0);
        let value = eventually(Duration::from_secs(10), "the third call", || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move { (n >= 3).then_some(n * 10) }
        })
        .await;
        assert_eq!(value, 30);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    /// `eventually` fails the test, naming the condition, when it never holds.
    #[tokio::test]
    #[should_panic(expected = "timed out after 100ms waiting for nothing")]
    async fn eventually_panics_after_the_timeout() {
        eventually(Duration::from_millis(100), "nothing", || async { None::<()> }).await;
    }

    /// `with_host_port` swaps only host and port; credentials, path and query survive.
    #[test]
    fn with_host_port_rewrites_only_host_and_port() {
        let v4: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let v6: SocketAddr = "[::1]:40002".parse().unwrap();
        let cases = [
            (
                "postgres://postgres@127.0.0.1:5432/postgres",
                v4,
                "postgres://postgres@127.0.0.1:40001/postgres",
            ),
            (
                "postgres://u:p%40ss@db.example:6543/app?sslmode=disable",
                v4,
                "postgres://u:p%40ss@127.0.0.1:40001/app?sslmode=disable",
            ),
            (
                "postgresql://localhost?application_name=x",
                v4,
                "postgresql://127.0.0.1:40001?application_name=x",
            ),
            ("postgres://[::1]:5432/ordo", v4, "postgres://127.0.0.1:40001/ordo"),
            ("redis://127.0.0.1:6379", v4, "redis://127.0.0.1:40001"),
            ("redis://:secret@cache:6380/2", v6, "redis://:secret@[::1]:40002/2"),
        ];
        for (url, addr, want) in cases {
            assert_eq!(with_host_port(url, addr), want, "{url}");
        }
    }

    /// Admin work and test databases keep the server, user and query of the configured URL.
    #[test]
    fn with_database_replaces_only_the_path() {
        let cases = [
            (
                "postgres://postgres@127.0.0.1:5432/ordo",
                "postgres",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            (
                "postgres://u:pw@h:1/app?sslmode=disable",
                "ordo_t_1",
                "postgres://u:pw@h:1/ordo_t_1?sslmode=disable",
            ),
            ("postgres://u@h", "postgres", "postgres://u@h/postgres"),
            ("postgres://u@h?x=1", "db", "postgres://u@h/db?x=1"),
        ];
        for (url, database, want) in cases {
            assert_eq!(with_database(url, database), want, "{url}");
        }
    }

    /// `server_addr` resolves the URL's host and port, defaulting the port by scheme.
    #[tokio::test]
    async fn server_addr_uses_the_scheme_default_port() {
        let cases = [
            ("postgres://u@127.0.0.1:6543/x", "127.0.0.1:6543"),
            ("postgres://u@127.0.0.1/x", "127.0.0.1:5432"),
            ("redis://127.0.0.1", "127.0.0.1:6379"),
            ("redis://:pw@[::1]:7000/1", "[::1]:7000"),
        ];
        for (url, want) in cases {
            assert_eq!(server_addr(url).await, want.parse::<SocketAddr>().unwrap(), "{url}");
        }
    }

    /// `free_port` returns a port that can be bound right away.
    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }
}
