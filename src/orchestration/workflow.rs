//! Workflows: statuses, rulesets of rules and settings, stored as immutable versions (`1.0`, `1.1`, …, a major
//! upload starts `2.0`). Validation lists every problem at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use ordo_workers::rules::{schema::is_template, Problem, RuleRegistry};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};

use super::{Error, Page, Result};
use crate::tenancy::AccountId;

/// A workflow version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Entities stay on their major.
    pub major: i32,
    /// Entities pick up newer minors.
    pub minor: i32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('.')
            .ok_or_else(|| format!("version {s:?} is not MAJOR.MINOR"))?;
        let parse = |x: &str| {
            x.parse::<i32>()
                .map_err(|_| format!("version {s:?} is not MAJOR.MINOR"))
        };
        Ok(Version {
            major: parse(a)?,
            minor: parse(b)?,
        })
    }
}

/// A declared status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// Status name, e.g. `BOOKED`.
    pub name: String,
    /// Free-form grouping (e.g. `open`, `done`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// Normal rulesets run on matching events; an exception ruleset runs when a normal one of the same name fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RulesetKind {
    /// Runs when the event matches.
    #[default]
    Normal,
    /// Runs when its normal twin fails.
    Exception,
}

/// A rule invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleCall {
    /// Registered rule name.
    pub name: String,
    /// The rule's props (string values may be templates).
    #[serde(default = "empty_object")]
    pub props: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// A ruleset: rules run in order for events named `name` against entities of `entity_type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ruleset {
    /// The event name it handles.
    pub name: String,
    /// The entity type it handles.
    pub entity_type: String,
    /// Normal or exception.
    #[serde(default)]
    pub kind: RulesetKind,
    /// Statuses in which it runs; empty = any.
    #[serde(default)]
    pub triggers: Vec<String>,
    /// Rules, run in order.
    pub rules: Vec<RuleCall>,
}

/// The body of a workflow version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Declared statuses.
    pub statuses: Vec<Status>,
    /// Rulesets.
    pub rulesets: Vec<Ruleset>,
    /// Flat string settings, e.g. `{"webhook.retry": "slow"}`.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

impl Definition {
    /// Whether `status` is declared.
    pub fn declares(&self, status: &str) -> bool {
        self.statuses.iter().any(|s| s.name == status)
    }

    /// Rulesets of `kind` for an event `name` on an entity of `entity_type` in `status`, in definition order.
    pub fn matching(&self, kind: RulesetKind, name: &str, entity_type: &str, status: &str) -> Vec<&Ruleset> {
        self.rulesets
            .iter()
            .filter(|r| {
                r.kind == kind
                    && r.name == name
                    && r.entity_type == entity_type
                    && (r.triggers.is_empty() || r.triggers.iter().any(|t| t == status))
            })
            .collect()
    }
}

/// A stored workflow version.
#[derive(Debug, Clone, Serialize)]
pub struct Workflow {
    /// `TYPE::SUBTYPE`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// This version.
    pub version: Version,
    /// Statuses, rulesets, settings.
    #[serde(flatten)]
    pub definition: Definition,
    /// Upload time.
    pub created_at: DateTime<Utc>,
}

/// Checks a workflow reference `TYPE::SUBTYPE`.
pub fn check_ref(reference: &str) -> std::result::Result<(), Problem> {
    match reference.split_once("::") {
        Some((t, s)) if !t.is_empty() && !s.is_empty() && !s.contains("::") && reference.len() <= 255 => Ok(()),
        _ => Err(Problem::new("/ref", "must be TYPE::SUBTYPE")),
    }
}

