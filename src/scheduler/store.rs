//! The `schedule` table: create, read, change and delete schedules, and the scheduler's fire bookkeeping. Every
//! function takes the account and an executor, so the API can run them inside its account-scoped transaction.

use chrono::{DateTime, Utc};
use ordo_workers::rules::EntityKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};

use super::{Error, Result, Timetable};
use crate::orchestration::NewEvent;
use crate::queue::{FieldError, NewJob};
use crate::tenancy::AccountId;

/// The job a tick enqueues, as `POST /api/jobs` takes it, without `run_at` and `idempotency_key` (the tick sets
/// both). Absent fields stay absent, so the stored spec is what the caller sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = ScheduledJob)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Handler kind.
    pub kind: String,
    /// Handler arguments.
    #[serde(default = "empty_object")]
    pub args: Value,
    /// Queue (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// 0..=9, 0 first (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i16>,
    /// Attempts allowed (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i32>,
    /// Per-job timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<i32>,
    /// Ordered-exclusion key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

impl JobSpec {
    /// A spec of `kind` with `args` and every other field left to the queue's defaults.
    pub fn new(kind: impl Into<String>, args: Value) -> Self {
        JobSpec {
            kind: kind.into(),
            args,
            queue: None,
            priority: None,
            max_attempts: None,
            timeout_ms: None,
            concurrency_key: None,
        }
    }

    /// The job without its tick: the queue's defaults filled in.
    pub fn to_new_job(&self) -> NewJob {
        let mut job = NewJob::new(self.kind.clone(), self.args.clone());
        if let Some(q) = &self.queue {
            job.queue = q.clone();
        }
        if let Some(p) = self.priority {
            job.priority = p;
        }
        if let Some(m) = self.max_attempts {
            job.max_attempts = m;
        }
        job.timeout_ms = self.timeout_ms;
        job.concurrency_key = self.concurrency_key.clone();
        job
    }
}

/// The orchestration event a tick sends, as `POST /api/events` takes it, without `scheduled_at` and
/// `idempotency_key` (the tick sets both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = ScheduledEvent)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    /// Event name.
    pub name: String,
    /// The entity it is sent to, `{"type": ..., "ref": ...}` (it must exist when the tick fires).
    #[schema(value_type = Object)]
    pub entity: EntityKey,
    /// Attributes (an object).
    #[serde(default = "empty_object")]
    pub attributes: Value,
}

impl EventSpec {
    /// An event `name` for the entity `entity_type`/`entity_ref`, with no attributes.
    pub fn new(name: impl Into<String>, entity_type: impl Into<String>, entity_ref: impl Into<String>) -> Self {
        EventSpec {
            name: name.into(),
            entity: EntityKey {
                entity_type: entity_type.into(),
                entity_ref: entity_ref.into(),
            },
            attributes: empty_object(),
        }
    }

    fn validate(&self, errs: &mut Vec<FieldError>) {
        if self.name.is_empty() || self.name.len() > 255 {
            errs.push(FieldError::new("/event/name", "must be 1 to 255 characters"));
        }
        if self.entity.entity_type.is_empty() {
            errs.push(FieldError::new("/event/entity/type", "must not be empty"));
        }
        if self.entity.entity_ref.is_empty() {
            errs.push(FieldError::new("/event/entity/ref", "must not be empty"));
        }
        if !self.attributes.is_object() {
            errs.push(FieldError::new("/event/attributes", "must be an object"));
        }
    }
}

/// What a tick fires. Serialised tagged: `{"job": {...}}` or `{"event": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Target {
    /// Enqueue a job.
    Job(JobSpec),
    /// Send an orchestration event.
    Event(EventSpec),
}

impl Target {
    /// The job a job target enqueues for `tick` of the schedule `name`: `run_at` = the tick and the tick's unique
    /// idempotency key. `None` for other targets.
    pub fn job_for_tick(&self, name: &str, tick: DateTime<Utc>) -> Option<NewJob> {
        match self {
            Target::Job(spec) => Some(spec.to_new_job().run_at(tick).idempotency_key(tick_key(name, tick))),
            Target::Event(_) => None,
        }
    }

