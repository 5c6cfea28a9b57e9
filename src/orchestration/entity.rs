//! Entities: the things workflows drive (an order, an inventory catalogue). Created with a `CREATE` event queued
//! in the same transaction; pinned to the major version of their workflow `TYPE::SUBTYPE`.

use chrono::{DateTime, Utc};
use ordo_workers::rules::{EntityKey, Problem};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgExecutor};

use super::event::{accept_events, Accept, Event};
use super::workflow::{get_version, Version};
use super::{Error, Result, QUEUE};
use crate::queue::Queue;
use crate::tenancy::AccountId;

/// The workflow an entity runs: its ref and the version in force (the latest minor of its pinned major).
#[derive(Debug, Clone, Serialize)]
pub struct WorkflowPin {
    /// `TYPE::SUBTYPE`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The version in force.
    pub version: Version,
}

/// An entity as users see it.
#[derive(Debug, Clone, Serialize)]
pub struct Entity {
    /// Type, e.g. `ORDER`.
    #[serde(rename = "type")]
    pub entity_type: String,
    /// Subtype, e.g. `HD`.
    pub subtype: String,
    /// Reference, unique within the type.
    #[serde(rename = "ref")]
    pub entity_ref: String,
    /// Current status.
    pub status: String,
    /// Attributes (an object).
    pub attributes: Value,
    /// Workflow and version in force.
    pub workflow: WorkflowPin,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Entity {
    /// The entity's key.
    pub fn key(&self) -> EntityKey {
        EntityKey {
            entity_type: self.entity_type.clone(),
            entity_ref: self.entity_ref.clone(),
        }
    }
}

/// An entity to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEntity {
    /// Type.
    pub entity_type: String,
    /// Subtype; with the type it names the workflow.
    pub subtype: String,
    /// Reference.
    pub entity_ref: String,
    /// Initial status (default `CREATED`).
    pub status: Option<String>,
    /// Attributes (an object, default `{}`).
    pub attributes: Option<Value>,
    /// W3C trace context for its `CREATE` event (the request's `traceparent`).
    pub traceparent: Option<String>,
}

impl NewEntity {
    /// An entity in status `CREATED` with no attributes.
    pub fn new(entity_type: impl Into<String>, subtype: impl Into<String>, entity_ref: impl Into<String>) -> Self {
        NewEntity {
            entity_type: entity_type.into(),
            subtype: subtype.into(),
            entity_ref: entity_ref.into(),
            status: None,
            attributes: None,
            traceparent: None,
        }
    }

    /// Sets the attributes.
    pub fn attributes(mut self, a: Value) -> Self {
        self.attributes = Some(a);
        self
    }

    /// Sets the initial status.
    pub fn status(mut self, s: impl Into<String>) -> Self {
        self.status = Some(s.into());
        self
    }
}

fn check_name(p: &mut Vec<Problem>, path: &str, v: &str) {
    if v.is_empty() || v.chars().count() > 255 {
        p.push(Problem::new(path, "must be 1 to 255 characters"));
    } else if v.contains("::") {
        p.push(Problem::new(path, "must not contain '::'"));
    }
}

/// An entity's attributes sealed for storage under its identity (see [`crate::crypt`]).
pub(crate) fn seal_attributes(account: &AccountId, key: &EntityKey, attributes: &Value) -> crate::crypt::Result<Value> {
    let row = [key.entity_type.as_str(), key.entity_ref.as_str()];
    crate::crypt::seal_json(
        &crate::crypt::Aad::new(account.as_str(), "entity", &row, "attributes"),
        attributes,
    )
}

/// An entity's stored attributes, opened (the account's data key loaded: [`crate::crypt::prepare`]).
pub(crate) fn open_attributes(account: &AccountId, key: &EntityKey, stored: Value) -> crate::crypt::Result<Value> {
    let row = [key.entity_type.as_str(), key.entity_ref.as_str()];
    crate::crypt::open_json(
        &crate::crypt::Aad::new(account.as_str(), "entity", &row, "attributes"),
        stored,
    )
}

fn open_row(account: &AccountId, entity_type: &str, entity_ref: &str, stored: Value) -> crate::crypt::Result<Value> {
    let row = [entity_type, entity_ref];
    crate::crypt::open_json(
        &crate::crypt::Aad::new(account.as_str(), "entity", &row, "attributes"),
        stored,
    )
}

