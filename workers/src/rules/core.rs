//! The `core.*` rules: status, attributes, events, webhooks, logging and deliberate failure.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{Action, EntityKey, Rule, RuleContext, RuleError};

/// Decodes rendered props into a rule's own struct.
pub(crate) fn parse<T: DeserializeOwned>(props: &Value) -> Result<T, RuleError> {
    serde_json::from_value(props.clone()).map_err(|e| RuleError::InvalidProps(e.to_string()))
}

fn entity_schema() -> Value {
    json!({
        "type": "object",
        "description": "target entity; omit for the same entity",
        "additionalProperties": false,
        "required": ["type", "ref"],
        "properties": {"type": {"type": "string"}, "ref": {"type": "string"}}
    })
}

/// Normalises a target: `None` or the same entity's key both mean "this entity".
fn target(entity: Option<EntityKey>, ctx: &RuleContext<'_>) -> Option<EntityKey> {
    entity.filter(|e| !(e.entity_type == ctx.entity.entity_type && e.entity_ref == ctx.entity.entity_ref))
}

/// `core.SetState {status}`.
#[derive(Debug, Clone, Copy)]
pub struct SetState;

impl Rule for SetState {
    fn name(&self) -> &'static str {
        "core.SetState"
    }
    fn description(&self) -> &'static str {
        "sets the entity's status (a status the workflow declares)"
    }
    fn props_schema(&self) -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["status"],
            "properties": {"status": {"type": "string", "description": "the new status"}}
        })
    }
    fn apply(&self, _ctx: &RuleContext<'_>, props: &Value) -> Result<Vec<Action>, RuleError> {
        #[derive(Deserialize)]
        struct P {
            status: String,
        }
        let p: P = parse(props)?;
        Ok(vec![Action::SetState { status: p.status }])
    }
}

#[derive(Deserialize)]
struct EventProps {
    event_name: String,
    #[serde(default)]
    entity: Option<EntityKey>,
    #[serde(default)]
    attributes: Map<String, Value>,
}

/// `core.SendEvent {event_name, entity?, attributes?}`.
#[derive(Debug, Clone, Copy)]
pub struct SendEvent;

impl Rule for SendEvent {
    fn name(&self) -> &'static str {
        "core.SendEvent"
    }
    fn description(&self) -> &'static str {
        "sends an event: inline for the same entity, queued for another entity"
    }
    fn props_schema(&self) -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["event_name"],
            "properties": {
                "event_name": {"type": "string"},
                "entity": entity_schema(),
                "attributes": {"type": "object", "description": "event attributes; string values may be templates"}
            }
        })
    }
    fn apply(&self, ctx: &RuleContext<'_>, props: &Value) -> Result<Vec<Action>, RuleError> {
        let p: EventProps = parse(props)?;
        Ok(vec![Action::SendEvent {
            event_name: p.event_name,
            entity: target(p.entity, ctx),
            attributes: p.attributes,
        }])
    }
}

/// `core.ScheduleEvent {event_name, delay_seconds, entity?, attributes?}`.
#[derive(Debug, Clone, Copy)]
pub struct ScheduleEvent;

impl Rule for ScheduleEvent {
    fn name(&self) -> &'static str {
        "core.ScheduleEvent"
    }
    fn description(&self) -> &'static str {
        "sends an event after delay_seconds (always queued, cancellable until it fires)"
    }
    fn props_schema(&self) -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["event_name", "delay_seconds"],
            "properties": {
                "event_name": {"type": "string"},
                "delay_seconds": {"type": "integer", "minimum": 0},
                "entity": entity_schema(),
                "attributes": {"type": "object"}
            }
        })
    }
    fn apply(&self, _ctx: &RuleContext<'_>, props: &Value) -> Result<Vec<Action>, RuleError> {
        let delay = match props.get("delay_seconds") {
            Some(Value::Number(n)) => n.as_u64(),
            // A template over a string setting renders to a string.
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| RuleError::InvalidProps("delay_seconds must be a non-negative integer".into()))?;
        let mut rest = props.clone();
        if let Some(m) = rest.as_object_mut() {
            m.remove("delay_seconds");
        }
        let p: EventProps = parse(&rest)?;
        Ok(vec![Action::ScheduleEvent {
            event_name: p.event_name,
            entity: p.entity,
            attributes: p.attributes,
            delay_seconds: delay,
        }])
    }
}

/// `core.IfAttribute {attribute, equals, event_name, else_event_name?}`: branches by sending one of two events
/// to the same entity, carrying the current event's attributes.
#[derive(Debug, Clone, Copy)]
pub struct IfAttribute;

