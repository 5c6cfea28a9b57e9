//! `ordo sandbox`: the whole cluster on one machine in one command. Without `DATABASE_URL` it keeps a private
//! PostgreSQL in a data directory (`./.ordo/` by default, reused on the next start), runs migrations, creates the
//! account `demo`, and runs each role as a child process of this binary: the API, a scheduler, the autoscaler
//! (process driver), and pool `default` at two versions, `blue` and `green`. It loads the example workflows and a
//! stocked catalogue into `demo`, runs a receiver standing in for the ERP those workflows notify (`erp`), and with
//! `--demo-load` drives a stream of orders. Stopping it stops everything it
//! started.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::tenancy::AccountId;

mod erp;

/// Errors of the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The private server could not start.
    #[error(transparent)]
    Server(#[from] crate::pgserver::Error),
    /// Connecting or migrating failed.
    #[error(transparent)]
    Db(#[from] crate::db::Error),
    /// Creating the demo account failed.
    #[error(transparent)]
    Tenancy(#[from] crate::tenancy::Error),
    /// A role could not be started.
    #[error("failed to start `ordo {role}`: {source}")]
    Spawn {
        /// The role.
        role: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A role exited while the sandbox was starting.
    #[error("`ordo {0}` exited during start-up; see its output above")]
    RoleExited(String),
    /// The API did not become ready.
    #[error("the API at {url} did not become ready within 60 s: {last}")]
    NotReady {
        /// Its URL.
        url: String,
        /// The last answer or error of `/readyz`.
        last: String,
    },
    /// A setting is unusable (e.g. ORDO_CA_FILE).
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    /// File system or socket error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `ordo sandbox` flags.
#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Where the private PostgreSQL keeps its data (reused on the next start).
    #[arg(long, default_value = ".ordo")]
    pub data_dir: PathBuf,
    /// API address.
    #[arg(long, env = "ORDO_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// PostgreSQL URL; a private server in the data directory when unset.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Redis URL; the local Redis on 127.0.0.1:6379 when it answers, else workers poll.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Drive a steady stream of orders and restocks through the demo account, so the metrics move.
    #[arg(long)]
    pub demo_load: bool,
    /// HTTPS for the API (passed on to `ordo api`).
    #[command(flatten)]
    pub tls: crate::config::TlsServerConfig,
    /// The CA the sandbox trusts when it checks that the API answers over HTTPS.
    #[command(flatten)]
    pub trust: crate::config::TlsClientConfig,
}

/// The example workflows loaded into the demo account.
const EXAMPLES: [(&str, &str); 2] = [
    (
        "INVENTORY_CATALOGUE::DEFAULT",
        include_str!("../../examples/workflows/INVENTORY_CATALOGUE-DEFAULT.json"),
    ),
    ("ORDER::HD", include_str!("../../examples/workflows/ORDER-HD.json")),
];

/// SKUs the demo catalogue stocks at location `DC1`.
const DEMO_SKUS: [&str; 3] = ["SKU-1", "SKU-2", "SKU-3"];

/// What a running sandbox offers.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Base URL of the API.
    pub url: String,
    /// API key of the account `demo`.
    pub api_key: String,
    /// Admin token of this run.
    pub admin_token: String,
}

/// Runs the sandbox until `shutdown`; `on_ready` is called once everything answers.
pub async fn run(args: SandboxArgs, shutdown: CancellationToken, on_ready: impl FnOnce(&Ready)) -> Result<(), Error> {
    let mut private = None;
    let database_url = match &args.database_url {
        Some(u) => u.clone(),
        None => {
            let dir = server_data_dir(&args.data_dir)?;
            let port = stored_port(&args.data_dir, "port")?;
            let server = crate::pgserver::PgServer::start(&dir, port, &[("max_connections", "200")])?;
            let url = server.url("postgres");
            private = Some(server);
            url
        }
    };
    // The sandbox's own tasks (log relays, the demo ERP receiver, the demo load): all end once the roles exited
    // and `shutdown` fired, and are awaited before the private server stops.
    let tasks = TaskTracker::new();
    let shutdown = shutdown.child_token();
    let result = run_cluster(&args, &database_url, shutdown.clone(), &tasks).await;
    let result = match result {
        Ok((ready, children, stop)) => {
            on_ready(&ready);
            if args.demo_load {
                tasks.spawn(demo_load(database_url.clone(), stop.clone()));
            }
            stop.cancelled().await;
            stop_children(children).await;
            Ok(())
        }
        Err(e) => Err(e),
    };
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    if let Some(server) = private {
        if let Err(e) = server.stop() {
            tracing::warn!("failed to stop the private postgres: {e}");
        }
    }
    result
}

/// Where the private server keeps its data: `<data dir>/postgres`. As root, the server runs as `postgres`, which
/// cannot enter a directory only root may enter (a `mktemp -d` directory, a project under `/root`); then the data
/// lives in `/var/lib/ordo/sandbox-<hash of the data dir's path>` and `<data dir>/postgres` is a symbolic link to
/// it, so the next start from the same directory finds the same data.
fn server_data_dir(data_dir: &std::path::Path) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(data_dir)?;
    let link = data_dir.join("postgres");
    if let Ok(target) = std::fs::read_link(&link) {
        return Ok(target);
    }
    let data_dir = data_dir.canonicalize()?;
    if link.exists() || crate::pgserver::server_user_can_reach(&data_dir) {
        return Ok(link);
    }
    use sha2::Digest;
    let hash = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let hex: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let home = PathBuf::from("/var/lib/ordo");
    std::fs::create_dir_all(&home)?;
    {
        use std::os::unix::fs::PermissionsExt;
        // Only the way in must be open to `postgres`; the data directory itself is its own, mode 0700.
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755))?;
    }
    let target = home.join(format!("sandbox-{hex}"));
    std::os::unix::fs::symlink(&target, &link)?;
    tracing::info!(data = %target.display(), link = %link.display(),
        "the data directory is not reachable by the postgres user; keeping the server's data outside it");
    Ok(target)
}

