//! Login roles for least-privilege tests: a role of the test server, member of one of ordo's group roles (see the
//! README's "Database roles"), dropped when the test ends. Roles are server-wide, so each gets a random name.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

use super::{postgres_url, TestDb};

/// A login role of the test server; dropped on drop.
#[derive(Debug)]
pub struct LoginRole {
    /// Its name, `ordo_t_role_<16 hex>`.
    pub name: String,
    password: String,
    admin: String,
}

/// Creates a login role that is a member of `group` (e.g. `ordo_api_node`, `ordo_worker`) and nothing else: it owns
/// nothing and has no attribute beyond LOGIN. Call after [`super::db`], whose migrations create the groups.
pub async fn login_role(group: &str) -> LoginRole {
    let admin = postgres_url().await;
    let name = format!("ordo_t_role_{:016x}", rand::random::<u64>());
    let password = format!("{:032x}", rand::random::<u128>());
    let mut conn = PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("connect to the test PostgreSQL server: {e}"));
    // Identifiers and the password are generated hex: safe as literals.
    let sql = format!(r#"create role "{name}" login password '{password}' in role "{group}""#);
    sqlx::query(&sql)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("create login role in {group}: {e}"));
    let _ = conn.close().await;
    LoginRole { name, password, admin }
}

impl LoginRole {
    /// The URL of `db` as this role (for `DATABASE_URL` of an ordo process).
    pub fn url(&self, db: &TestDb) -> String {
        let parts = super::UrlParts::split(&db.url);
        format!(
            "{}://{}:{}@{}{}",
            parts.scheme, self.name, self.password, parts.host_port, parts.rest
        )
    }

    /// A pool of at most `max` connections to `db` as this role.
    pub async fn pool(&self, db: &TestDb, max: u32) -> PgPool {
        let opts = (*db.pool.connect_options())
            .clone()
            .username(&self.name)
            .password(&self.password);
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await
            .unwrap_or_else(|e| panic!("connect to {} as {}: {e}", db.name, self.name))
    }
}

impl Drop for LoginRole {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // A thread with its own runtime: works from Drop inside a runtime and while a test unwinds.
        let worker = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&admin).await.map_err(|e| e.to_string())?;
                sqlx::query(&format!(r#"drop role if exists "{name}""#))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| format!("drop role {name}: {e}"))?;
                conn.close().await.map_err(|e| e.to_string())
            })
        });
        match worker.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("testkit: {e}"),
            Err(_) => eprintln!("testkit: the thread dropping a login role panicked"),
        }
    }
}
