//! The interpreter without a database: each case is a workflow, an event and the positions the shell holds, and
//! the part of the outcome it must produce.

use serde_json::json;

use super::*;

/// A workflow of `rulesets` on entities of type `T` with statuses A, B and settings `erp`, `retry`.
fn workflow(rulesets: Value) -> Definition {
    serde_json::from_value(json!({
        "statuses": [{"name": "A"}, {"name": "B"}],
        "rulesets": rulesets,
        "settings": {"erp": "http://erp.example/hook", "retry": "60"},
    }))
    .expect("a valid definition")
}

fn key(sku: &str) -> PositionKey {
    PositionKey {
        sku_ref: sku.into(),
        location_ref: "L".into(),
    }
}

/// Positions the shell holds: `SKU-1` (10 on hand, 3 reserved) and `SKU-0`, which does not exist yet.
fn held() -> BTreeMap<PositionKey, Position> {
    [
        (
            key("SKU-1"),
            Position {
                on_hand: 10,
                reserved: 3,
            },
        ),
        (key("SKU-0"), Position::default()),
    ]
    .into()
}

/// Interprets `event` with `attributes` on `T:e` (status A, attributes `{"sku": "SKU-1", "qty": 2}`).
fn interpret_on(
    def: &Definition,
    event: &str,
    attributes: Value,
    positions: &BTreeMap<PositionKey, Position>,
) -> Outcome {
    let entity = EntityKey {
        entity_type: "T".into(),
        entity_ref: "e".into(),
    };
    let entity_attributes = json!({"sku": "SKU-1", "qty": 2});
    interpret(
        &ordo_workers::rules::registry(),
        Flow {
            reference: "T::X",
            version: Version { major: 1, minor: 0 },
            definition: def,
        },
        Snapshot {
            key: &entity,
            subtype: "X",
            status: "A",
            attributes: &entity_attributes,
        },
        Trigger {
            name: event,
            attributes: &attributes,
        },
        positions,
    )
}

/// The outcome as JSON, for comparing the parts a case names.
fn summary(o: &Outcome) -> Value {
    let audits = |audits: &[Audit]| -> Vec<String> {
        audits
            .iter()
            .map(|a| format!("{}:{}:{}@{}", a.category.as_str(), a.name, a.status, a.source))
            .collect()
    };
    match o {
        Outcome::Ran(s) => json!({
            "status": s.status,
            "attributes": s.attributes,
            "positions": s.positions.iter().map(|(k, p)| (k.to_string(), json!([p.on_hand, p.reserved])))
                .collect::<Map<String, Value>>(),
            "events": s.events.iter().map(|e| json!([e.name, e.status, e.error, e.source])).collect::<Vec<_>>(),
            "emitted": s.emitted.iter().map(|e| json!([e.name, e.entity.entity_ref, e.delay_seconds, e.attributes]))
                .collect::<Vec<_>>(),
            "webhooks": s.webhooks.iter().map(|w| json!([w.url, w.source])).collect::<Vec<_>>(),
            "audits": audits(&s.audits),
        }),
        Outcome::Failed { error, audits: a } => json!({"failed": error, "audits": audits(a)}),
        Outcome::NeedsPositions(keys) => json!({"needs": keys.iter().map(ToString::to_string).collect::<Vec<_>>()}),
    }
}

/// Whether every member of `want` (recursively, for objects) is in `got`.
fn contains(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => w.iter().all(|(k, v)| g.get(k).is_some_and(|gv| contains(gv, v))),
        _ => got == want,
    }
}

fn rs(name: &str, rules: Value) -> Value {
    json!({"name": name, "entity_type": "T", "rules": rules})
}

fn rule(name: &str, props: Value) -> Value {
    json!({"name": name, "props": props})
}

