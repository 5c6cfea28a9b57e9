//! The `inventory.*` rules over inventory positions keyed by `(sku_ref, location_ref)`: `on_hand`, `reserved`,
//! and `available = on_hand - reserved`. The engine loads the named positions (locked) before the rule runs and
//! writes the changed ones in the execution's transaction.

use serde_json::{json, Map, Value};

use super::core::parse;
use super::{Action, EntityKey, PositionKey, Rule, RuleContext, RuleError};

fn qty_schema(what: &str) -> Value {
    json!({"type": "integer", "minimum": 0, "description": what})
}

fn base_properties() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("sku_ref".into(), json!({"type": "string"}));
    m.insert("location_ref".into(), json!({"type": "string"}));
    m
}

/// Schema of a rule acting on one position: `sku_ref`, `location_ref` and the count field `field`.
fn position_schema(field: &str, what: &str) -> Value {
    let mut p = base_properties();
    p.insert(field.into(), qty_schema(what));
    json!({"type": "object", "additionalProperties": false, "required": ["sku_ref", "location_ref", field],
           "properties": p})
}

/// Checks that `qty` reserved units of the props' position exist, for the rules that consume reservations.
fn reserved(ctx: &RuleContext<'_>, props: &Value, verb: &str) -> Result<(PositionKey, i64), RuleError> {
    let key = position_key(props)?;
    let qty = quantity(props, "qty")?;
    let pos = ctx.position(&key);
    if pos.reserved < qty {
        return Err(RuleError::Failed(format!(
            "cannot {verb} {qty} of {key}: only {} reserved",
            pos.reserved
        )));
    }
    Ok((key, qty))
}

fn position_key(props: &Value) -> Result<PositionKey, RuleError> {
    let get = |name: &str| match props.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(RuleError::InvalidProps(format!("{name} must be a non-empty string"))),
    };
    Ok(PositionKey {
        sku_ref: get("sku_ref")?,
        location_ref: get("location_ref")?,
    })
}

/// A non-negative integer prop, given as a number or a rendered numeric string.
fn quantity(props: &Value, name: &str) -> Result<i64, RuleError> {
    let n = match props.get(name) {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    match n {
        Some(n) if n >= 0 => Ok(n),
        _ => Err(RuleError::InvalidProps(format!(
            "{name} must be a non-negative integer, got {}",
            props.get(name).cloned().unwrap_or(Value::Null)
        ))),
    }
}

fn qty_attributes(key: &PositionKey, qty: i64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("sku_ref".into(), json!(key.sku_ref));
    m.insert("location_ref".into(), json!(key.location_ref));
    m.insert("qty".into(), json!(qty));
    m
}

/// `inventory.Reserve {sku_ref, location_ref, qty, reserved_event?, shortfall_event?, reply_to?}`.
#[derive(Debug, Clone, Copy)]
pub struct Reserve;

impl Rule for Reserve {
    fn name(&self) -> &'static str {
        "inventory.Reserve"
    }
    fn description(&self) -> &'static str {
        "reserves qty of a position when available; sends reserved_event (or shortfall_event, else fails) to \
         reply_to (default: this entity) with {sku_ref, location_ref, qty[, available]}"
    }
    fn props_schema(&self) -> Value {
        let mut p = base_properties();
        p.insert("qty".into(), qty_schema("units to reserve"));
        p.insert(
            "reserved_event".into(),
            json!({"type": "string", "description": "sent after reserving"}),
        );
        p.insert(
            "shortfall_event".into(),
            json!({"type": "string", "description": "sent when available < qty; without it the rule fails"}),
        );
        p.insert(
            "reply_to".into(),
            json!({"type": "object", "additionalProperties": false, "required": ["type", "ref"],
                   "properties": {"type": {"type": "string"}, "ref": {"type": "string"}}}),
        );
        json!({"type": "object", "additionalProperties": false, "required": ["sku_ref", "location_ref", "qty"],
               "properties": p})
    }
    fn positions(&self, props: &Value) -> Result<Vec<PositionKey>, RuleError> {
        Ok(vec![position_key(props)?])
    }
    fn apply(&self, ctx: &RuleContext<'_>, props: &Value) -> Result<Vec<Action>, RuleError> {
        let key = position_key(props)?;
        let qty = quantity(props, "qty")?;
        let reply_to: Option<EntityKey> = match props.get("reply_to") {
            Some(v) => Some(parse(v)?),
            None => None,
        };
        let reply_to =
            reply_to.filter(|e| !(e.entity_type == ctx.entity.entity_type && e.entity_ref == ctx.entity.entity_ref));
        let available = ctx.position(&key).available();
        let event = |name: &str, attributes| Action::SendEvent {
            event_name: name.to_owned(),
            entity: reply_to.clone(),
            attributes,
        };
        if available >= qty {
            let mut out = vec![Action::Reserve {
                position: key.clone(),
                qty,
            }];
            if let Some(name) = props.get("reserved_event").and_then(Value::as_str) {
                out.push(event(name, qty_attributes(&key, qty)));
            }
            return Ok(out);
        }
        match props.get("shortfall_event").and_then(Value::as_str) {
            Some(name) => {
                let mut attributes = qty_attributes(&key, qty);
                attributes.insert("available".into(), json!(available));
                Ok(vec![event(name, attributes)])
            }
            None => Err(RuleError::Failed(format!(
                "cannot reserve {qty} of {key}: {available} available"
            ))),
        }
    }
}

