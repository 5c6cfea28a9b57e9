//! An account's fair-share weight and its limits (CONTRACT §12): read and replaced by the administrator, enforced
//! by the claim (see [`super::share`]) across every worker.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::PgConnection;

use super::enqueue::account_exists;
use super::{FieldError, Result};
use crate::tenancy::AccountId;

/// The largest weight: a million to one between two accounts is already beyond any sensible share.
pub const MAX_WEIGHT: i32 = 10_000;
/// The largest `max_running` and `max_per_second`: far beyond what one cluster runs, so a bigger number is a typo.
pub const MAX_LIMIT: i32 = 1_000_000;

/// An account's weight and limits; what `PUT /api/accounts/{id}/limits` takes and `GET` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Share of each queue against the other accounts with waiting work there (default 1).
    pub weight: i32,
    /// Limits per queue.
    pub queues: BTreeMap<String, QueueLimit>,
    /// Limits per kind, in every queue.
    pub kinds: BTreeMap<String, KindLimit>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            weight: 1,
            queues: BTreeMap::new(),
            kinds: BTreeMap::new(),
        }
    }
}

/// A limit on an account's jobs of one queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueLimit {
    /// At most this many leased at once.
    pub max_running: i32,
}

/// Limits on an account's jobs of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KindLimit {
    /// At most this many leased at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_running: Option<i32>,
    /// At most this many started in any one second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_per_second: Option<i32>,
}

/// A whole number in `1..=max` at `path`, or a field error.
fn bounded(v: &Value, path: &str, max: i32, errs: &mut Vec<FieldError>) -> Option<i32> {
    match super::json_integer(v) {
        Some(n) if (1..=i64::from(max)).contains(&n) => i32::try_from(n).ok(),
        Some(_) => {
            errs.push(FieldError::new(path, format!("must be between 1 and {max}")));
            None
        }
        None => {
            errs.push(FieldError::new(path, format!("must be an integer between 1 and {max}")));
            None
        }
    }
}

/// The object at `path`, or a field error.
fn object<'v>(v: &'v Value, path: &str, errs: &mut Vec<FieldError>) -> Option<&'v Map<String, Value>> {
    let obj = v.as_object();
    if obj.is_none() {
        errs.push(FieldError::new(path, "must be an object"));
    }
    obj
}

/// Fields of `obj` other than `known` are errors: a misspelt limit must not be silently ignored.
fn no_other_fields(obj: &Map<String, Value>, known: &[&str], path: &str, errs: &mut Vec<FieldError>) {
    for name in obj.keys().filter(|k| !known.contains(&k.as_str())) {
        errs.push(FieldError::new(
            format!("{path}/{name}"),
            format!("unknown field; expected one of {known:?}"),
        ));
    }
}

/// A queue or kind name as a key of `queues` or `kinds`.
fn name_ok(name: &str, path: &str, errs: &mut Vec<FieldError>) -> bool {
    let ok = (1..=255).contains(&name.chars().count());
    if !ok {
        errs.push(FieldError::new(path, "names are 1 to 255 characters long"));
    }
    ok
}

impl Limits {
    /// Reads a `PUT` body: `{weight?, queues?: {<queue>: {max_running}}, kinds?: {<kind>: {max_running?,
    /// max_per_second?}}}`. Every problem is reported, each with its field's path.
    pub fn from_json(body: &Value) -> std::result::Result<Limits, Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut limits = Limits::default();
        let Some(obj) = object(body, "", &mut errs) else {
            return Err(errs);
        };
        no_other_fields(obj, &["weight", "queues", "kinds"], "", &mut errs);
        if let Some(w) = obj.get("weight").filter(|w| !w.is_null()) {
            limits.weight = bounded(w, "/weight", MAX_WEIGHT, &mut errs).unwrap_or(1);
        }
        if let Some(queues) = obj.get("queues").filter(|q| !q.is_null()) {
            for (queue, limit) in object(queues, "/queues", &mut errs).into_iter().flatten() {
                let path = format!("/queues/{queue}");
                let Some(limit) = object(limit, &path, &mut errs) else {
                    continue;
                };
                no_other_fields(limit, &["max_running"], &path, &mut errs);
                let max_running = match limit.get("max_running") {
                    Some(v) => bounded(v, &format!("{path}/max_running"), MAX_LIMIT, &mut errs),
                    None => {
                        errs.push(FieldError::new(format!("{path}/max_running"), "is required"));
                        None
                    }
                };
                if let (true, Some(max_running)) = (name_ok(queue, &path, &mut errs), max_running) {
                    limits.queues.insert(queue.clone(), QueueLimit { max_running });
                }
            }
        }
        if let Some(kinds) = obj.get("kinds").filter(|k| !k.is_null()) {
            for (kind, limit) in object(kinds, "/kinds", &mut errs).into_iter().flatten() {
                let path = format!("/kinds/{kind}");
                let Some(limit) = object(limit, &path, &mut errs) else {
                    continue;
                };
                no_other_fields(limit, &["max_running", "max_per_second"], &path, &mut errs);
                let field = |name: &str, errs: &mut Vec<FieldError>| {
                    limit
                        .get(name)
                        .filter(|v| !v.is_null())
                        .and_then(|v| bounded(v, &format!("{path}/{name}"), MAX_LIMIT, errs))
                };
                let max_running = field("max_running", &mut errs);
                let max_per_second = field("max_per_second", &mut errs);
                let given = |name: &str| limit.get(name).is_some_and(|v| !v.is_null());
                if !given("max_running") && !given("max_per_second") {
                    errs.push(FieldError::new(&path, "needs max_running or max_per_second"));
                    continue;
                }
                if name_ok(kind, &path, &mut errs) && (max_running.is_some() || max_per_second.is_some()) {
                    limits.kinds.insert(
                        kind.clone(),
                        KindLimit {
                            max_running,
                            max_per_second,
                        },
                    );
                }
            }
        }
        if errs.is_empty() {
            Ok(limits)
        } else {
            Err(errs)
        }
    }
}