/// Parses and validates a workflow body, listing every problem: malformed fields, unknown rules, missing or
/// mistyped props, undeclared statuses, exception rulesets without their normal twin, bad settings.
pub fn validate_workflow(body: &Value, rules: &RuleRegistry) -> std::result::Result<Definition, Vec<Problem>> {
    let def: Definition = serde_json::from_value(body.clone()).map_err(|e| vec![Problem::new("", e.to_string())])?;
    let mut problems = Vec::new();
    if def.statuses.is_empty() {
        problems.push(Problem::new("/statuses", "must declare at least one status"));
    }
    let mut seen = BTreeSet::new();
    for (i, s) in def.statuses.iter().enumerate() {
        if s.name.is_empty() {
            problems.push(Problem::new(format!("/statuses/{i}/name"), "must not be empty"));
        } else if !seen.insert(s.name.as_str()) {
            problems.push(Problem::new(
                format!("/statuses/{i}/name"),
                format!("status {:?} is declared twice", s.name),
            ));
        }
    }
    for (i, rs) in def.rulesets.iter().enumerate() {
        let at = format!("/rulesets/{i}");
        if rs.name.is_empty() {
            problems.push(Problem::new(format!("{at}/name"), "must not be empty"));
        }
        if rs.entity_type.is_empty() {
            problems.push(Problem::new(format!("{at}/entity_type"), "must not be empty"));
        }
        for (j, t) in rs.triggers.iter().enumerate() {
            if !def.declares(t) {
                problems.push(Problem::new(
                    format!("{at}/triggers/{j}"),
                    format!("undeclared status {t:?}"),
                ));
            }
        }
        if rs.kind == RulesetKind::Exception
            && !def
                .rulesets
                .iter()
                .any(|n| n.kind == RulesetKind::Normal && n.name == rs.name && n.entity_type == rs.entity_type)
        {
            problems.push(Problem::new(
                at.clone(),
                format!("exception ruleset {:?} has no normal ruleset of the same name", rs.name),
            ));
        }
        for (j, call) in rs.rules.iter().enumerate() {
            let at = format!("{at}/rules/{j}");
            let Some(rule) = rules.get(&call.name) else {
                problems.push(Problem::new(
                    format!("{at}/name"),
                    format!("unknown rule {:?}", call.name),
                ));
                continue;
            };
            for p in rule.validate(&call.props) {
                problems.push(Problem::new(format!("{at}/props{}", p.path), p.message));
            }
            // The one rule whose prop names a status: a literal one must be declared (a template is checked when
            // it runs).
            if call.name == "core.SetState" {
                if let Some(s) = call.props.get("status").and_then(Value::as_str) {
                    if !is_template(s) && !def.declares(s) {
                        problems.push(Problem::new(
                            format!("{at}/props/status"),
                            format!("undeclared status {s:?}"),
                        ));
                    }
                }
            }
        }
    }
    if let Some(r) = def.settings.get("webhook.retry") {
        if r != "fast" && r != "slow" {
            problems.push(Problem::new("/settings/webhook.retry", "must be fast or slow"));
        }
    }
    if problems.is_empty() {
        Ok(def)
    } else {
        Err(problems)
    }
}

/// Stores a new version of workflow `reference`: the next minor of the latest major, or with `major` the next
/// major (`.0`); the first upload is `1.0`.
pub async fn put_workflow(
    conn: &mut PgConnection,
    account: &AccountId,
    reference: &str,
    body: &Value,
    major: bool,
    rules: &RuleRegistry,
) -> Result<Workflow> {
    put_workflow_if_changed(conn, account, reference, body, major, rules)
        .await
        .map(|(w, _)| w)
}

