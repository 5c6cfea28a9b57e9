//! The rule interpreter: one event's execution on an entity snapshot, with no I/O.
//!
//! In: the entity as the execution finds it, the event, the workflow version in force and a source of inventory
//! positions (the ones the shell has locked, as the batch has left them). Out: what the execution writes (the
//! entity's new status and attributes, changed positions, the root's and its inline events' outcomes, events
//! leaving the entity, webhooks and audit records), or why the event fails, or which positions it still needs.
//!
//! The interpreter renders each rule's props ([`template`]), hands the positions the rule names
//! ([`ordo_workers::rules::Rule::positions`]) to it, applies the returned actions to its working copy, and loops
//! over inline events (same entity) up to [`MAX_INLINE_EVENTS`]. A position the source does not hold stops the
//! run with [`Outcome::NeedsPositions`]: the shell locks it and interprets again from the same snapshot, which
//! gives the same result, since nothing here has side effects. [`predicted_positions`] lets the shell lock most of
//! them before the first try.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use ordo_workers::rules::{
    template, Action, EntityKey, EntityView, EventView, Position, PositionKey, RuleContext, RuleError, RuleRegistry,
};
use serde_json::{json, Map, Value};

use super::audit::{Audit, Category};
use super::event::EventStatus;
use super::workflow::{Definition, RuleCall, Ruleset, RulesetKind, Version};

/// Most inline events (same entity) one execution may run after its root event; one more fails the event.
pub const MAX_INLINE_EVENTS: usize = 500;

/// The furthest ahead a rule may schedule an event (ten years), so a delay taken from input cannot overflow a
/// timestamp.
pub(crate) const MAX_DELAY_SECONDS: u64 = 10 * 366 * 86_400;

/// The entity an execution starts from.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot<'a> {
    /// Its type and ref.
    pub key: &'a EntityKey,
    /// Its subtype.
    pub subtype: &'a str,
    /// Its status.
    pub status: &'a str,
    /// Its attributes (opened).
    pub attributes: &'a Value,
}

/// The workflow version an execution runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flow<'a> {
    /// `TYPE::SUBTYPE`.
    pub reference: &'a str,
    /// The version in force.
    pub version: Version,
    /// Its definition.
    pub definition: &'a Definition,
}

/// The event an execution runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Trigger<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its attributes.
    pub attributes: &'a Value,
}

/// What interpreting one event came to.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The execution ran (its rules, an exception path, or no ruleset at all): what it writes.
    Ran(Staged),
    /// The event fails: why, and the audit records of the attempt, the only thing of it that is kept.
    Failed {
        /// The failure.
        error: String,
        /// Audit records, each `source` the root (0) or an inline event that was never kept.
        audits: Vec<Audit>,
    },
    /// Rules named positions the source does not hold; lock them and interpret again.
    NeedsPositions(BTreeSet<PositionKey>),
}

/// What a successful execution writes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Staged {
    /// The entity's status afterwards.
    pub status: String,
    /// The entity's attributes afterwards.
    pub attributes: Value,
    /// The positions it changed, as it left them.
    pub positions: BTreeMap<PositionKey, Position>,
    /// The root (index 0) and its inline events, in execution order.
    pub events: Vec<Local>,
    /// Events leaving the execution as queued jobs.
    pub emitted: Vec<Emitted>,
    /// Webhook deliveries.
    pub webhooks: Vec<Webhook>,
    /// Audit records, in execution order.
    pub audits: Vec<Audit>,
}

/// An event of an execution: index 0 is the root, the rest are inline events.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Local {
    /// Event name.
    pub name: String,
    /// Its attributes.
    pub attributes: Value,
    /// The event (index) it came from; the root's is 0.
    pub source: usize,
    /// Its outcome.
    pub status: EventStatus,
    /// The error an exception ruleset handled.
    pub error: Option<String>,
}

/// An event leaving an execution as a queued job.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Emitted {
    /// Event name.
    pub name: String,
    /// Its entity.
    pub entity: EntityKey,
    /// Its attributes.
    pub attributes: Value,
    /// Fire this long after the commit (at most [`MAX_DELAY_SECONDS`]); `None` = now.
    pub delay_seconds: Option<u64>,
    /// The event (index) that sent it.
    pub source: usize,
}

/// A webhook delivery an execution asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Webhook {
    /// Where to.
    pub url: String,
    /// The event (index) delivered.
    pub source: usize,
}