/// The weight and limits of `account`; the defaults when none were set. An unknown account is
/// [`super::Error::UnknownAccount`].
pub async fn get_limits(conn: &mut PgConnection, account: &AccountId) -> Result<Limits> {
    account_exists(&mut *conn, account).await?;
    let weight: Option<i32> = sqlx::query_scalar("select weight from account_share where account_id = $1")
        .bind(account.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    let queues: Vec<(String, i32)> =
        sqlx::query_as("select queue, max_running from account_queue_limit where account_id = $1 order by queue")
            .bind(account.as_str())
            .fetch_all(&mut *conn)
            .await?;
    let kinds: Vec<(String, Option<i32>, Option<i32>)> = sqlx::query_as(
        "select kind, max_running, max_per_second from account_kind_limit where account_id = $1 order by kind",
    )
    .bind(account.as_str())
    .fetch_all(&mut *conn)
    .await?;
    Ok(Limits {
        weight: weight.unwrap_or(1),
        queues: queues
            .into_iter()
            .map(|(q, max_running)| (q, QueueLimit { max_running }))
            .collect(),
        kinds: kinds
            .into_iter()
            .map(|(k, max_running, max_per_second)| {
                (
                    k,
                    KindLimit {
                        max_running,
                        max_per_second,
                    },
                )
            })
            .collect(),
    })
}

/// Replaces the weight and every limit of `account` in the caller's transaction. Claims read the new limits from
/// their next statement on; jobs already running keep running (a lowered limit lets fewer start until the
/// running ones finish).
pub async fn put_limits(conn: &mut PgConnection, account: &AccountId, limits: &Limits) -> Result<Limits> {
    account_exists(&mut *conn, account).await?;
    // The share row is the lock claims of a limited account take (see share): it exists for every account that
    // ever had limits.
    sqlx::query(
        "insert into account_share (account_id, weight) values ($1, $2)
         on conflict (account_id) do update set weight = excluded.weight",
    )
    .bind(account.as_str())
    .bind(limits.weight)
    .execute(&mut *conn)
    .await?;
    let (queues, max_running): (Vec<&str>, Vec<i32>) =
        limits.queues.iter().map(|(q, l)| (q.as_str(), l.max_running)).unzip();
    for table in ["account_queue_limit", "account_kind_limit"] {
        sqlx::query(&format!("delete from {table} where account_id = $1"))
            .bind(account.as_str())
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(
        "insert into account_queue_limit (account_id, queue, max_running)
         select $1, q, m from unnest($2::text[], $3::int[]) as t(q, m)",
    )
    .bind(account.as_str())
    .bind(&queues)
    .bind(&max_running)
    .execute(&mut *conn)
    .await?;
    let kinds: Vec<&str> = limits.kinds.keys().map(String::as_str).collect();
    let kind_running: Vec<Option<i32>> = limits.kinds.values().map(|l| l.max_running).collect();
    let kind_rate: Vec<Option<i32>> = limits.kinds.values().map(|l| l.max_per_second).collect();
    sqlx::query(
        "insert into account_kind_limit (account_id, kind, max_running, max_per_second)
         select $1, k, m, r from unnest($2::text[], $3::int[], $4::int[]) as t(k, m, r)",
    )
    .bind(account.as_str())
    .bind(&kinds)
    .bind(&kind_running)
    .bind(&kind_rate)
    .execute(&mut *conn)
    .await?;
    get_limits(conn, account).await
}

/// An account's limits with what it uses of them right now: what the dashboard shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// Its weight.
    pub weight: i32,
    /// Per limited queue: its limit and the account's jobs of the queue leased now.
    pub queues: BTreeMap<String, QueueUsage>,
    /// Per limited kind: its limits, the account's jobs of the kind leased now and started in the last second.
    pub kinds: BTreeMap<String, KindUsage>,
}

/// A queue limit and its use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QueueUsage {
    /// The limit.
    pub max_running: i32,
    /// The account's jobs of the queue leased now (running, or fetched ahead by a worker).
    pub running: i64,
}