/// The port of the private server: kept in the data directory so the URL stays the same between runs when it
/// can, a fresh free one when it is taken.
fn stored_port(dir: &std::path::Path, name: &str) -> Result<u16, Error> {
    std::fs::create_dir_all(dir)?;
    let file = dir.join(name);
    if let Some(p) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
    {
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return Ok(p);
        }
    }
    let p = crate::pgserver::free_port()?;
    std::fs::write(&file, p.to_string())?;
    Ok(p)
}

async fn run_cluster(
    args: &SandboxArgs,
    database_url: &str,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<(Ready, Vec<(String, Child)>, CancellationToken), Error> {
    let pool = crate::db::connect(database_url, 2).await?;
    crate::db::migrate(&pool).await?;
    // Encryption at rest is on in the sandbox, with a master key of its own kept beside the admin token.
    let master_keys = match read_secret(&args.data_dir, MASTER_KEYS_FILE) {
        Some(k) => k,
        None => {
            use base64::Engine;
            use rand::RngCore;
            let mut key = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut key);
            let k = format!("sandbox:{}", base64::engine::general_purpose::STANDARD.encode(key));
            write_secret(&args.data_dir, MASTER_KEYS_FILE, &k)?;
            k
        }
    };
    let masters = master_keys
        .parse::<crate::crypt::MasterKeys>()
        .map_err(|e| std::io::Error::other(format!("{MASTER_KEYS_FILE} in the data directory: {e}")))?;
    crate::crypt::install(Some(masters), &pool);
    let demo = AccountId::parse("demo").map_err(|e| std::io::Error::other(e.to_string()))?;
    let api_key = demo_key(&pool, &demo, &args.data_dir).await?;
    // The example workflow notifies an ERP: a receiver here stands in for it, so its deliveries succeed.
    let erp_port = stored_port(&args.data_dir, "erp_port")?;
    let erp = tokio::net::TcpListener::bind(("127.0.0.1", erp_port)).await?;
    let erp_url = format!("http://127.0.0.1:{erp_port}{}", erp::PATH);
    let secret = crate::tenancy::webhook_secret(&pool, &demo).await?;
    let stop_erp = shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) = erp::serve(erp, secret, stop_erp).await {
            tracing::warn!(error = %e, "the demo ERP receiver stopped");
        }
    });
    demo_data(&pool, &demo, &erp_url).await?;
    pool.close().await;
    let admin_token = match read_secret(&args.data_dir, ADMIN_TOKEN_FILE) {
        Some(t) => t,
        None => {
            let t = crate::tenancy::generate_key();
            write_secret(&args.data_dir, ADMIN_TOKEN_FILE, &t)?;
            t
        }
    };
    let redis_url = match &args.redis_url {
        Some(u) => Some(u.clone()),
        None => local_redis().await,
    };

    let exe = std::env::current_exe()?;
    let mut env: Vec<(&str, String)> = vec![
        ("DATABASE_URL", database_url.to_owned()),
        ("ORDO_LISTEN", args.listen.clone()),
        ("ORDO_ADMIN_TOKEN", admin_token.clone()),
        ("ORDO_MASTER_KEYS", master_keys),
        // Demo webhooks go to receivers on this machine.
        ("ORDO_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
        // One API node and no load balancer: nobody to drain towards, so Ctrl-C stops it at once.
        ("ORDO_API_DRAIN_MS", "0".to_owned()),
    ];
    if let Some(r) = &redis_url {
        env.push(("REDIS_URL", r.clone()));
    }
    if let Some((cert, key)) = args.tls.files() {
        env.push(("ORDO_TLS_CERT", cert.display().to_string()));
        env.push(("ORDO_TLS_KEY", key.display().to_string()));
    }
    let scheme = if args.tls.files().is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", args.listen);
    let http = args
        .trust
        .http_client()?
        .no_proxy()
        .timeout(PROBE_TIMEOUT)
        .build()
        .map_err(std::io::Error::other)?;
    let roles: [(&str, &[&str]); 5] = [
        ("api", &["api"]),
        ("scheduler", &["scheduler"]),
        ("autoscaler", &["autoscaler", "--driver", "process"]),
        ("worker blue", &["worker", "--pool", "default", "--version", "blue"]),
        ("worker green", &["worker", "--pool", "default", "--version", "green"]),
    ];
    let mut children = Vec::new();
    for (name, argv) in roles {
        let mut c = Command::new(&exe);
        c.args(argv).stdin(Stdio::null()).kill_on_drop(true);
        if redis_url.is_none() {
            c.env_remove("REDIS_URL");
        }
        for (k, v) in &env {
            c.env(k, v);
        }
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|source| Error::Spawn {
            role: name.to_owned(),
            source,
        })?;
        prefix_output(name, &mut child, tasks);
        children.push((name.to_owned(), child));
    }
    if let Err(e) = wait_ready(&http, &url, &mut children, &shutdown).await {
        stop_children(children).await;
        return Err(e);
    }
    Ok((
        Ready {
            url,
            api_key,
            admin_token,
        },
        children,
        shutdown,
    ))
}