impl Rule for IfAttribute {
    fn name(&self) -> &'static str {
        "core.IfAttribute"
    }
    fn description(&self) -> &'static str {
        "sends event_name when the value at attribute (a path such as event.attributes.paid) equals equals, \
         else else_event_name if given"
    }
    fn props_schema(&self) -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["attribute", "equals", "event_name"],
            "properties": {
                "attribute": {"type": "string", "description": "event.attributes.x or entity.attributes.x"},
                "equals": {"description": "any JSON value"},
                "event_name": {"type": "string"},
                "else_event_name": {"type": "string"}
            }
        })
    }
    fn validate(&self, props: &Value) -> Vec<super::Problem> {
        let mut p = super::schema::check(&self.props_schema(), props);
        if let Some(a) = props.get("attribute").and_then(Value::as_str) {
            if !(a.starts_with("event.") || a.starts_with("entity.") || a.starts_with("settings.")) {
                p.push(super::Problem::new(
                    "/attribute",
                    "must be a path starting with event., entity. or settings.",
                ));
            }
        }
        p
    }
    fn apply(&self, ctx: &RuleContext<'_>, props: &Value) -> Result<Vec<Action>, RuleError> {
        #[derive(Deserialize)]
        struct P {
            attribute: String,
            equals: Value,
            event_name: String,
            #[serde(default)]
            else_event_name: Option<String>,
        }
        let p: P = parse(props)?;
        let hit = ctx.lookup(&p.attribute).as_ref() == Some(&p.equals);
        let name = if hit { Some(p.event_name) } else { p.else_event_name };
        let attributes = ctx.event.attributes.as_object().cloned().unwrap_or_default();
        Ok(name
            .map(|event_name| Action::SendEvent {
                event_name,
                entity: None,
                attributes,
            })
            .into_iter()
            .collect())
    }
}

/// `core.SetAttribute {name, value}`.
#[derive(Debug, Clone, Copy)]
pub struct SetAttribute;

impl Rule for SetAttribute {
    fn name(&self) -> &'static str {
        "core.SetAttribute"
    }
    fn description(&self) -> &'static str {
        "sets one attribute of the entity (value may be any JSON or a template)"
    }
    fn props_schema(&self) -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["name", "value"],
            "properties": {"name": {"type": "string"}, "value": {"description": "any JSON value"}}
        })
    }
    fn apply(&self, _ctx: &RuleContext<'_>, props: &Value) -> Result<Vec<Action>, RuleError> {
        #[derive(Deserialize)]
        struct P {
            name: String,
            value: Value,
        }
        let p: P = parse(props)?;
        if p.name.is_empty() {
            return Err(RuleError::InvalidProps("name must not be empty".into()));
        }
        Ok(vec![Action::SetAttribute {
            name: p.name,
            value: p.value,
        }])
    }
}

/// `core.SendWebhook {url}`.
#[derive(Debug, Clone, Copy)]
pub struct SendWebhook;

impl Rule for SendWebhook {
    fn name(&self) -> &'static str {
        "core.SendWebhook"
    }
    fn description(&self) -> &'static str {
        "POSTs the event JSON to url, signed with the account's webhook secret, retried per webhook.retry"
    }
    fn props_schema(&self) -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["url"],
            "properties": {"url": {"type": "string", "description": "http or https URL, often {{settings.x}}"}}
        })
    }
    fn validate(&self, props: &Value) -> Vec<super::Problem> {
        let mut p = super::schema::check(&self.props_schema(), props);
        if let Some(u) = props.get("url").and_then(Value::as_str) {
            if !(super::schema::is_template(u) || u.starts_with("http://") || u.starts_with("https://")) {
                p.push(super::Problem::new("/url", "must be an http or https URL"));
            }
        }
        p
    }
    fn apply(&self, _ctx: &RuleContext<'_>, props: &Value) -> Result<Vec<Action>, RuleError> {
        #[derive(Deserialize)]
        struct P {
            url: String,
        }
        let p: P = parse(props)?;
        if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
            return Err(RuleError::InvalidProps(format!("url {:?} is not http or https", p.url)));
        }
        Ok(vec![Action::SendWebhook { url: p.url }])
    }
}

/// Props of the rules that take only a `message`.
fn message_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["message"],
        "properties": {"message": {"type": "string"}}
    })
}

/// `core.Log {message}`.
#[derive(Debug, Clone, Copy)]
pub struct Log;

impl Rule for Log {
    fn name(&self) -> &'static str {
        "core.Log"
    }
    fn description(&self) -> &'static str {
        "records message as a custom audit record"
    }
    fn props_schema(&self) -> Value {
        message_schema()
    }
    fn apply(&self, _ctx: &RuleContext<'_>, props: &Value) -> Result<Vec<Action>, RuleError> {
        let message = match props.get("message") {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => return Err(RuleError::InvalidProps("message is required".into())),
        };
        Ok(vec![Action::Log { message }])
    }
}

/// `core.Fail {message}`: fails the rule, for exception paths and tests.
#[derive(Debug, Clone, Copy)]
pub struct Fail;