/// Creates an entity and queues its `CREATE` event, in one transaction. The workflow `TYPE::SUBTYPE` must exist
/// (the entity pins its latest major) and the status must be one it declares.
pub async fn create_entity(q: &Queue, account: &AccountId, new: NewEntity) -> Result<(Entity, Event)> {
    let mut problems = Vec::new();
    check_name(&mut problems, "/type", &new.entity_type);
    check_name(&mut problems, "/subtype", &new.subtype);
    if new.entity_ref.is_empty() || new.entity_ref.chars().count() > 255 {
        problems.push(Problem::new("/ref", "must be 1 to 255 characters"));
    }
    let attributes = new.attributes.unwrap_or_else(|| json!({}));
    if !attributes.is_object() {
        problems.push(Problem::new("/attributes", "must be an object"));
    }
    if !problems.is_empty() {
        return Err(Error::Invalid(problems));
    }
    let status = new.status.unwrap_or_else(|| "CREATED".to_owned());
    let reference = format!("{}::{}", new.entity_type, new.subtype);
    crate::crypt::prepare(account.as_str()).await?;
    let key = EntityKey {
        entity_type: new.entity_type.clone(),
        entity_ref: new.entity_ref.clone(),
    };
    let stored = seal_attributes(account, &key, &attributes)?;
    let mut tx = q.begin_for(account).await?;
    let workflow = get_version(&mut *tx, account, &reference, None, None).await?;
    if !workflow.definition.declares(&status) {
        return Err(Error::Invalid(vec![Problem::new(
            "/status",
            format!("status {status:?} is not declared by workflow {reference}"),
        )]));
    }
    let inserted: Option<(DateTime<Utc>,)> = sqlx::query_as(
        r#"
        insert into entity (account_id, type, ref, subtype, status, attributes, workflow_major)
        values ($1, $2, $3, $4, $5, $6, $7)
        on conflict (account_id, type, ref) do nothing
        returning created_at
        "#,
    )
    .bind(account.as_str())
    .bind(&new.entity_type)
    .bind(&new.entity_ref)
    .bind(&new.subtype)
    .bind(&status)
    .bind(&stored)
    .bind(workflow.version.major)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((created_at,)) = inserted else {
        return Err(Error::EntityExists(key));
    };
    let event = accept_events(
        &mut tx,
        account,
        vec![Accept {
            name: "CREATE".to_owned(),
            entity: key,
            attributes: json!({}),
            scheduled_at: None,
            source_event_id: None,
            idempotency_key: None,
            traceparent: new.traceparent.clone(),
        }],
    )
    .await?
    .pop()
    .map(|a| a.event)
    .ok_or_else(|| Error::Corrupt("accept returned nothing".into()))?;
    tx.commit().await?;
    q.waker().wake(QUEUE);
    let entity = Entity {
        entity_type: new.entity_type,
        subtype: new.subtype,
        entity_ref: new.entity_ref,
        status,
        attributes,
        workflow: WorkflowPin {
            reference,
            version: workflow.version,
        },
        created_at,
        updated_at: created_at,
    };
    Ok((entity, event))
}

/// An entity as a batch of executions left it, to write.
pub(crate) struct Changed<'a> {
    /// The entity.
    pub key: &'a EntityKey,
    /// Its status now.
    pub status: &'a str,
    /// Its attributes now (opened; sealed on the way in).
    pub attributes: &'a Value,
}

/// Writes the entities executions changed, with one statement.
pub(crate) async fn write_changes(conn: &mut PgConnection, account: &AccountId, changed: &[Changed<'_>]) -> Result<()> {
    if changed.is_empty() {
        return Ok(());
    }
    let types: Vec<&str> = changed.iter().map(|c| c.key.entity_type.as_str()).collect();
    let refs: Vec<&str> = changed.iter().map(|c| c.key.entity_ref.as_str()).collect();
    let statuses: Vec<&str> = changed.iter().map(|c| c.status).collect();
    let attributes: Vec<Value> = changed
        .iter()
        .map(|c| seal_attributes(account, c.key, c.attributes))
        .collect::<Result<_, _>>()?;
    sqlx::query(
        r#"
        update entity
        set status = u.status,
            attributes = u.attributes,
            updated_at = now()
        from unnest($2::text[], $3::text[], $4::text[], $5::jsonb[]) as u(type, ref, status, attributes)
        where entity.account_id = $1
          -- index conditions of their own, so that no join order can scan the account's rows
          and entity.type = any($2)
          and entity.ref = any($3)
          and entity.type = u.type
          and entity.ref = u.ref
        "#,
    )
    .bind(account.as_str())
    .bind(&types)
    .bind(&refs)
    .bind(&statuses)
    .bind(&attributes)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Reads an entity, with the workflow version now in force for it.
pub async fn get_entity<'e>(
    exec: impl PgExecutor<'e>,
    account: &AccountId,
    entity_type: &str,
    entity_ref: &str,
) -> Result<Entity> {
    let key = EntityKey {
        entity_type: entity_type.to_owned(),
        entity_ref: entity_ref.to_owned(),
    };
    get_entities(exec, account, std::slice::from_ref(&key))
        .await?
        .pop()
        .ok_or(Error::EntityNotFound(key))
}

/// Reads entities by key, each with the workflow version now in force for it; unknown keys are left out.
pub(crate) async fn get_entities<'e>(
    exec: impl PgExecutor<'e>,
    account: &AccountId,
    keys: &[EntityKey],
) -> Result<Vec<Entity>> {
    let types: Vec<&str> = keys.iter().map(|k| k.entity_type.as_str()).collect();
    let refs: Vec<&str> = keys.iter().map(|k| k.entity_ref.as_str()).collect();
    #[allow(clippy::type_complexity)]
    let rows: Vec<(
        String,
        String,
        String,
        String,
        Value,
        i32,
        i32,
        DateTime<Utc>,
        DateTime<Utc>,
    )> = sqlx::query_as(
        r#"
        select k.type, k.ref, e.subtype, e.status, e.attributes, e.workflow_major,
               coalesce((select max(w.minor)
                         from workflow w
                         where w.account_id = $1
                           and w.ref = k.type || '::' || e.subtype
                           and w.major = e.workflow_major), 0),
               e.created_at, e.updated_at
        from unnest($2::text[], $3::text[]) as k(type, ref)
        cross join lateral (
            select e.subtype, e.status, e.attributes, e.workflow_major, e.created_at, e.updated_at
            from entity e
            where e.account_id = $1
              and e.type = k.type
              and e.ref = k.ref
        ) e
        "#,
    )
    .bind(account.as_str())
    .bind(&types)
    .bind(&refs)
    .fetch_all(exec)
    .await?;
    crate::crypt::prepare(account.as_str()).await?;
    rows.into_iter()
        .map(
            |(entity_type, entity_ref, subtype, status, attributes, major, minor, created_at, updated_at)| {
                Ok(Entity {
                    workflow: WorkflowPin {
                        reference: format!("{entity_type}::{subtype}"),
                        version: Version { major, minor },
                    },
                    attributes: open_row(account, &entity_type, &entity_ref, attributes)?,
                    entity_type,
                    subtype,
                    entity_ref,
                    status,
                    created_at,
                    updated_at,
                })
            },
        )
        .collect()
}