/// Five roles log at once: each line of a child's output goes to this process's stderr with the role in front,
/// so one can tell them apart.
fn prefix_output(role: &str, child: &mut Child, tasks: &TaskTracker) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let prefix = format!("{role:>12} | ");
    let out = child
        .stdout
        .take()
        .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>);
    let err = child
        .stderr
        .take()
        .map(|e| Box::new(e) as Box<dyn tokio::io::AsyncRead + Send + Unpin>);
    for stream in [out, err].into_iter().flatten() {
        let prefix = prefix.clone();
        // Ends by itself when the child closes its end (it exited).
        tasks.spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{prefix}{line}");
            }
        });
    }
}

/// File in the data directory keeping the admin token across restarts.
const ADMIN_TOKEN_FILE: &str = "admin_token";
/// The sandbox's `ORDO_MASTER_KEYS`, generated on the first run.
const MASTER_KEYS_FILE: &str = "master_keys";
/// File in the data directory keeping the demo account's API key across restarts.
const API_KEY_FILE: &str = "api_key";

/// A secret kept in the data directory, if there is one.
fn read_secret(dir: &std::path::Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Keeps a secret in the data directory, readable by its owner only.
fn write_secret(dir: &std::path::Path, name: &str, value: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join(name))?;
    writeln!(f, "{value}")?;
    Ok(())
}