/// Every core and inventory rule, templating, exception routing, no-match and the inline cap, each as the
/// outcome's relevant part.
#[test]
fn rules_apply_to_the_snapshot_and_stage_their_writes() {
    let reserve = |qty: i64, extra: Value| {
        let mut p = json!({"sku_ref": "{{entity.attributes.sku}}", "location_ref": "L", "qty": qty});
        if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        rule("inventory.Reserve", p)
    };
    let cases: Vec<(&str, Value, Value, Value)> = vec![
        (
            "core.SetState changes the status",
            json!([rs("Go", json!([rule("core.SetState", json!({"status": "B"}))]))]),
            json!({}),
            json!({"status": "B", "events": [["Go", "success", null, 0]],
                   "audits": ["snapshot:Go:success@0", "ruleset:Go:success@0", "rule:core.SetState:success@0",
                              "action:set_state:success@0"]}),
        ),
        (
            "core.SetState refuses an undeclared status",
            json!([rs("Go", json!([rule("core.SetState", json!({"status": "Z"}))]))]),
            json!({}),
            json!({"failed": "status \"Z\" is not declared by the workflow"}),
        ),
        (
            "core.SetAttribute with a whole-value template keeps the JSON type",
            json!([rs(
                "Go",
                json!([rule(
                    "core.SetAttribute",
                    json!({"name": "n", "value": "{{event.attributes.n}}"})
                )])
            )]),
            json!({"n": 7}),
            json!({"attributes": {"sku": "SKU-1", "qty": 2, "n": 7}}),
        ),
        (
            "templates read the entity, the event and the settings",
            json!([rs(
                "Go",
                json!([rule(
                    "core.SetAttribute",
                    json!({"name": "m",
                "value": "{{entity.ref}} {{entity.attributes.sku}} {{event.attributes.n}} {{settings.erp}}"})
                )])
            )]),
            json!({"n": 7}),
            json!({"attributes": {"m": "e SKU-1 7 http://erp.example/hook"}}),
        ),
        (
            "a template naming a missing value fails the rule",
            json!([rs(
                "Go",
                json!([rule(
                    "core.SetAttribute",
                    json!({"name": "m", "value": "{{event.attributes.nope}}"})
                )])
            )]),
            json!({}),
            json!({"failed": "rule core.SetAttribute failed: template \"event.attributes.nope\" refers to a missing value"}),
        ),
        (
            "core.SendEvent to the same entity runs inline, after the root",
            json!([
                rs(
                    "Go",
                    json!([rule(
                        "core.SendEvent",
                        json!({"event_name": "Next", "attributes": {"x": "{{entity.ref}}"}})
                    )])
                ),
                rs("Next", json!([rule("core.SetState", json!({"status": "B"}))])),
            ]),
            json!({}),
            json!({"status": "B", "events": [["Go", "success", null, 0], ["Next", "success", null, 0]],
                   "emitted": []}),
        ),
        (
            "core.SendEvent to another entity leaves as a queued event",
            json!([rs(
                "Go",
                json!([rule(
                    "core.SendEvent",
                    json!({"event_name": "Far", "entity": {"type": "T", "ref": "x"}})
                )])
            )]),
            json!({}),
            json!({"events": [["Go", "success", null, 0]], "emitted": [["Far", "x", null, {}]]}),
        ),
        (
            "core.ScheduleEvent queues an event for later, to this entity by default",
            json!([rs(
                "Go",
                json!([rule(
                    "core.ScheduleEvent",
                    json!({"event_name": "Later", "delay_seconds": "{{settings.retry}}"})
                )])
            )]),
            json!({}),
            json!({"emitted": [["Later", "e", 60, {}]]}),
        ),
        (
            "core.ScheduleEvent beyond ten years fails",
            json!([rs(
                "Go",
                json!([rule(
                    "core.ScheduleEvent",
                    json!({"event_name": "Later", "delay_seconds": 400_000_000})
                )])
            )]),
            json!({}),
            json!({"failed": format!("cannot schedule Later 400000000 s ahead: at most {MAX_DELAY_SECONDS} s")}),
        ),
        (
            "core.IfAttribute sends its event when the value matches",
            json!([rs(
                "Go",
                json!([rule(
                    "core.IfAttribute",
                    json!({"attribute": "event.attributes.paid",
                "equals": true, "event_name": "Paid", "else_event_name": "Unpaid"})
                )])
            )]),
            json!({"paid": true}),
            json!({"events": [["Go", "success", null, 0], ["Paid", "no_match", null, 0]]}),
        ),
        (
            "core.IfAttribute sends its else event otherwise",
            json!([rs(
                "Go",
                json!([rule(
                    "core.IfAttribute",
                    json!({"attribute": "event.attributes.paid",
                "equals": true, "event_name": "Paid", "else_event_name": "Unpaid"})
                )])
            )]),
            json!({"paid": false}),
            json!({"events": [["Go", "success", null, 0], ["Unpaid", "no_match", null, 0]]}),
        ),
        (
            "core.SendWebhook asks for a delivery of the event that ran it",
            json!([rs(
                "Go",
                json!([rule("core.SendWebhook", json!({"url": "{{settings.erp}}"}))])
            )]),
            json!({}),
            json!({"webhooks": [["http://erp.example/hook", 0]]}),
        ),
        (
            "core.Log writes a custom audit record and no action record",
            json!([rs(
                "Go",
                json!([rule("core.Log", json!({"message": "hi {{entity.ref}}"}))])
            )]),
            json!({}),
            json!({"audits": ["snapshot:Go:success@0", "ruleset:Go:success@0", "rule:core.Log:success@0",
                              "custom:log:success@0"]}),
        ),
        (
            "core.Fail with no exception ruleset fails the event, keeping its audit",
            json!([rs(
                "Go",
                json!([rule("core.Fail", json!({"message": "no {{entity.ref}}"}))])
            )]),
            json!({}),
            json!({"failed": "rule core.Fail failed: no e",
                   "audits": ["snapshot:Go:success@0", "ruleset:Go:success@0", "rule:core.Fail:failed@0"]}),
        ),
        (
            "a failure routes to the exception ruleset, which starts from the state before the failed pass",
            json!([
                rs("Go", json!([
                    rule("core.SetAttribute", json!({"name": "lost", "value": true})),
                    rule("core.SendEvent", json!({"event_name": "Inner"})),
                    rule("core.SendEvent", json!({"event_name": "Far", "entity": {"type": "T", "ref": "x"}})),
                    rule("core.SendWebhook", json!({"url": "http://erp.example/hook"})),
                    rule("core.Fail", json!({"message": "boom"})),
                ])),
                {"name": "Go", "entity_type": "T", "kind": "exception", "rules": [
                    rule("core.SetAttribute", json!({"name": "handled", "value": true})),
                ]},
            ]),
            json!({}),
            json!({"attributes": {"sku": "SKU-1", "qty": 2, "handled": true},
                   "events": [["Go", "success", "rule core.Fail failed: boom", 0]],
                   "emitted": [], "webhooks": []}),
        ),
        (
            "no ruleset for the event is a no-match",
            json!([rs("Other", json!([rule("core.SetState", json!({"status": "B"}))]))]),
            json!({}),
            json!({"status": "A", "events": [["Go", "no_match", null, 0]],
                   "audits": ["snapshot:Go:success@0", "no_match:Go:no_match@0"]}),
        ),
        (
            "a ruleset whose triggers miss the status does not match",
            json!([{"name": "Go", "entity_type": "T", "triggers": ["B"], "rules": [rule("core.SetState", json!({"status": "B"}))]}]),
            json!({}),
            json!({"status": "A", "events": [["Go", "no_match", null, 0]]}),
        ),
        (
            "an unknown rule fails the event",
            json!([rs("Go", json!([rule("acme.Nope", json!({}))]))]),
            json!({}),
            json!({"failed": "rule acme.Nope failed: unknown rule \"acme.Nope\""}),
        ),
        (
            "an inline loop stops at the cap and fails the event",
            json!([rs("Go", json!([rule("core.SendEvent", json!({"event_name": "Go"}))]))]),
            json!({}),
            json!({"failed": format!("more than {MAX_INLINE_EVENTS} inline events in one execution")}),
        ),
        (
            "inventory.Reserve reserves what is available and replies",
            json!([rs("Go", json!([reserve(2, json!({"reserved_event": "Reserved"}))]))]),
            json!({}),
            json!({"positions": {"SKU-1@L": [10, 5]},
                   "events": [["Go", "success", null, 0], ["Reserved", "no_match", null, 0]]}),
        ),
        (
            "inventory.Reserve sends its shortfall event when too little is available",
            json!([rs("Go", json!([reserve(8, json!({"shortfall_event": "Short"}))]))]),
            json!({}),
            json!({"positions": {}, "events": [["Go", "success", null, 0], ["Short", "no_match", null, 0]]}),
        ),
        (
            "inventory.Reserve without a shortfall event fails when too little is available",
            json!([rs("Go", json!([reserve(8, json!({}))]))]),
            json!({}),
            json!({"failed": "rule inventory.Reserve failed: cannot reserve 8 of SKU-1@L: 7 available"}),
        ),
        (
            "inventory.ConfirmSale sells reserved units",
            json!([rs(
                "Go",
                json!([rule(
                    "inventory.ConfirmSale",
                    json!({"sku_ref": "SKU-1", "location_ref": "L", "qty": 3})
                )])
            )]),
            json!({}),
            json!({"positions": {"SKU-1@L": [7, 0]}}),
        ),
        (
            "inventory.Release gives reserved units back",
            json!([rs(
                "Go",
                json!([rule(
                    "inventory.Release",
                    json!({"sku_ref": "SKU-1", "location_ref": "L", "qty": "{{entity.attributes.qty}}"})
                )])
            )]),
            json!({}),
            json!({"positions": {"SKU-1@L": [10, 1]}}),
        ),
        (
            "inventory.Release cannot give back more than is reserved",
            json!([rs(
                "Go",
                json!([rule(
                    "inventory.Release",
                    json!({"sku_ref": "SKU-1", "location_ref": "L", "qty": 4})
                )])
            )]),
            json!({}),
            json!({"failed": "rule inventory.Release failed: cannot release 4 of SKU-1@L: only 3 reserved"}),
        ),
        (
            "inventory.UpsertPosition creates a position that does not exist",
            json!([rs(
                "Go",
                json!([rule(
                    "inventory.UpsertPosition",
                    json!({"sku_ref": "SKU-0", "location_ref": "L", "on_hand": 4})
                )])
            )]),
            json!({}),
            json!({"positions": {"SKU-0@L": [4, 0]}}),
        ),
        (
            "a later rule sees the positions as earlier rules left them",
            json!([rs("Go", json!([reserve(5, json!({})), reserve(3, json!({}))]))]),
            json!({}),
            json!({"failed": "rule inventory.Reserve failed: cannot reserve 3 of SKU-1@L: 2 available"}),
        ),
        (
            "a position the shell does not hold stops the run: it must be locked first",
            json!([rs(
                "Go",
                json!([
                    rule("core.SetAttribute", json!({"name": "x", "value": 1})),
                    rule(
                        "inventory.UpsertPosition",
                        json!({"sku_ref": "SKU-9", "location_ref": "L", "on_hand": 4})
                    ),
                ])
            )]),
            json!({}),
            json!({"needs": ["SKU-9@L"]}),
        ),
    ];
    for (name, rulesets, attributes, want) in cases {
        let def = workflow(rulesets);
        let got = summary(&interpret_on(&def, "Go", attributes, &held()));
        assert!(contains(&got, &want), "{name}:\n got {got:#}\nwant {want:#}");
    }
}