/// Like [`put_workflow`], but an upload whose definition equals the latest version's (and that does not ask for
/// a new major) makes no new version: it returns that version and `false` (`true` when a version was created).
pub async fn put_workflow_if_changed(
    conn: &mut PgConnection,
    account: &AccountId,
    reference: &str,
    body: &Value,
    major: bool,
    rules: &RuleRegistry,
) -> Result<(Workflow, bool)> {
    let mut problems = Vec::new();
    if let Err(p) = check_ref(reference) {
        problems.push(p);
    }
    let def = match validate_workflow(body, rules) {
        Ok(d) if problems.is_empty() => d,
        Ok(_) => return Err(Error::Invalid(problems)),
        Err(p) => {
            problems.extend(p);
            return Err(Error::Invalid(problems));
        }
    };
    let definition = serde_json::to_value(&def).map_err(|e| Error::Corrupt(e.to_string()))?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    // Two uploads of one workflow at once would compute the same next version: serialise them per ref.
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("workflow:{account}:{reference}"))
        .execute(&mut *tx)
        .await?;
    let latest: Option<(i32, i32, Value, DateTime<Utc>)> = sqlx::query_as(
        r#"
        select major, minor, definition, created_at
        from workflow
        where account_id = $1
          and ref = $2
        order by major desc, minor desc
        limit 1
        "#,
    )
    .bind(account.as_str())
    .bind(reference)
    .fetch_optional(&mut *tx)
    .await?;
    // Compared as stored (the normalised definition), so key order and defaults filled in do not count as a
    // change: a deploy script that PUTs the same file on every run keeps one version.
    if let Some((m, n, stored, created_at)) = &latest {
        if !major && *stored == definition {
            tx.commit().await?;
            let version = Version { major: *m, minor: *n };
            return Ok((
                Workflow {
                    reference: reference.to_owned(),
                    version,
                    definition: def,
                    created_at: *created_at,
                },
                false,
            ));
        }
    }
    let version = match latest {
        None => Version { major: 1, minor: 0 },
        Some((m, _, _, _)) if major => Version { major: m + 1, minor: 0 },
        Some((m, n, _, _)) => Version { major: m, minor: n + 1 },
    };
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        r#"
        insert into workflow (account_id, ref, major, minor, definition)
        values ($1, $2, $3, $4, $5)
        returning created_at
        "#,
    )
    .bind(account.as_str())
    .bind(reference)
    .bind(version.major)
    .bind(version.minor)
    .bind(&definition)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((
        Workflow {
            reference: reference.to_owned(),
            version,
            definition: def,
            created_at,
        },
        true,
    ))
}

type WorkflowRow = (String, i32, i32, Value, DateTime<Utc>);

fn from_row((reference, major, minor, definition, created_at): WorkflowRow) -> Result<Workflow> {
    Ok(Workflow {
        reference,
        version: Version { major, minor },
        definition: serde_json::from_value(definition).map_err(|e| Error::Corrupt(e.to_string()))?,
        created_at,
    })
}

/// Reads a workflow: a given version, the latest minor of a given major, or the latest version.
pub async fn get_workflow<'e>(
    exec: impl PgExecutor<'e>,
    account: &AccountId,
    reference: &str,
    version: Option<Version>,
) -> Result<Workflow> {
    get_version(
        exec,
        account,
        reference,
        version.map(|v| v.major),
        version.map(|v| v.minor),
    )
    .await
}

/// The latest minor of `major` (`None` = latest major), or exactly `minor` when given.
pub(crate) async fn get_version<'e>(
    exec: impl PgExecutor<'e>,
    account: &AccountId,
    reference: &str,
    major: Option<i32>,
    minor: Option<i32>,
) -> Result<Workflow> {
    let row: Option<WorkflowRow> = sqlx::query_as(
        r#"
        select ref, major, minor, definition, created_at
        from workflow
        where account_id = $1
          and ref = $2
          and ($3::int is null or major = $3)
          and ($4::int is null or minor = $4)
        order by major desc, minor desc
        limit 1
        "#,
    )
    .bind(account.as_str())
    .bind(reference)
    .bind(major)
    .bind(minor)
    .fetch_optional(exec)
    .await?;
    match row {
        Some(r) => from_row(r),
        None => Err(Error::WorkflowNotFound {
            reference: match (major, minor) {
                (Some(a), Some(b)) => format!("{reference} version {a}.{b}"),
                _ => reference.to_owned(),
            },
        }),
    }
}

/// Lists the latest version of each of the account's workflows, by ref; `cursor` is the last ref of the previous
/// page.
pub async fn list_workflows<'e>(
    exec: impl PgExecutor<'e>,
    account: &AccountId,
    limit: i64,
    cursor: Option<&str>,
) -> Result<Page<Workflow>> {
    let rows: Vec<WorkflowRow> = sqlx::query_as(
        r#"
        select distinct on (ref) ref, major, minor, definition, created_at
        from workflow
        where account_id = $1
          and ($2::text is null or ref > $2)
        order by ref, major desc, minor desc
        limit $3
        "#,
    )
    .bind(account.as_str())
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(exec)
    .await?;
    let mut items = rows.into_iter().map(from_row).collect::<Result<Vec<_>>>()?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit.max(0) as usize);
        items.last().map(|w| w.reference.clone())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// Parsed workflow definitions by `(account, ref, major, minor)`. Versions are immutable, so an entry never goes