/// `inventory.ConfirmSale {sku_ref, location_ref, qty}`.
#[derive(Debug, Clone, Copy)]
pub struct ConfirmSale;

impl Rule for ConfirmSale {
    fn name(&self) -> &'static str {
        "inventory.ConfirmSale"
    }
    fn description(&self) -> &'static str {
        "sells qty reserved units of a position: on_hand -= qty, reserved -= qty (fails if fewer are reserved)"
    }
    fn props_schema(&self) -> Value {
        position_schema("qty", "units sold")
    }
    fn positions(&self, props: &Value) -> Result<Vec<PositionKey>, RuleError> {
        Ok(vec![position_key(props)?])
    }
    fn apply(&self, ctx: &RuleContext<'_>, props: &Value) -> Result<Vec<Action>, RuleError> {
        let (position, qty) = reserved(ctx, props, "sell")?;
        Ok(vec![Action::ConfirmSale { position, qty }])
    }
}

/// `inventory.Release {sku_ref, location_ref, qty}`.
#[derive(Debug, Clone, Copy)]
pub struct Release;

impl Rule for Release {
    fn name(&self) -> &'static str {
        "inventory.Release"
    }
    fn description(&self) -> &'static str {
        "gives qty reserved units of a position back: reserved -= qty (fails if fewer are reserved)"
    }
    fn props_schema(&self) -> Value {
        position_schema("qty", "units released")
    }
    fn positions(&self, props: &Value) -> Result<Vec<PositionKey>, RuleError> {
        Ok(vec![position_key(props)?])
    }
    fn apply(&self, ctx: &RuleContext<'_>, props: &Value) -> Result<Vec<Action>, RuleError> {
        let (position, qty) = reserved(ctx, props, "release")?;
        Ok(vec![Action::Release { position, qty }])
    }
}

/// `inventory.UpsertPosition {sku_ref, location_ref, on_hand}`.
#[derive(Debug, Clone, Copy)]
pub struct UpsertPosition;

