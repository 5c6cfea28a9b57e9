//! Property-based fuzzing of every POST endpoint's body (or path, for bodiless actions): whatever arrives, the
//! answer is never a 500, and every error is problem JSON.

use axum::body::Body;
use axum::http::Request;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

use super::{app, assert_problem, App, ADMIN};

const JOB_FIELDS: [&str; 10] = [
    "kind",
    "args",
    "queue",
    "priority",
    "run_at",
    "max_attempts",
    "timeout_ms",
    "idempotency_key",
    "concurrency_key",
    "unknown",
];
const ACCOUNT_FIELDS: [&str; 4] = ["id", "name", "region", "extra"];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        vec(any::<char>(), 0..12).prop_map(|v| v.into_iter().collect::<String>()),
        vec(
            prop::sample::select(vec!['a', 'z', '0', '-', '_', 'A', ' ', '\0', '\u{ffff}', '"']),
            0..70
        )
        .prop_map(|v| v.into_iter().collect::<String>()),
        Just("2026-11-25T12:00:00Z".to_owned()),
        Just("noop".to_owned()),
        Just("\0".to_owned()),
        Just("x".repeat(300)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-20i64..20).prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        any::<u64>().prop_map(|n| json!(n)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(text(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects whose keys are mostly the endpoint's real fields, with values of any type.
fn shaped(fields: &'static [&'static str]) -> impl Strategy<Value = Value> {
    btree_map(prop::sample::select(fields.to_vec()), json_value(), 0..fields.len())
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

/// A body: JSON shaped like the endpoint's, any JSON, or raw bytes (often truncated JSON).
fn body(shape: BoxedStrategy<Value>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => shape.clone().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        2 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => vec(any::<u8>(), 0..64),
        1 => (shape, any::<prop::sample::Index>()).prop_map(|(v, i)| {
            let bytes = serde_json::to_vec(&v).unwrap();
            let cut = i.index(bytes.len() + 1);
            bytes[..cut].to_vec()
        }),
    ]
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn check(rt: &tokio::runtime::Runtime, app: &App, req: Request<Body>) -> Result<(), TestCaseError> {
    let what = format!("{} {}", req.method(), req.uri());
    let r = rt.block_on(app.send(req));
    prop_assert!(r.status.as_u16() < 500, "{what} answered {}: {}", r.status, r.body);
    if !r.status.is_success() {
        assert_problem(&r);
    }
    Ok(())
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    })
}

fn post(path: &str, key: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(path)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// No body sent to any POST endpoint, and no path segment of a bodiless action, yields a 500.
#[test]
fn fuzzed_requests_never_answer_500() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(app());
    let key = rt.block_on(app.account("fuzz"));
    let job_id = rt.block_on(super::enqueue(&app, &key, json!({"kind": "noop"})));

    let job = shaped(&JOB_FIELDS).boxed();
    runner()
        .run(&body(job.clone()), |b| check(&rt, &app, post("/api/jobs", &key, b)))
        .unwrap();
    let batch = prop_oneof![
        3 => vec(job, 0..4).prop_map(|jobs| json!({"jobs": jobs})),
        1 => shaped(&["jobs", "other"]),
    ]
    .boxed();
    runner()
        .run(&body(batch), |b| check(&rt, &app, post("/api/jobs/batch", &key, b)))
        .unwrap();
    let account = shaped(&ACCOUNT_FIELDS).boxed();
    runner()
        .run(&body(account), |b| check(&rt, &app, post("/api/accounts", ADMIN, b)))
        .unwrap();

    // Bodiless actions: fuzz the path segment, and send junk bodies along (they must be ignored).
    let actions: [(&str, &str); 5] = [
        ("/api/jobs/{}/cancel", key.as_str()),
        ("/api/jobs/{}/retry", key.as_str()),
        ("/api/queues/{}/pause", key.as_str()),
        ("/api/queues/{}/resume", key.as_str()),
        ("/api/accounts/{}/keys", ADMIN),
    ];
    let segment = prop_oneof![
        text(),
        any::<i64>().prop_map(|n| n.to_string()),
        Just(job_id.clone()),
        Just("x".repeat(300)),
    ];
    for (template, credential) in actions {
        runner()
            .run(&(segment.clone(), vec(any::<u8>(), 0..32)), |(seg, junk)| {
                let path = template.replace("{}", &percent_encode(&seg));
                let path = if seg.is_empty() {
                    template.replace("{}", "%20")
                } else {
                    path
                };
                check(&rt, &app, post(&path, credential, junk))
            })
            .unwrap();
    }
}