/// Interpreting again with the missing positions held gives the outcome a first run with them would have.
#[test]
fn needed_positions_once_held_run_the_same() {
    let def = workflow(json!([rs(
        "Go",
        json!([rule(
            "inventory.UpsertPosition",
            json!({"sku_ref": "SKU-9", "location_ref": "L", "on_hand": 4})
        ),])
    )]));
    let Outcome::NeedsPositions(keys) = interpret_on(&def, "Go", json!({}), &BTreeMap::new()) else {
        panic!("an empty source holds nothing");
    };
    let source: BTreeMap<PositionKey, Position> = keys.into_iter().map(|k| (k, Position::default())).collect();
    let got = summary(&interpret_on(&def, "Go", json!({}), &source));
    assert!(contains(&got, &json!({"positions": {"SKU-9@L": [4, 0]}})), "{got:#}");
}

/// The shell's prediction renders the event's rulesets' position props against the snapshot, exception
/// rulesets and other triggers included, and leaves out props that do not render and other events' rulesets.
#[test]
fn predicted_positions_come_from_the_events_rulesets() {
    let def = workflow(json!([
        rs("Go", json!([rule("inventory.Reserve", json!({"sku_ref": "{{entity.attributes.sku}}", "location_ref": "L", "qty": 1}))])),
        {"name": "Go", "entity_type": "T", "kind": "exception", "triggers": ["B"], "rules": [
            rule("inventory.Release", json!({"sku_ref": "{{event.attributes.sku}}", "location_ref": "L2", "qty": 1})),
            rule("inventory.Release", json!({"sku_ref": "{{event.attributes.nope}}", "location_ref": "L", "qty": 1})),
        ]},
        rs("Other", json!([rule("inventory.Release", json!({"sku_ref": "SKU-7", "location_ref": "L", "qty": 1}))])),
    ]));
    let entity = EntityKey {
        entity_type: "T".into(),
        entity_ref: "e".into(),
    };
    let attributes = json!({"sku": "SKU-1"});
    let event_attributes = json!({"sku": "SKU-2"});
    let got = predicted_positions(
        &ordo_workers::rules::registry(),
        &def,
        Snapshot {
            key: &entity,
            subtype: "X",
            status: "A",
            attributes: &attributes,
        },
        Trigger {
            name: "Go",
            attributes: &event_attributes,
        },
    );
    let want: BTreeSet<PositionKey> = [
        key("SKU-1"),
        PositionKey {
            sku_ref: "SKU-2".into(),
            location_ref: "L2".into(),
        },
    ]
    .into();
    assert_eq!(got, want);
}