impl Rule for Fail {
    fn name(&self) -> &'static str {
        "core.Fail"
    }
    fn description(&self) -> &'static str {
        "fails with message (routes to the exception ruleset, else the event fails)"
    }
    fn props_schema(&self) -> Value {
        message_schema()
    }
    fn apply(&self, _ctx: &RuleContext<'_>, props: &Value) -> Result<Vec<Action>, RuleError> {
        let message = props
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("core.Fail")
            .to_owned();
        Err(RuleError::Failed(message))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::Fixture;
    use super::*;

    fn key(t: &str, r: &str) -> EntityKey {
        EntityKey {
            entity_type: t.into(),
            entity_ref: r.into(),
        }
    }

    /// SetState, SetAttribute and Log return their one action.
    #[test]
    fn simple_rules_return_their_action() {
        let f = Fixture::new();
        let c = f.ctx();
        assert_eq!(
            SetState.apply(&c, &json!({"status": "BOOKED"})).unwrap(),
            [Action::SetState {
                status: "BOOKED".into()
            }]
        );
        assert_eq!(
            SetAttribute.apply(&c, &json!({"name": "n", "value": [1]})).unwrap(),
            [Action::SetAttribute {
                name: "n".into(),
                value: json!([1])
            }]
        );
        assert_eq!(
            Log.apply(&c, &json!({"message": "hi"})).unwrap(),
            [Action::Log { message: "hi".into() }]
        );
        assert!(SetState.apply(&c, &json!({})).is_err());
        assert!(SetAttribute.apply(&c, &json!({"name": "", "value": 1})).is_err());
    }

    /// A target equal to the running entity is the same entity (inline); another entity stays a target.
    #[test]
    fn send_event_targets_same_or_other_entity() {
        let f = Fixture::new();
        let c = f.ctx();
        let same = SendEvent
            .apply(
                &c,
                &json!({"event_name": "X", "entity": {"type": "ORDER", "ref": "O-1"}}),
            )
            .unwrap();
        assert_eq!(
            same,
            [Action::SendEvent {
                event_name: "X".into(),
                entity: None,
                attributes: Map::new()
            }]
        );
        let other = SendEvent
            .apply(
                &c,
                &json!({"event_name": "X", "entity": {"type": "INV", "ref": "I"}, "attributes": {"a": 1}}),
            )
            .unwrap();
        assert_eq!(
            other,
            [Action::SendEvent {
                event_name: "X".into(),
                entity: Some(key("INV", "I")),
                attributes: json!({"a": 1}).as_object().unwrap().clone()
            }]
        );
    }

    /// ScheduleEvent takes its delay as a number or a rendered numeric string, and refuses anything else.
    #[test]
    fn schedule_event_parses_delay() {
        let f = Fixture::new();
        let c = f.ctx();
        for delay in [json!(30), json!("30")] {
            let a = ScheduleEvent
                .apply(&c, &json!({"event_name": "Retry", "delay_seconds": delay}))
                .unwrap();
            assert_eq!(
                a,
                [Action::ScheduleEvent {
                    event_name: "Retry".into(),
                    entity: None,
                    attributes: Map::new(),
                    delay_seconds: 30
                }]
            );
        }
        assert!(ScheduleEvent
            .apply(&c, &json!({"event_name": "R", "delay_seconds": -1}))
            .is_err());
    }

    /// IfAttribute sends the first event on a match, the else event otherwise, nothing without one.
    #[test]
    fn if_attribute_branches() {
        let f = Fixture::new();
        let c = f.ctx();
        let props = json!({"attribute": "event.attributes.paid", "equals": true, "event_name": "Paid",
                           "else_event_name": "Unpaid"});
        let a = IfAttribute.apply(&c, &props).unwrap();
        assert!(
            matches!(&a[..], [Action::SendEvent { event_name, entity: None, attributes }]
            if event_name == "Paid" && attributes["qty"] == 3)
        );
        let props = json!({"attribute": "entity.attributes.total", "equals": 5, "event_name": "Five",
                           "else_event_name": "NotFive"});
        assert!(matches!(&IfAttribute.apply(&c, &props).unwrap()[..],
            [Action::SendEvent { event_name, .. }] if event_name == "NotFive"));
        let props = json!({"attribute": "entity.attributes.missing", "equals": 1, "event_name": "X"});
        assert!(IfAttribute.apply(&c, &props).unwrap().is_empty());
        assert_eq!(
            IfAttribute
                .validate(&json!({"attribute": "paid", "equals": 1, "event_name": "X"}))
                .len(),
            1
        );
    }

    /// SendWebhook accepts http(s) only; Fail always fails with its message.
    #[test]
    fn webhook_and_fail() {
        let f = Fixture::new();
        let c = f.ctx();
        assert_eq!(
            SendWebhook.apply(&c, &json!({"url": "https://erp/x"})).unwrap(),
            [Action::SendWebhook {
                url: "https://erp/x".into()
            }]
        );
        assert!(SendWebhook.apply(&c, &json!({"url": "ftp://erp/x"})).is_err());
        assert_eq!(SendWebhook.validate(&json!({"url": "ftp://x"})).len(), 1);
        assert!(SendWebhook.validate(&json!({"url": "{{settings.erp_url}}"})).is_empty());
        assert_eq!(
            Fail.apply(&c, &json!({"message": "boom"})),
            Err(RuleError::Failed("boom".into()))
        );
    }
}
