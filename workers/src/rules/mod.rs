//! The rule contract of the orchestration engine: pure rules that read an event and its entity and return
//! [`Action`]s; the engine's interpreter applies them.
//!
//! A rule never touches storage. The interpreter renders the rule's string props as templates ([`template`]),
//! loads the inventory positions the rule names ([`Rule::positions`]) into the [`RuleContext`], calls
//! [`Rule::apply`], and applies the returned actions to its in-memory copy of the entity before the next rule
//! runs. Everything commits in one transaction, or nothing does.
//!
//! # Adding a rule
//!
//! 1. Write one file (or add to the file of its family) with a unit struct implementing [`Rule`]: a `name`
//!    (`family.Name`), a `description`, a JSON Schema of its props (`type`, `properties`, `required`; string
//!    props may hold templates), and `apply`.
//! 2. Add one `.register(...)` line to [`registry()`].

mod core;
mod inventory;
pub mod schema;
pub mod template;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use self::core::{Fail, IfAttribute, Log, ScheduleEvent, SendEvent, SendWebhook, SetAttribute, SetState};
pub use self::inventory::{ConfirmSale, Release, Reserve, UpsertPosition};
pub use self::schema::Problem;

/// An entity named by type and ref, the key events are addressed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntityKey {
    /// Entity type, e.g. `ORDER`.
    #[serde(rename = "type")]
    pub entity_type: String,
    /// The entity's reference within its type.
    #[serde(rename = "ref")]
    pub entity_ref: String,
}

/// An inventory position's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PositionKey {
    /// Stock-keeping unit.
    pub sku_ref: String,
    /// Where the stock is.
    pub location_ref: String,
}

impl fmt::Display for PositionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.sku_ref, self.location_ref)
    }
}

/// Quantities of one inventory position; `available` is derived, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Position {
    /// Units physically present.
    pub on_hand: i64,
    /// Units promised to orders and not yet sold.
    pub reserved: i64,
}

impl Position {
    /// `on_hand - reserved`.
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved
    }
}

/// The event a rule runs for.
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    /// Event name.
    pub name: &'a str,
    /// Event attributes (a JSON object).
    pub attributes: &'a Value,
}

/// The entity a rule runs against, as changed by the rules before it in this execution.
#[derive(Debug, Clone, Copy)]
pub struct EntityView<'a> {
    /// Entity type.
    pub entity_type: &'a str,
    /// Entity subtype.
    pub subtype: &'a str,
    /// Entity reference.
    pub entity_ref: &'a str,
    /// Current status.
    pub status: &'a str,
    /// Attributes (a JSON object).
    pub attributes: &'a Value,
}

/// Everything a rule may read.
#[derive(Debug, Clone, Copy)]
pub struct RuleContext<'a> {
    /// The event being executed.
    pub event: EventView<'a>,
    /// The entity it runs against.
    pub entity: EntityView<'a>,
    /// The workflow's settings.
    pub settings: &'a BTreeMap<String, String>,
    /// The inventory positions named by the rule's [`Rule::positions`], as of this point of the execution (a
    /// missing key is a position that does not exist yet).
    pub positions: &'a BTreeMap<PositionKey, Position>,
}

impl RuleContext<'_> {
    /// The value at a dotted path: `event.name`, `event.attributes.x.y`, `entity.ref|type|subtype|status`,
    /// `entity.attributes.x`, `settings.<key>` (the key may itself contain dots).
    pub fn lookup(&self, path: &str) -> Option<Value> {
        let (head, rest) = path.split_once('.')?;
        match head {
            "event" => match rest {
                "name" => Some(Value::String(self.event.name.to_owned())),
                _ => descend(self.event.attributes, rest.strip_prefix("attributes.")?).cloned(),
            },
            "entity" => match rest {
                "ref" => Some(Value::String(self.entity.entity_ref.to_owned())),
                "type" => Some(Value::String(self.entity.entity_type.to_owned())),
                "subtype" => Some(Value::String(self.entity.subtype.to_owned())),
                "status" => Some(Value::String(self.entity.status.to_owned())),
                _ => descend(self.entity.attributes, rest.strip_prefix("attributes.")?).cloned(),
            },
            "settings" => self.settings.get(rest).map(|s| Value::String(s.clone())),
            _ => None,
        }
    }

    /// The position at `key`, or an empty one.
    pub fn position(&self, key: &PositionKey) -> Position {
        self.positions.get(key).copied().unwrap_or_default()
    }
}