/// Interprets `event` on `entity` under `flow`, reading positions from `positions`.
pub(crate) fn interpret(
    rules: &RuleRegistry,
    flow: Flow<'_>,
    entity: Snapshot<'_>,
    event: Trigger<'_>,
    positions: &BTreeMap<PositionKey, Position>,
) -> Outcome {
    let mut run = Run {
        rules,
        def: flow.definition,
        key: entity.key,
        subtype: entity.subtype,
        source: positions,
        state: State {
            status: entity.status.to_owned(),
            attributes: entity.attributes.clone(),
            positions: BTreeMap::new(),
            dirty: BTreeSet::new(),
        },
        missing: BTreeSet::new(),
        events: vec![Local {
            name: event.name.to_owned(),
            attributes: event.attributes.clone(),
            source: 0,
            status: EventStatus::Running,
            error: None,
        }],
        emitted: Vec::new(),
        webhooks: Vec::new(),
        audits: Vec::new(),
    };
    run.audits.push(Audit::new(
        Category::Snapshot,
        event.name,
        0,
        json!({
            "status": entity.status,
            "attributes": entity.attributes,
            "workflow": {"ref": flow.reference, "version": flow.version},
        }),
    ));
    match run.execute() {
        Ok(()) => {
            let positions = run
                .state
                .dirty
                .iter()
                .filter_map(|k| run.state.positions.get(k).map(|p| (k.clone(), *p)))
                .collect();
            Outcome::Ran(Staged {
                status: run.state.status,
                attributes: run.state.attributes,
                positions,
                events: run.events,
                emitted: run.emitted,
                webhooks: run.webhooks,
                audits: run.audits,
            })
        }
        Err(Abort::Failed(error)) => Outcome::Failed {
            error,
            audits: run.audits,
        },
        Err(Abort::Missing) => Outcome::NeedsPositions(run.missing),
    }
}

/// The positions the rules of `event`'s rulesets name (normal and exception, whatever their triggers), rendered
/// against `entity` as it is before the execution: the shell locks them all at once, in one order, before it
/// interprets. Props that do not render yet (they read what earlier rules set) are left to
/// [`Outcome::NeedsPositions`].
pub(crate) fn predicted_positions(
    rules: &RuleRegistry,
    definition: &Definition,
    entity: Snapshot<'_>,
    event: Trigger<'_>,
) -> BTreeSet<PositionKey> {
    let none = BTreeMap::new();
    let ctx = RuleContext {
        event: EventView {
            name: event.name,
            attributes: event.attributes,
        },
        entity: EntityView {
            entity_type: &entity.key.entity_type,
            subtype: entity.subtype,
            entity_ref: &entity.key.entity_ref,
            status: entity.status,
            attributes: entity.attributes,
        },
        settings: &definition.settings,
        positions: &none,
    };
    definition
        .rulesets
        .iter()
        .filter(|rs| rs.name == event.name && rs.entity_type == entity.key.entity_type)
        .flat_map(|rs| &rs.rules)
        .filter_map(|call| {
            let rule = rules.get(&call.name)?;
            let props = template::render(&call.props, &ctx).ok()?;
            rule.positions(&props).ok()
        })
        .flatten()
        .collect()
}

/// Why an execution stopped early.
enum Abort {
    /// The event fails (rule failure without exception path, inline cap): only its audit is kept.
    Failed(String),
    /// A rule named positions the source does not hold (listed in [`Run::missing`]).
    Missing,
}

impl From<RuleError> for Abort {
    fn from(e: RuleError) -> Self {
        Abort::Failed(e.to_string())
    }
}

/// The entity and the positions it touched, as changed so far.
#[derive(Clone)]
struct State {
    status: String,
    attributes: Value,
    positions: BTreeMap<PositionKey, Position>,
    dirty: BTreeSet<PositionKey>,
}

struct Run<'a> {
    rules: &'a RuleRegistry,
    def: &'a Definition,
    key: &'a EntityKey,
    subtype: &'a str,
    /// Positions as the shell locked them, the base for `state.positions`.
    source: &'a BTreeMap<PositionKey, Position>,
    state: State,
    /// Positions named but not in `source`.
    missing: BTreeSet<PositionKey>,
    events: Vec<Local>,
    emitted: Vec<Emitted>,
    webhooks: Vec<Webhook>,
    audits: Vec<Audit>,
}