/// stale; the cache only saves fetching and parsing the definition on every execution.
#[derive(Default)]
pub(crate) struct DefinitionCache {
    by_version: Mutex<HashMap<VersionKey, Arc<Definition>>>,
}

/// `(account, ref, major, minor)`.
pub(crate) type VersionKey = (String, String, i32, i32);

/// Entries kept before the cache starts over (a bound, not a tuning knob: workflows are few).
const DEFINITION_CACHE_SIZE: usize = 1024;

impl DefinitionCache {
    /// The definition of a version, when cached.
    pub(crate) fn get(&self, key: &VersionKey) -> Option<Arc<Definition>> {
        self.by_version.lock().ok()?.get(key).cloned()
    }

    /// Caches the definition of a version.
    pub(crate) fn put(&self, key: VersionKey, def: Arc<Definition>) {
        if let Ok(mut m) = self.by_version.lock() {
            if m.len() >= DEFINITION_CACHE_SIZE {
                m.clear();
            }
            m.insert(key, def);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every kind of problem is reported at once, each at its path.
    #[test]
    fn validation_lists_every_problem() {
        let body = json!({
            "statuses": [{"name": "CREATED"}, {"name": "BOOKED"}],
            "rulesets": [
                {"name": "Book", "entity_type": "ORDER", "triggers": ["CREATED", "LOST"], "rules": [
                    {"name": "core.SetState", "props": {"status": "GONE"}},
                    {"name": "core.Nope", "props": {}},
                    {"name": "core.ScheduleEvent", "props": {"event_name": 7}},
                ]},
                {"name": "Cancel", "entity_type": "ORDER", "kind": "exception", "rules": []}
            ],
            "settings": {"webhook.retry": "sometimes"}
        });
        let problems = validate_workflow(&body, &ordo_workers::rules::registry()).unwrap_err();
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/rulesets/0/triggers/1",
                "/rulesets/0/rules/0/props/status",
                "/rulesets/0/rules/1/name",
                "/rulesets/0/rules/2/props/delay_seconds",
                "/rulesets/0/rules/2/props/event_name",
                "/rulesets/1",
                "/settings/webhook.retry",
            ],
            "{problems:#?}"
        );
    }

    /// Matching takes name, entity type and trigger status into account; no triggers match any status.
    #[test]
    fn matching_filters_by_name_type_and_status() {
        let def: Definition = serde_json::from_value(json!({
            "statuses": [{"name": "A"}, {"name": "B"}],
            "rulesets": [
                {"name": "E", "entity_type": "T", "triggers": ["A"], "rules": []},
                {"name": "E", "entity_type": "T", "rules": []},
                {"name": "E", "entity_type": "U", "rules": []},
                {"name": "E", "entity_type": "T", "kind": "exception", "rules": []},
            ]
        }))
        .unwrap();
        assert_eq!(def.matching(RulesetKind::Normal, "E", "T", "A").len(), 2);
        assert_eq!(def.matching(RulesetKind::Normal, "E", "T", "B").len(), 1);
        assert_eq!(def.matching(RulesetKind::Exception, "E", "T", "B").len(), 1);
        assert_eq!(def.matching(RulesetKind::Normal, "F", "T", "A").len(), 0);
    }

    /// Versions print and parse as MAJOR.MINOR; refs must be TYPE::SUBTYPE.
    #[test]
    fn versions_and_refs() {
        assert_eq!("2.10".parse::<Version>().unwrap(), Version { major: 2, minor: 10 });
        assert_eq!(Version { major: 1, minor: 1 }.to_string(), "1.1");
        assert!("1".parse::<Version>().is_err());
        assert!(check_ref("ORDER::HD").is_ok());
        for bad in ["ORDER", "::HD", "ORDER::", "A::B::C"] {
            assert!(check_ref(bad).is_err(), "{bad}");
        }
    }
}