/// The demo account's key: the one kept in the data directory while it still works, so scripts and the CLI
/// keep working across restarts; else a new one (creating the account on first start), kept for next time.
async fn demo_key(pool: &sqlx::PgPool, demo: &AccountId, dir: &std::path::Path) -> Result<String, Error> {
    if let Some(key) = read_secret(dir, API_KEY_FILE) {
        let owner = crate::tenancy::find_key(pool, &crate::tenancy::hash_key(&key)).await?;
        if owner.is_some_and(|o| &o.account == demo) {
            return Ok(key);
        }
    }
    let mut tx = pool.begin().await.map_err(crate::tenancy::Error::from)?;
    let (key, action, target) = match crate::tenancy::create_account(&mut *tx, demo, "Demo", "local").await {
        Ok(created) => (created.api_key, "account.create", demo.to_string()),
        // The account exists (its data was kept) but its key was not: give it a new one.
        Err(crate::tenancy::Error::AccountExists(_)) => {
            let key = crate::tenancy::create_key(&mut *tx, demo).await?;
            (key.api_key, "key.create", format!("{demo}/{}", key.key_id))
        }
        Err(e) => return Err(e.into()),
    };
    crate::audit::record(&mut tx, crate::audit::Actor::Sandbox, action, &target)
        .await
        .map_err(crate::tenancy::Error::from)?;
    tx.commit().await.map_err(crate::tenancy::Error::from)?;
    write_secret(dir, API_KEY_FILE, &key)?;
    Ok(key)
}

/// Loads the example workflows (with `erp_url` pointing at the sandbox's receiver; an unchanged one keeps its
/// version), the catalogue `MAIN` and its stock, so an order of `SKU-1` at `DC1` books right away.
async fn demo_data(pool: &sqlx::PgPool, demo: &AccountId, erp_url: &str) -> Result<(), Error> {
    use crate::orchestration::{self, NewEntity, NewEvent};
    let rules = ordo_workers::rules::registry();
    for (reference, text) in EXAMPLES {
        let mut conn = pool.acquire().await.map_err(crate::db::Error::from)?;
        let mut body: serde_json::Value = serde_json::from_str(text).map_err(std::io::Error::other)?;
        if let Some(url) = body.pointer_mut("/settings/erp_url") {
            *url = serde_json::Value::from(erp_url);
        }
        // Unchanged since the last start: no new version (a changed receiver port makes a new minor one).
        orchestration::put_workflow(&mut conn, demo, reference, &body, false, &rules)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    let q = crate::queue::Queue::new(pool.clone(), crate::wake::Waker::disabled());
    match orchestration::create_entity(&q, demo, NewEntity::new("INVENTORY_CATALOGUE", "DEFAULT", "MAIN")).await {
        Ok(_) | Err(orchestration::Error::EntityExists(_)) => {}
        Err(e) => return Err(std::io::Error::other(e.to_string()).into()),
    }
    for sku in DEMO_SKUS {
        let restock = NewEvent::new("Restock", "INVENTORY_CATALOGUE", "MAIN")
            .attributes(serde_json::json!({"sku_ref": sku, "location_ref": "DC1", "on_hand": 1000}));
        orchestration::send_event(&q, demo, restock)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    Ok(())
}

/// `--demo-load`: an order every 200 ms, each picked and shipped two seconds later, a restock and an inventory
/// batch into the load [`DEMO_LOAD`] every five seconds, until the sandbox stops.
async fn demo_load(database_url: String, stop: CancellationToken) {
    use crate::orchestration::{self, NewEntity, NewEvent};
    let Ok(pool) = crate::db::connect(&database_url, 2).await else {
        tracing::warn!("demo load could not connect; no demo traffic");
        return;
    };
    let Ok(demo) = AccountId::parse("demo") else { return };
    let q = crate::queue::Queue::new(pool, crate::wake::Waker::disabled());
    let run = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(DEMO_EVENT_EVERY) => {}
        }
        n += 1;
        let sku = DEMO_SKUS[(n % 3) as usize];
        let order = format!("demo-{run}-{n}");
        let attrs = serde_json::json!({"sku": sku, "location": "DC1", "qty": 1 + n % 3});
        let _ = orchestration::create_entity(&q, &demo, NewEntity::new("ORDER", "HD", &order).attributes(attrs)).await;
        // Pick and ship the order of two seconds ago: booked by now (its reservation has come back).
        if n > 10 {
            let previous = format!("demo-{run}-{}", n - 10);
            for name in ["Pick", "Ship"] {
                let _ = orchestration::send_event(&q, &demo, NewEvent::new(name, "ORDER", &previous)).await;
            }
        }
        if n.is_multiple_of(25) {
            let restock = NewEvent::new("Restock", "INVENTORY_CATALOGUE", "MAIN")
                .attributes(serde_json::json!({"sku_ref": sku, "location_ref": "DC1", "on_hand": 1000}));
            let _ = orchestration::send_event(&q, &demo, restock).await;
        }
        if n % 25 == 1 {
            if let Err(e) = demo_inventory_batch(q.pool(), &demo, n).await {
                tracing::warn!(error = %e, "demo inventory batch refused");
            }
            q.waker().wake(crate::load::QUEUE);
        }
    }
}