impl Run<'_> {
    fn execute(&mut self) -> Result<(), Abort> {
        let mut next = 0;
        while next < self.events.len() {
            self.run_event(next)?;
            next += 1;
        }
        Ok(())
    }

    fn run_event(&mut self, idx: usize) -> Result<(), Abort> {
        let def = self.def;
        let name = self.events[idx].name.clone();
        let status = self.state.status.clone();
        let normal = def.matching(RulesetKind::Normal, &name, &self.key.entity_type, &status);
        if normal.is_empty() {
            self.events[idx].status = EventStatus::NoMatch;
            let mut a = Audit::new(Category::NoMatch, name, idx, json!({"status": status}));
            a.status = EventStatus::NoMatch;
            self.audits.push(a);
            return Ok(());
        }
        let saved = (
            self.state.clone(),
            self.events.len(),
            self.emitted.len(),
            self.webhooks.len(),
        );
        match self.run_rulesets(idx, &normal) {
            Ok(()) => {
                self.events[idx].status = EventStatus::Success;
                Ok(())
            }
            Err(Abort::Failed(msg)) => {
                let exceptions = def.matching(RulesetKind::Exception, &name, &self.key.entity_type, &status);
                if exceptions.is_empty() {
                    return Err(Abort::Failed(msg));
                }
                // The failed pass leaves nothing behind; the exception rulesets start from the same state.
                let (state, events, emitted, webhooks) = saved;
                self.state = state;
                self.events.truncate(events);
                self.emitted.truncate(emitted);
                self.webhooks.truncate(webhooks);
                for a in &mut self.audits {
                    if a.source >= events {
                        a.source = idx;
                    }
                }
                self.audits
                    .push(Audit::new(Category::Exception, name, idx, json!({"error": msg})).failed(msg.clone()));
                self.run_rulesets(idx, &exceptions)?;
                self.events[idx].status = EventStatus::Success;
                self.events[idx].error = Some(msg);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn run_rulesets(&mut self, idx: usize, rulesets: &[&Ruleset]) -> Result<(), Abort> {
        for rs in rulesets {
            self.audits.push(Audit::new(
                Category::Ruleset,
                rs.name.clone(),
                idx,
                json!({"ruleset": rs.name, "kind": rs.kind, "triggers": rs.triggers}),
            ));
            for call in &rs.rules {
                let started = Instant::now();
                let result = self.run_rule(idx, call);
                let duration_us = started.elapsed().as_micros() as u64;
                let details = json!({"ruleset": rs.name, "rule": call.name, "duration_us": duration_us});
                match result {
                    Ok(actions) => {
                        self.audits
                            .push(Audit::new(Category::Rule, call.name.clone(), idx, details));
                        for action in actions {
                            self.apply(idx, action)?;
                        }
                    }
                    Err(Abort::Failed(msg)) => {
                        self.audits
                            .push(Audit::new(Category::Rule, call.name.clone(), idx, details).failed(msg.clone()));
                        return Err(Abort::Failed(format!("rule {} failed: {msg}", call.name)));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    fn ctx(&self, idx: usize) -> RuleContext<'_> {
        RuleContext {
            event: EventView {
                name: &self.events[idx].name,
                attributes: &self.events[idx].attributes,
            },
            entity: EntityView {
                entity_type: &self.key.entity_type,
                subtype: self.subtype,
                entity_ref: &self.key.entity_ref,
                status: &self.state.status,
                attributes: &self.state.attributes,
            },
            settings: &self.def.settings,
            positions: &self.state.positions,
        }
    }

    fn run_rule(&mut self, idx: usize, call: &RuleCall) -> Result<Vec<Action>, Abort> {
        let rules = self.rules;
        let Some(rule) = rules.get(&call.name) else {
            return Err(Abort::Failed(format!("unknown rule {:?}", call.name)));
        };
        let props = template::render(&call.props, &self.ctx(idx))?;
        let keys = rule.positions(&props)?;
        self.use_positions(&keys)?;
        Ok(rule.apply(&self.ctx(idx), &props)?)
    }

    /// Puts every named position into the working state; one the source does not hold stops the run.
    fn use_positions(&mut self, keys: &[PositionKey]) -> Result<(), Abort> {
        for k in keys {
            match self.source.get(k) {
                Some(base) => {
                    self.state.positions.entry(k.clone()).or_insert(*base);
                }
                None => {
                    self.missing.insert(k.clone());
                }
            }
        }
        if self.missing.is_empty() {
            Ok(())
        } else {
            Err(Abort::Missing)
        }
    }

    fn apply(&mut self, idx: usize, action: Action) -> Result<(), Abort> {
        let record = serde_json::to_value(&action).unwrap_or(Value::Null);
        let label = record
            .get("action")
            .and_then(Value::as_str)
            .unwrap_or("action")
            .to_owned();
        match action {
            Action::SetState { status } => {
                if !self.def.declares(&status) {
                    return Err(Abort::Failed(format!(
                        "status {status:?} is not declared by the workflow"
                    )));
                }
                self.state.status = status;
            }
            Action::SetAttribute { name, value } => {
                if !self.state.attributes.is_object() {
                    self.state.attributes = Value::Object(Map::new());
                }
                if let Some(m) = self.state.attributes.as_object_mut() {
                    m.insert(name, value);
                }
            }
            Action::SendEvent {
                event_name,
                entity: None,
                attributes,
            } => {
                if self.events.len() > MAX_INLINE_EVENTS {
                    return Err(Abort::Failed(format!(
                        "more than {MAX_INLINE_EVENTS} inline events in one execution"
                    )));
                }
                self.events.push(Local {
                    name: event_name,
                    attributes: Value::Object(attributes),
                    source: idx,
                    status: EventStatus::Pending,
                    error: None,
                });
            }
            Action::SendEvent {
                event_name,
                entity: Some(entity),
                attributes,
            } => self.emitted.push(Emitted {
                name: event_name,
                entity,
                attributes: Value::Object(attributes),
                delay_seconds: None,
                source: idx,
            }),
            Action::ScheduleEvent {
                event_name,
                delay_seconds,
                ..
            } if delay_seconds > MAX_DELAY_SECONDS => {
                return Err(Abort::Failed(format!(
                    "cannot schedule {event_name} {delay_seconds} s ahead: at most {MAX_DELAY_SECONDS} s"
                )));
            }
            Action::ScheduleEvent {
                event_name,
                entity,
                attributes,
                delay_seconds,
            } => self.emitted.push(Emitted {
                name: event_name,
                entity: entity.unwrap_or_else(|| self.key.clone()),
                attributes: Value::Object(attributes),
                delay_seconds: Some(delay_seconds),
                source: idx,
            }),
            Action::SendWebhook { url } => self.webhooks.push(Webhook { url, source: idx }),
            Action::Log { message } => {
                self.audits
                    .push(Audit::new(Category::Custom, "log", idx, json!({"message": message})));
                return Ok(());
            }
            Action::Reserve { position, qty } => self.change(&position, |p| {
                p.reserved = p.reserved.checked_add(qty).ok_or("reserved quantity overflows")?;
                Ok(())
            })?,
            Action::ConfirmSale { position, qty } => self.change(&position, |p| {
                if p.reserved < qty {
                    return Err(format!("only {} reserved", p.reserved));
                }
                p.reserved -= qty;
                p.on_hand -= qty;
                Ok(())
            })?,
            Action::Release { position, qty } => self.change(&position, |p| {
                if p.reserved < qty {
                    return Err(format!("only {} reserved", p.reserved));
                }
                p.reserved -= qty;
                Ok(())
            })?,
            Action::UpsertPosition { position, on_hand } => self.change(&position, |p| {
                p.on_hand = on_hand;
                Ok(())
            })?,
        }
        self.audits.push(Audit::new(Category::Action, label, idx, record));
        Ok(())
    }

    fn change(
        &mut self,
        key: &PositionKey,
        f: impl FnOnce(&mut Position) -> std::result::Result<(), String>,
    ) -> Result<(), Abort> {
        self.use_positions(std::slice::from_ref(key))?;
        let Some(p) = self.state.positions.get_mut(key) else {
            return Err(Abort::Failed(format!("position {key} not loaded")));
        };
        let mut next = *p;
        f(&mut next).map_err(|e| Abort::Failed(format!("position {key}: {e}")))?;
        if next.on_hand < 0 || next.reserved < 0 {
            return Err(Abort::Failed(format!("position {key} would go negative")));
        }
        *p = next;
        self.state.dirty.insert(key.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests;