    /// The event an event target sends for `tick` of the schedule `name`: `scheduled_at` = the tick (already
    /// due, so it is pending at once) and the tick's unique idempotency key. `None` for other targets.
    pub fn event_for_tick(&self, name: &str, tick: DateTime<Utc>) -> Option<NewEvent> {
        match self {
            Target::Event(spec) => {
                let mut e = NewEvent::new(&spec.name, &spec.entity.entity_type, &spec.entity.entity_ref)
                    .attributes(spec.attributes.clone())
                    .scheduled_at(tick);
                e.idempotency_key = Some(tick_key(name, tick));
                Some(e)
            }
            Target::Job(_) => None,
        }
    }

    fn validate(&self, errs: &mut Vec<FieldError>) {
        match self {
            Target::Job(spec) => {
                if let Err(v) = spec.to_new_job().validate() {
                    errs.extend(
                        v.into_iter()
                            .map(|e| FieldError::new(format!("/job{}", e.path), e.message)),
                    );
                }
            }
            Target::Event(spec) => spec.validate(errs),
        }
    }
}

/// The idempotency key of one tick: `schedule:<name>:<tick as RFC 3339 UTC>`, whole seconds unless the tick has
/// a fraction.
pub fn tick_key(name: &str, tick: DateTime<Utc>) -> String {
    format!(
        "schedule:{name}:{}",
        tick.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    )
}

/// A schedule as stored, and as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Schedule {
    /// Owning account.
    #[serde(skip)]
    pub account_id: AccountId,
    /// Unique per account; part of every tick's idempotency key.
    pub name: String,
    /// The expression as given: 5 fields, or 6 with leading seconds.
    pub cron: String,
    /// IANA time zone the expression is read in.
    pub timezone: String,
    /// What each tick fires; appears in JSON as its tag (`"job": {...}`).
    #[serde(flatten)]
    pub target: Target,
    /// Paused schedules do not fire and have no next tick.
    pub paused: bool,
    /// The next tick to fire; null while paused or when the expression never matches again.
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The latest tick fired.
    pub last_fired_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Time of the latest change by a user (firing does not count).
    pub updated_at: DateTime<Utc>,
}

impl Schedule {
    /// The parsed expression and zone.
    pub fn timetable(&self) -> Result<Timetable> {
        Timetable::new(&self.cron, &self.timezone).map_err(|e| Error::Corrupt {
            name: self.name.clone(),
            message: e.to_string(),
        })
    }
}

/// A schedule to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSchedule {
    /// Unique per account: 1 to 128 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// 5 or 6 fields.
    pub cron: String,
    /// IANA name; `UTC` by default.
    pub timezone: String,
    /// What each tick fires.
    pub target: Target,
    /// Created paused.
    pub paused: bool,
}

impl NewSchedule {
    /// An active UTC schedule.
    pub fn new(name: impl Into<String>, cron: impl Into<String>, target: Target) -> Self {
        NewSchedule {
            name: name.into(),
            cron: cron.into(),
            timezone: "UTC".to_owned(),
            target,
            paused: false,
        }
    }

    /// Sets the time zone.
    pub fn timezone(mut self, tz: impl Into<String>) -> Self {
        self.timezone = tz.into();
        self
    }

    /// Creates it paused.
    pub fn paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }
}

/// A partial change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScheduleUpdate {
    /// New expression.
    pub cron: Option<String>,
    /// New time zone.
    pub timezone: Option<String>,
    /// New target.
    pub target: Option<Target>,
    /// Pause (`true`) or resume (`false`).
    pub paused: Option<bool>,
}