/// A kind's limits and their use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct KindUsage {
    /// The running limit, if any.
    pub max_running: Option<i32>,
    /// The rate limit, if any.
    pub max_per_second: Option<i32>,
    /// Leased now.
    pub running: i64,
    /// Started within the last second (counted for rate-limited kinds only).
    pub started_last_second: i64,
}

/// The limits of `account` with their use now. An unknown account is [`super::Error::UnknownAccount`].
pub async fn usage(conn: &mut PgConnection, account: &AccountId) -> Result<Usage> {
    let limits = get_limits(&mut *conn, account).await?;
    let rows: Vec<(bool, String, i64, i64)> = sqlx::query_as(
        r#"
        select true, l.queue,
               (select count(*) from job j
                where j.account_id = l.account_id and j.queue = l.queue and j.leased_until is not null),
               0::bigint
        from account_queue_limit l
        where l.account_id = $1
        union all
        select false, k.kind,
               (select count(*) from job j
                where j.account_id = k.account_id and j.kind = k.kind and j.leased_until is not null),
               (select coalesce(sum(s.n), 0)::bigint from account_kind_start s
                where s.account_id = k.account_id and s.kind = k.kind and s.at >= now() - interval '1 second')
        from account_kind_limit k
        where k.account_id = $1
        "#,
    )
    .bind(account.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let mut usage = Usage {
        weight: limits.weight,
        queues: BTreeMap::new(),
        kinds: BTreeMap::new(),
    };
    for (is_queue, name, running, started) in rows {
        if is_queue {
            if let Some(l) = limits.queues.get(&name) {
                let max_running = l.max_running;
                usage.queues.insert(name, QueueUsage { max_running, running });
            }
        } else if let Some(l) = limits.kinds.get(&name) {
            let kind = KindUsage {
                max_running: l.max_running,
                max_per_second: l.max_per_second,
                running,
                started_last_second: started,
            };
            usage.kinds.insert(name, kind);
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(body: Value) -> Vec<String> {
        Limits::from_json(&body)
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn reads_a_full_body() {
        let l = Limits::from_json(&json!({
            "weight": 3,
            "queues": {"default": {"max_running": 5}},
            "kinds": {"http.request": {"max_running": 20}, "webhook.deliver": {"max_per_second": 50}}
        }))
        .expect("valid");
        assert_eq!(l.weight, 3);
        assert_eq!(l.queues["default"].max_running, 5);
        assert_eq!(l.kinds["http.request"].max_running, Some(20));
        assert_eq!(l.kinds["http.request"].max_per_second, None);
        assert_eq!(l.kinds["webhook.deliver"].max_per_second, Some(50));
    }

    #[test]
    fn an_empty_body_is_the_defaults() {
        assert_eq!(Limits::from_json(&json!({})).expect("valid"), Limits::default());
    }

    #[test]
    fn negative_zero_absurd_and_misspelt_limits_name_their_field() {
        assert_eq!(paths(json!({"weight": 0})), ["/weight"]);
        assert_eq!(paths(json!({"weight": 10_001})), ["/weight"]);
        assert_eq!(paths(json!({"weight": "3"})), ["/weight"]);
        assert_eq!(
            paths(json!({"queues": {"q": {"max_running": -1}}})),
            ["/queues/q/max_running"]
        );
        assert_eq!(paths(json!({"queues": {"q": {}}})), ["/queues/q/max_running"]);
        assert_eq!(paths(json!({"queues": {"q": 5}})), ["/queues/q"]);
        assert_eq!(
            paths(json!({"kinds": {"k": {"max_per_second": 1.5}}})),
            ["/kinds/k/max_per_second"]
        );
        assert_eq!(
            paths(json!({"kinds": {"k": {"max_running": 2_000_000}}})),
            ["/kinds/k/max_running"]
        );
        assert_eq!(paths(json!({"kinds": {"k": {}}})), ["/kinds/k"]);
        assert_eq!(
            paths(json!({"kinds": {"k": {"max_runing": 3}}})),
            ["/kinds/k/max_runing", "/kinds/k"]
        );
        assert_eq!(paths(json!({"wieght": 2})), ["/wieght"]);
        assert_eq!(paths(json!([])), [""]);
        assert_eq!(paths(json!({"queues": {"": {"max_running": 1}}})), ["/queues/"]);
    }
}