/// What [`list_entities`] returns: entities whose type is `entity_type` (all types when `None`), whose ref starts
/// with `ref_prefix` and whose status is `status`, when given.
#[derive(Debug, Clone, Default)]
pub struct EntityFilter {
    /// Only this type.
    pub entity_type: Option<String>,
    /// Only refs starting with this.
    pub ref_prefix: Option<String>,
    /// Only this status.
    pub status: Option<String>,
}

#[derive(sqlx::FromRow)]
struct EntityRow {
    #[sqlx(rename = "type")]
    entity_type: String,
    subtype: String,
    #[sqlx(rename = "ref")]
    entity_ref: String,
    status: String,
    attributes: Value,
    workflow_major: i32,
    workflow_minor: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A page of entities in type order and natural ref order (`A2` before `A10`, collation `ordo_natural`), walked
/// along its index; `cursor` is the previous page's `next_cursor` (`TYPE::ref` of its last entity: a type never
/// contains `::`).
pub async fn list_entities<'e>(
    exec: impl PgExecutor<'e>,
    account: &AccountId,
    filter: &EntityFilter,
    limit: i64,
    cursor: Option<&str>,
) -> Result<super::Page<Entity>> {
    let after =
        match cursor {
            None => None,
            Some(c) => Some(c.split_once("::").ok_or_else(|| {
                Error::Invalid(vec![Problem::new("/query/cursor", "is not a cursor of this listing")])
            })?),
        };
    let rows: Vec<EntityRow> = sqlx::query_as(
        r#"
        select e.type, e.subtype, e.ref, e.status, e.attributes, e.workflow_major,
               coalesce((select max(w.minor)
                         from workflow w
                         where w.account_id = e.account_id
                           and w.ref = e.type || '::' || e.subtype
                           and w.major = e.workflow_major), 0) as workflow_minor,
               e.created_at, e.updated_at
        from entity e
        where e.account_id = $1
          and ($2::text is null or e.type = $2)
          and ($3::text is null or (e.ref >= $3 and starts_with(e.ref, $3)))
          and ($4::text is null or e.status = $4)
          and ($5::text is null or (e.type, e.ref collate ordo_natural) > ($5, $6))
        order by e.type, e.ref collate ordo_natural
        limit $7
        "#,
    )
    .bind(account.as_str())
    .bind(filter.entity_type.as_deref())
    .bind(filter.ref_prefix.as_deref())
    .bind(filter.status.as_deref())
    .bind(after.map(|(t, _)| t))
    .bind(after.map(|(_, r)| r))
    .bind(limit + 1)
    .fetch_all(exec)
    .await?;
    crate::crypt::prepare(account.as_str()).await?;
    let mut items: Vec<Entity> = rows
        .into_iter()
        .map(|r| -> Result<Entity> {
            Ok(Entity {
                attributes: open_row(account, &r.entity_type, &r.entity_ref, r.attributes)?,
                workflow: WorkflowPin {
                    reference: format!("{}::{}", r.entity_type, r.subtype),
                    version: Version {
                        major: r.workflow_major,
                        minor: r.workflow_minor,
                    },
                },
                entity_type: r.entity_type,
                subtype: r.subtype,
                entity_ref: r.entity_ref,
                status: r.status,
                created_at: r.created_at,
                updated_at: r.updated_at,
            })
        })
        .collect::<Result<_>>()?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit.max(0) as usize);
        items.last().map(|e| format!("{}::{}", e.entity_type, e.entity_ref))
    } else {
        None
    };
    Ok(super::Page { items, next_cursor })
}