/// Checks every field, naming each bad one, and returns the parsed timetable. An expression with no tick after
/// `now` (say `0 0 30 2 *`) is refused too: it would sit in the table and never fire.
fn validate(name: &str, cron: &str, timezone: &str, target: &Target, now: DateTime<Utc>) -> Result<Timetable> {
    let mut errs = Vec::new();
    let name_ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !name_ok {
        errs.push(FieldError::new(
            "/name",
            "must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-'",
        ));
    }
    let timetable = match Timetable::new(cron, timezone) {
        Ok(t) if t.next_after(now).is_none() => {
            errs.push(FieldError::new("/cron", "never matches a future time"));
            None
        }
        Ok(t) => Some(t),
        Err(Error::Invalid(v)) => {
            errs.extend(v);
            None
        }
        Err(e) => return Err(e),
    };
    target.validate(&mut errs);
    match timetable {
        Some(t) if errs.is_empty() => Ok(t),
        _ => Err(Error::Invalid(errs.into())),
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    account_id: String,
    name: String,
    cron: String,
    timezone: String,
    target: Json<Target>,
    paused: bool,
    next_fire_at: Option<DateTime<Utc>>,
    last_fired_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "account_id, name, cron, timezone, target, paused, next_fire_at, last_fired_at, created_at, updated_at";

impl TryFrom<Row> for Schedule {
    type Error = Error;
    fn try_from(r: Row) -> Result<Self> {
        let account_id = AccountId::parse(&r.account_id).map_err(|e| Error::Corrupt {
            name: r.name.clone(),
            message: e.to_string(),
        })?;
        Ok(Schedule {
            account_id,
            name: r.name,
            cron: r.cron,
            timezone: r.timezone,
            target: r.target.0,
            paused: r.paused,
            next_fire_at: r.next_fire_at,
            last_fired_at: r.last_fired_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

fn rows(rows: Vec<Row>) -> Result<Vec<Schedule>> {
    rows.into_iter().map(Schedule::try_from).collect()
}

/// Creates a schedule, its first tick the first after `now` (none while paused). A name already used in the
/// account is [`Error::Conflict`]; invalid fields are [`Error::Invalid`], naming each.
pub async fn create<'e>(
    exec: impl PgExecutor<'e>,
    account: &AccountId,
    new: &NewSchedule,
    now: DateTime<Utc>,
) -> Result<Schedule> {
    let timetable = validate(&new.name, &new.cron, &new.timezone, &new.target, now)?;
    let next = if new.paused { None } else { timetable.next_after(now) };
    // `on conflict do nothing` against the primary key: a concurrent create of the same name waits for the first
    // to commit and then sees the conflict, without check-then-insert.
    let row: Option<Row> = sqlx::query_as(&format!(
        r#"
        insert into schedule (account_id, name, cron, timezone, target, paused, next_fire_at, created_at, updated_at)
        values ($1, $2, $3, $4, $5, $6, $7, $8, $8)
        on conflict (account_id, name) do nothing
        returning {COLUMNS}
        "#
    ))
    .bind(account.as_str())
    .bind(&new.name)
    .bind(&new.cron)
    .bind(&new.timezone)
    .bind(Json(&new.target))
    .bind(new.paused)
    .bind(next)
    .bind(now)
    .fetch_optional(exec)
    .await?;
    match row {
        Some(r) => r.try_into(),
        None => Err(Error::Conflict { name: new.name.clone() }),
    }
}

/// The schedule `name` of the account, or [`Error::NotFound`].
pub async fn get<'e>(exec: impl PgExecutor<'e>, account: &AccountId, name: &str) -> Result<Schedule> {
    let row: Option<Row> = sqlx::query_as(&format!(
        r#"
        select {COLUMNS}
        from schedule
        where account_id = $1
          and name = $2
        "#
    ))
    .bind(account.as_str())
    .bind(name)
    .fetch_optional(exec)
    .await?;
    match row {
        Some(r) => r.try_into(),
        None => Err(Error::NotFound { name: name.to_owned() }),
    }
}

/// The account's schedules in name order: at most `limit`, starting after the name `after` (the list cursor).
pub async fn list<'e>(
    exec: impl PgExecutor<'e>,
    account: &AccountId,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Schedule>> {
    let found: Vec<Row> = sqlx::query_as(&format!(
        r#"
        select {COLUMNS}
        from schedule
        where account_id = $1
          and ($2::text is null or name > $2)
        order by name
        limit $3
        "#
    ))
    .bind(account.as_str())
    .bind(after)
    .bind(limit)
    .fetch_all(exec)
    .await?;
    rows(found)
}

/// Changes the given fields. A new expression or zone, or a resume, computes the next tick from `now` (so a
/// resume never fires the ticks missed while paused); a pause clears it.
pub async fn update(
    conn: &mut PgConnection,
    account: &AccountId,
    name: &str,
    change: &ScheduleUpdate,
    now: DateTime<Utc>,
) -> Result<Schedule> {
    // A savepoint when the caller already runs a transaction. The row lock also orders this change against a
    // firing, whose conditional update then sees the new `updated_at` and backs off.
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let current = get_for_update(&mut tx, account, name).await?;
    let cron = change.cron.clone().unwrap_or_else(|| current.cron.clone());
    let timezone = change.timezone.clone().unwrap_or_else(|| current.timezone.clone());
    let target = change.target.clone().unwrap_or_else(|| current.target.clone());
    let paused = change.paused.unwrap_or(current.paused);
    let timetable = validate(name, &cron, &timezone, &target, now)?;
    let retimed = cron != current.cron || timezone != current.timezone || (current.paused && !paused);
    let next = if paused {
        None
    } else if retimed {
        timetable.next_after(now)
    } else {
        current.next_fire_at
    };
    let row: Row = sqlx::query_as(&format!(
        r#"
        update schedule
        set cron = $3,
            timezone = $4,
            target = $5,
            paused = $6,
            next_fire_at = $7,
            -- Strictly increasing, so a firing that read the old row can never match it.
            updated_at = greatest($8, updated_at + interval '1 microsecond')
        where account_id = $1
          and name = $2
        returning {COLUMNS}
        "#
    ))
    .bind(account.as_str())
    .bind(name)
    .bind(&cron)
    .bind(&timezone)
    .bind(Json(&target))
    .bind(paused)
    .bind(next)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    row.try_into()
}

/// Pauses the schedule: it fires nothing until resumed.
pub async fn pause(conn: &mut PgConnection, account: &AccountId, name: &str, now: DateTime<Utc>) -> Result<Schedule> {
    let change = ScheduleUpdate {
        paused: Some(true),
        ..Default::default()
    };
    update(conn, account, name, &change, now).await
}

/// Resumes the schedule from `now`: ticks missed while paused do not fire.
pub async fn resume(conn: &mut PgConnection, account: &AccountId, name: &str, now: DateTime<Utc>) -> Result<Schedule> {
    let change = ScheduleUpdate {
        paused: Some(false),
        ..Default::default()
    };
    update(conn, account, name, &change, now).await
}

/// Deletes the schedule, or [`Error::NotFound`]. Jobs it already fired stay.
pub async fn delete<'e>(exec: impl PgExecutor<'e>, account: &AccountId, name: &str) -> Result<()> {
    let done = sqlx::query(
        r#"
        delete from schedule
        where account_id = $1
          and name = $2
        "#,
    )
    .bind(account.as_str())
    .bind(name)
    .execute(exec)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound { name: name.to_owned() });
    }
    Ok(())
}

async fn get_for_update(conn: &mut PgConnection, account: &AccountId, name: &str) -> Result<Schedule> {
    let row: Option<Row> = sqlx::query_as(&format!(
        r#"
        select {COLUMNS}
        from schedule
        where account_id = $1
          and name = $2
        for update
        "#
    ))
    .bind(account.as_str())
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(r) => r.try_into(),
        None => Err(Error::NotFound { name: name.to_owned() }),
    }
}