impl Rule for UpsertPosition {
    fn name(&self) -> &'static str {
        "inventory.UpsertPosition"
    }
    fn description(&self) -> &'static str {
        "sets a position's on_hand (creating the position), keeping its reservations"
    }
    fn props_schema(&self) -> Value {
        position_schema("on_hand", "units on hand")
    }
    fn positions(&self, props: &Value) -> Result<Vec<PositionKey>, RuleError> {
        Ok(vec![position_key(props)?])
    }
    fn apply(&self, _ctx: &RuleContext<'_>, props: &Value) -> Result<Vec<Action>, RuleError> {
        Ok(vec![Action::UpsertPosition {
            position: position_key(props)?,
            on_hand: quantity(props, "on_hand")?,
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::Fixture;
    use super::super::Position;
    use super::*;

    fn key() -> PositionKey {
        PositionKey {
            sku_ref: "SKU-1".into(),
            location_ref: "DC1".into(),
        }
    }

    fn fixture(on_hand: i64, reserved: i64) -> Fixture {
        let mut f = Fixture::new();
        f.positions.insert(key(), Position { on_hand, reserved });
        f
    }

    /// Reserve reserves and replies when enough is available; on shortfall it sends the shortfall event, or fails
    /// without one.
    #[test]
    fn reserve_reserves_or_reports_shortfall() {
        let props = json!({"sku_ref": "SKU-1", "location_ref": "DC1", "qty": "3", "reserved_event": "Reserved",
                           "shortfall_event": "Shortfall", "reply_to": {"type": "ORDER", "ref": "O-9"}});
        assert_eq!(Reserve.positions(&props).unwrap(), [key()]);
        let f = fixture(5, 2);
        let a = Reserve.apply(&f.ctx(), &props).unwrap();
        assert_eq!(
            a[0],
            Action::Reserve {
                position: key(),
                qty: 3
            }
        );
        assert!(
            matches!(&a[1], Action::SendEvent { event_name, entity: Some(e), attributes }
            if event_name == "Reserved" && e.entity_ref == "O-9" && attributes["qty"] == 3)
        );
        let f = fixture(5, 3);
        let a = Reserve.apply(&f.ctx(), &props).unwrap();
        assert!(matches!(&a[..], [Action::SendEvent { event_name, attributes, .. }]
            if event_name == "Shortfall" && attributes["available"] == 2));
        let bare = json!({"sku_ref": "SKU-1", "location_ref": "DC1", "qty": 3});
        assert!(matches!(Reserve.apply(&f.ctx(), &bare), Err(RuleError::Failed(_))));
        // A position that does not exist has nothing available.
        assert!(Reserve.apply(&Fixture::new().ctx(), &bare).is_err());
    }

    /// ConfirmSale and Release need that many reserved units.
    #[test]
    fn confirm_sale_and_release_need_reservations() {
        let props = json!({"sku_ref": "SKU-1", "location_ref": "DC1", "qty": 2});
        let f = fixture(5, 2);
        assert_eq!(
            ConfirmSale.apply(&f.ctx(), &props).unwrap(),
            [Action::ConfirmSale {
                position: key(),
                qty: 2
            }]
        );
        assert_eq!(
            Release.apply(&f.ctx(), &props).unwrap(),
            [Action::Release {
                position: key(),
                qty: 2
            }]
        );
        let f = fixture(5, 1);
        assert!(ConfirmSale.apply(&f.ctx(), &props).is_err());
        assert!(Release.apply(&f.ctx(), &props).is_err());
    }

    /// UpsertPosition sets on_hand; negative or non-numeric quantities are refused.
    #[test]
    fn upsert_position_sets_on_hand() {
        let f = Fixture::new();
        assert_eq!(
            UpsertPosition
                .apply(
                    &f.ctx(),
                    &json!({"sku_ref": "SKU-1", "location_ref": "DC1", "on_hand": 10})
                )
                .unwrap(),
            [Action::UpsertPosition {
                position: key(),
                on_hand: 10
            }]
        );
        for bad in [json!(-1), json!("ten"), json!(null)] {
            let props = json!({"sku_ref": "SKU-1", "location_ref": "DC1", "on_hand": bad});
            assert!(UpsertPosition.apply(&f.ctx(), &props).is_err());
        }
        assert!(UpsertPosition
            .apply(&f.ctx(), &json!({"sku_ref": "", "location_ref": "DC1", "on_hand": 1}))
            .is_err());
        assert_eq!(
            UpsertPosition
                .validate(&json!({"sku_ref": "SKU-1", "on_hand": "x"}))
                .len(),
            2
        );
    }
}