/// Name of the load `--demo-load` feeds (one per UTC day, as loads are).
pub const DEMO_LOAD: &str = "demo-inventory";

/// One inventory batch into today's demo load: the demo SKUs at the warehouses `DC2` and `DC3` (orders reserve
/// at `DC1`), with quantities that drift so some records change and some do not.
async fn demo_inventory_batch(pool: &sqlx::PgPool, demo: &AccountId, n: u64) -> Result<(), crate::load::Error> {
    use crate::load::store;
    let now = chrono::Utc::now();
    let load_id = match store::create_load(pool, demo, DEMO_LOAD, now).await {
        Ok(l) => l.id,
        Err(crate::load::Error::LoadExists { id, .. }) => id,
        Err(e) => return Err(e),
    };
    let records: Vec<serde_json::Value> = DEMO_SKUS
        .iter()
        .enumerate()
        .flat_map(|(i, sku)| {
            ["DC2", "DC3"].into_iter().map(move |loc| {
                serde_json::json!({"sku_ref": sku, "location_ref": loc, "qty": 100 + (n / 25 + i as u64) % 3})
            })
        })
        .collect();
    let batch = store::NewBatch {
        fingerprint: crate::queue::fingerprint(&serde_json::Value::Array(records.clone())),
        records,
        idempotency_key: None,
    };
    let mut tx = pool.begin().await.map_err(crate::load::Error::from)?;
    store::create_batch(&mut tx, demo, &load_id, &batch, now).await?;
    tx.commit().await.map_err(crate::load::Error::from)?;
    Ok(())
}

async fn local_redis() -> Option<String> {
    let up = tokio::time::timeout(REDIS_PROBE_TIMEOUT, tokio::net::TcpStream::connect("127.0.0.1:6379")).await;
    matches!(up, Ok(Ok(_))).then(|| "redis://127.0.0.1:6379".to_owned())
}

/// Polls `/readyz` until it answers 200, failing early if a role exits.
async fn wait_ready(
    http: &reqwest::Client,
    url: &str,
    children: &mut [(String, Child)],
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        for (name, child) in children.iter_mut() {
            if let Ok(Some(_)) = child.try_wait() {
                return Err(Error::RoleExited(name.clone()));
            }
        }
        let last = match http.get(format!("{url}/readyz")).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => crate::tls::error_chain(&e),
        };
        if Instant::now() > deadline || shutdown.is_cancelled() {
            return Err(Error::NotReady {
                url: url.to_owned(),
                last,
            });
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// How long a probe of a role the sandbox started may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the demo sends an event: a few a second, enough to watch the dashboard move.
const DEMO_EVENT_EVERY: Duration = Duration::from_millis(200);
/// How long finding a Redis on its default port may take before the sandbox starts its own.
const REDIS_PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// How long the roles have to become ready, and how often they are asked.
const READY_WITHIN: Duration = Duration::from_secs(60);
const READY_POLL: Duration = Duration::from_millis(100);
/// How long a role may take to drain and exit after SIGTERM before it is killed: a worker's default drain (25 s)
/// and its flush fit in it.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// SIGTERM to every role, then wait for each (they drain and exit 0); SIGKILL after 30 s.
async fn stop_children(children: Vec<(String, Child)>) {
    for (_, c) in &children {
        if let Some(pid) = c.id() {
            crate::supervisor::send_signal(pid, crate::supervisor::Signal::Term);
        }
    }
    for (name, mut c) in children {
        match tokio::time::timeout(STOP_GRACE, c.wait()).await {
            Ok(Ok(status)) if !status.success() => tracing::warn!(role = %name, %status, "role exited with an error"),
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(role = %name, "role did not stop within {STOP_GRACE:?}; killing it");
                let _ = c.kill().await;
            }
        }
    }
}