/// Active schedules of every account whose next tick is at or before `now`, earliest first, at most `limit`.
/// For the scheduler, which serves all accounts.
pub async fn due<'e>(exec: impl PgExecutor<'e>, now: DateTime<Utc>, limit: i64) -> Result<Vec<Schedule>> {
    let found: Vec<Row> = sqlx::query_as(&format!(
        r#"
        select {COLUMNS}
        from schedule
        where not paused
          and next_fire_at is not null
          and next_fire_at <= $1
        order by next_fire_at
        limit $2
        "#
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(exec)
    .await?;
    rows(found)
}

/// The earliest next tick of any active schedule, so the scheduler can sleep until it.
pub async fn earliest_next_fire<'e>(exec: impl PgExecutor<'e>) -> Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar(
        r#"
        select min(next_fire_at)
        from schedule
        where not paused
          and next_fire_at is not null
        "#,
    )
    .fetch_one(exec)
    .await?)
}

/// Moves the schedule's next tick from `seen.next_fire_at` to `next`, recording `fired` as the latest tick fired,
/// only if the row is still as the caller read it (same next tick, no user change since, not paused). Returns
/// whether it moved; false means another scheduler fired these ticks or a user changed the schedule, and the
/// caller must not fire. The update locks the row until the caller's transaction ends.
pub async fn advance<'e>(
    exec: impl PgExecutor<'e>,
    seen: &Schedule,
    next: Option<DateTime<Utc>>,
    fired: Option<DateTime<Utc>>,
) -> Result<bool> {
    let done = sqlx::query(
        r#"
        update schedule
        set next_fire_at = $3,
            last_fired_at = coalesce($4, last_fired_at)
        where account_id = $1
          and name = $2
          and next_fire_at = $5
          and updated_at = $6
          and not paused
        "#,
    )
    .bind(seen.account_id.as_str())
    .bind(&seen.name)
    .bind(next)
    .bind(fired)
    .bind(seen.next_fire_at)
    .bind(seen.updated_at)
    .execute(exec)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The tick key is the contract's: RFC 3339 UTC with a `Z`, whole seconds.
    #[test]
    fn tick_key_is_rfc3339_utc() {
        assert_eq!(
            tick_key("nightly", utc("2026-11-25T12:00:00Z")),
            "schedule:nightly:2026-11-25T12:00:00Z"
        );
        assert_eq!(
            tick_key("x", utc("2026-11-25T13:00:00+01:00")),
            "schedule:x:2026-11-25T12:00:00Z"
        );
    }

    /// A target serialises tagged, round-trips, keeps absent fields absent and refuses unknown ones.
    #[test]
    fn target_json_is_tagged_and_strict() {
        let t: Target = serde_json::from_value(serde_json::json!({"job": {"kind": "noop", "priority": 2}})).unwrap();
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({"job": {"kind": "noop", "args": {}, "priority": 2}})
        );
        assert!(serde_json::from_value::<Target>(serde_json::json!({"job": {"kind": "noop", "run_at": "x"}})).is_err());
        let job = t.job_for_tick("s", utc("2026-11-25T12:00:00Z")).unwrap();
        assert_eq!(job.priority, 2);
        assert_eq!(job.queue, "default");
        assert_eq!(job.run_at, Some(utc("2026-11-25T12:00:00Z")));
        assert_eq!(job.idempotency_key.as_deref(), Some("schedule:s:2026-11-25T12:00:00Z"));
    }

    /// An event target round-trips tagged, refuses unknown fields and fires with the tick's key.
    #[test]
    fn event_target_json_and_tick() {
        let t: Target = serde_json::from_value(serde_json::json!(
            {"event": {"name": "Ping", "entity": {"type": "T", "ref": "r"}}}
        ))
        .unwrap();
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({"event": {"name": "Ping", "entity": {"type": "T", "ref": "r"}, "attributes": {}}})
        );
        assert!(serde_json::from_value::<Target>(serde_json::json!(
            {"event": {"name": "Ping", "entity": {"type": "T", "ref": "r"}, "idempotency_key": "k"}}
        ))
        .is_err());
        let tick = utc("2026-11-25T12:00:00Z");
        assert!(t.job_for_tick("s", tick).is_none());
        let e = t.event_for_tick("s", tick).unwrap();
        assert_eq!(e.idempotency_key.as_deref(), Some("schedule:s:2026-11-25T12:00:00Z"));
        assert_eq!((e.name.as_str(), e.scheduled_at), ("Ping", Some(tick)));
        let mut errs = Vec::new();
        Target::Event(EventSpec::new("", "T", "")).validate(&mut errs);
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["/event/name", "/event/entity/ref"]);
    }

    /// Validation names every bad field, the job's under `/job`.
    #[test]
    fn validation_names_every_field() {
        let now = utc("2026-11-25T12:00:00Z");
        let mut spec = JobSpec::new("", Value::Null);
        spec.priority = Some(11);
        let e = validate("bad name", "* *", "Nowhere", &Target::Job(spec), now).unwrap_err();
        assert_eq!(
            e.fields(),
            ["/name", "/cron", "/timezone", "/job/kind", "/job/priority"]
        );
        let noop = Target::Job(JobSpec::new("noop", Value::Null));
        assert!(validate("nightly-sync.v2", "0 3 * * *", "Europe/Berlin", &noop, now).is_ok());
        // 30 February never comes.
        let e = validate("never", "0 0 30 2 *", "UTC", &noop, now).unwrap_err();
        assert_eq!(e.fields(), ["/cron"]);
    }
}