fn descend<'v>(mut v: &'v Value, path: &str) -> Option<&'v Value> {
    for part in path.split('.') {
        v = match v {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// What a rule asks the interpreter to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Change the entity's status.
    SetState {
        /// The new status (declared by the workflow).
        status: String,
    },
    /// Set one attribute of the entity.
    SetAttribute {
        /// Attribute name.
        name: String,
        /// Its new value.
        value: Value,
    },
    /// Send an event now: inline when it targets the same entity, queued otherwise.
    SendEvent {
        /// Event name.
        event_name: String,
        /// Target; `None` = the same entity.
        entity: Option<EntityKey>,
        /// Event attributes.
        attributes: Map<String, Value>,
    },
    /// Send an event later (always queued).
    ScheduleEvent {
        /// Event name.
        event_name: String,
        /// Target; `None` = the same entity.
        entity: Option<EntityKey>,
        /// Event attributes.
        attributes: Map<String, Value>,
        /// Delay from the execution's commit.
        delay_seconds: u64,
    },
    /// Deliver the event to a URL (a job of its own, signed, retried).
    SendWebhook {
        /// http or https URL.
        url: String,
    },
    /// Record a custom audit line.
    Log {
        /// The message.
        message: String,
    },
    /// Reserve units of a position (`reserved += qty`).
    Reserve {
        /// The position.
        position: PositionKey,
        /// Units.
        qty: i64,
    },
    /// Sell reserved units (`on_hand -= qty`, `reserved -= qty`).
    ConfirmSale {
        /// The position.
        position: PositionKey,
        /// Units.
        qty: i64,
    },
    /// Give reserved units back (`reserved -= qty`).
    Release {
        /// The position.
        position: PositionKey,
        /// Units.
        qty: i64,
    },
    /// Set a position's on-hand quantity, creating it if needed.
    UpsertPosition {
        /// The position.
        position: PositionKey,
        /// Units on hand.
        on_hand: i64,
    },
}

/// Why a rule failed; the execution then takes the exception path or fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// The rendered props do not fit the rule.
    #[error("invalid props: {0}")]
    InvalidProps(String),
    /// A template names a value that does not exist.
    #[error("template {0:?} refers to a missing value")]
    MissingValue(String),
    /// The rule refused (e.g. `core.Fail`, not enough stock).
    #[error("{0}")]
    Failed(String),
}

/// A rule: validated props in, actions out.
pub trait Rule: Send + Sync + 'static {
    /// The registered name, e.g. `core.SetState`.
    fn name(&self) -> &'static str;
    /// One line for `GET /api/rules`.
    fn description(&self) -> &'static str;
    /// JSON Schema of the props.
    fn props_schema(&self) -> Value;
    /// Problems with stored props (before templates are rendered); the default checks the schema.
    fn validate(&self, props: &Value) -> Vec<Problem> {
        schema::check(&self.props_schema(), props)
    }
    /// Inventory positions `apply` needs, from rendered props; the engine locks them first.
    fn positions(&self, _props: &Value) -> Result<Vec<PositionKey>, RuleError> {
        Ok(Vec::new())
    }
    /// Runs the rule on rendered props.
    fn apply(&self, ctx: &RuleContext<'_>, props: &Value) -> Result<Vec<Action>, RuleError>;
}

/// Rules by name.
#[derive(Clone, Default)]
pub struct RuleRegistry {
    by_name: BTreeMap<&'static str, Arc<dyn Rule>>,
}

impl fmt::Debug for RuleRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}

/// One entry of `GET /api/rules`.
#[derive(Debug, Clone, Serialize)]
pub struct RuleInfo {
    /// Rule name.
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
    /// JSON Schema of its props.
    pub props: Value,
}

impl RuleRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule, replacing one of the same name.
    pub fn register(&mut self, rule: impl Rule) -> &mut Self {
        self.by_name.insert(rule.name(), Arc::new(rule));
        self
    }

    /// The rule of a name.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Rule>> {
        self.by_name.get(name)
    }

    /// Every rule, sorted by name.
    pub fn rules(&self) -> Vec<RuleInfo> {
        self.by_name
            .values()
            .map(|r| RuleInfo {
                name: r.name(),
                description: r.description(),
                props: r.props_schema(),
            })
            .collect()
    }
}

/// All built-in rules: `core.*` and `inventory.*`.
pub fn registry() -> RuleRegistry {
    let mut r = RuleRegistry::new();
    r.register(SetState)
        .register(SendEvent)
        .register(ScheduleEvent)
        .register(IfAttribute)
        .register(SetAttribute)
        .register(SendWebhook)
        .register(Log)
        .register(Fail)
        .register(Reserve)
        .register(ConfirmSale)
        .register(Release)
        .register(UpsertPosition);
    r
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// Owned pieces of a context, borrowed by [`Fixture::ctx`].
    pub struct Fixture {
        pub event_attributes: Value,
        pub entity_attributes: Value,
        pub settings: BTreeMap<String, String>,
        pub positions: BTreeMap<PositionKey, Position>,
        pub status: String,
    }

    impl Fixture {
        pub fn new() -> Self {
            Fixture {
                event_attributes: serde_json::json!({"paid": true, "qty": 3, "note": "rush"}),
                entity_attributes: serde_json::json!({"total": 120, "sku": "SKU-1", "lines": [{"qty": 2}]}),
                settings: [("erp_url".to_owned(), "http://erp.example/hook".to_owned())].into(),
                positions: BTreeMap::new(),
                status: "CREATED".to_owned(),
            }
        }

        pub fn ctx(&self) -> RuleContext<'_> {
            RuleContext {
                event: EventView {
                    name: "CREATE",
                    attributes: &self.event_attributes,
                },
                entity: EntityView {
                    entity_type: "ORDER",
                    subtype: "HD",
                    entity_ref: "O-1",
                    status: &self.status,
                    attributes: &self.entity_attributes,
                },
                settings: &self.settings,
                positions: &self.positions,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::Fixture;
    use super::*;

    /// The registry lists every built-in rule by name, each with a description and an object schema.
    #[test]
    fn registry_lists_every_builtin_rule() {
        let names: Vec<_> = registry().rules().iter().map(|r| r.name).collect();
        assert_eq!(
            names,
            [
                "core.Fail",
                "core.IfAttribute",
                "core.Log",
                "core.ScheduleEvent",
                "core.SendEvent",
                "core.SendWebhook",
                "core.SetAttribute",
                "core.SetState",
                "inventory.ConfirmSale",
                "inventory.Release",
                "inventory.Reserve",
                "inventory.UpsertPosition",
            ]
        );
        for r in registry().rules() {
            assert!(!r.description.is_empty());
            assert_eq!(r.props["type"], "object", "{}", r.name);
        }
    }

    /// Paths reach event, entity and settings values; unknown paths are `None`.
    #[test]
    fn lookup_follows_dotted_paths() {
        let f = Fixture::new();
        let c = f.ctx();
        assert_eq!(c.lookup("event.attributes.qty"), Some(serde_json::json!(3)));
        assert_eq!(c.lookup("event.name"), Some(serde_json::json!("CREATE")));
        assert_eq!(c.lookup("entity.ref"), Some(serde_json::json!("O-1")));
        assert_eq!(c.lookup("entity.attributes.lines.0.qty"), Some(serde_json::json!(2)));
        assert_eq!(
            c.lookup("settings.erp_url"),
            Some(serde_json::json!("http://erp.example/hook"))
        );
        assert_eq!(c.lookup("entity.attributes.nope"), None);
        assert_eq!(c.lookup("other.x"), None);
        assert_eq!(c.lookup("event"), None);
    }
}
