//! The OpenAPI document: it covers the router exactly, is well-formed, and only ever grows.

use std::collections::BTreeSet;
use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use ordo::api;
use serde_json::Value;

use super::{app, ADMIN};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn generated() -> Value {
    serde_json::from_str(&api::openapi::json()).unwrap()
}

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for m in ops
            .as_object()
            .unwrap()
            .keys()
            .filter(|m| METHODS.contains(&m.as_str()))
        {
            out.insert((m.to_uppercase(), path.clone()));
        }
    }
    out
}

/// The route table the router is built from is exactly what the router serves, and exactly what the document lists.
#[tokio::test]
async fn openapi_lists_every_route_the_router_serves() {
    let app = app().await;
    let served: BTreeSet<(String, String)> = api::routes()
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    // Every table entry really is routed: no "no such route" and no 405 for it.
    for (method, path) in &served {
        let concrete = path
            .replace("{id}", "1")
            .replace("{key_id}", "k")
            .replace("{queue}", "q");
        let req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(concrete)
            .body(Body::empty())
            .unwrap();
        let r = app.send(req).await;
        assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_ne!(r.body["detail"], "no such route", "{method} {path}");
    }
    assert_eq!(served, documented_routes(&generated()));
    // The served document is the generated one.
    let r = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(r.expect(StatusCode::OK), &generated());
}

/// Every route of the router, asked without a credential, with the admin token and with an account key (with an
/// empty JSON body where it takes one), answers only statuses its operation documents, and every error as problem
/// JSON, as documented.
#[tokio::test]
async fn every_route_answers_only_what_its_operation_documents() {
    let app = app().await;
    let key = app.account("documented").await;
    let doc = generated();
    for route in api::routes() {
        let op = &doc["paths"][route.path][route.method.to_lowercase()];
        let concrete = route
            .path
            .replace("{id}", "1")
            .replace("{key_id}", "k")
            .replace("{queue}", "q")
            .replace("{pool}", "p")
            .replace("{ref}", "t::s")
            .replace("{type}", "t")
            .replace("{name}", "n")
            .replace("{version}", "1.0")
            .replace("{batch_id}", "1")
            .replace("{sku_ref}", "s")
            .replace("{location_ref}", "l");
        for credential in [None, Some(ADMIN), Some(key.as_str())] {
            let mut req = Request::builder()
                .method(Method::from_bytes(route.method.as_bytes()).unwrap())
                .uri(&concrete);
            if let Some(c) = credential {
                req = req.header("authorization", format!("Bearer {c}"));
            }
            let body = if op.get("requestBody").is_some() {
                req = req.header("content-type", "application/json");
                Body::from("{}")
            } else {
                Body::empty()
            };
            let r = app.send(req.body(body).unwrap()).await;
            let what = format!("{} {concrete} ({})", route.method, r.status);
            let documented = &op["responses"][r.status.as_str()];
            assert!(documented.is_object(), "{what}: status not documented: {}", r.body);
            if !r.status.is_success() {
                assert!(documented["content"]["application/problem+json"].is_object(), "{what}");
                assert_eq!(r.headers["content-type"], "application/problem+json", "{what}");
            }
        }
    }
}

/// Every error answer in the document is problem JSON and nothing else; every operation behind a credential
/// documents 401 and 403, and every one with path parameters 404.
#[test]
fn every_error_answer_is_documented_as_problem_json() {
    let doc = generated();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (m, op) in ops.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            for (status, response) in responses.iter().filter(|(s, _)| s.as_str() >= "400") {
                let content = response["content"].as_object().unwrap();
                assert_eq!(
                    content.keys().collect::<Vec<_>>(),
                    ["application/problem+json"],
                    "{m} {path} {status}"
                );
                assert_eq!(
                    content["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem"
                );
            }
            if op.get("security").is_some() {
                assert!(
                    responses.contains_key("401") && responses.contains_key("403"),
                    "{m} {path}"
                );
            }
            if path.contains('{') {
                assert!(responses.contains_key("404"), "{m} {path}");
            }
        }
    }
}

fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

fn check_refs(doc: &Value, v: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                assert!(resolve(doc, r).is_some(), "dangling $ref {r}");
            }
            m.values().for_each(|x| check_refs(doc, x));
        }
        Value::Array(a) => a.iter().for_each(|x| check_refs(doc, x)),
        _ => {}
    }
}

/// The document is OpenAPI 3.1, every operation declares responses and every `$ref` resolves.
#[test]
fn openapi_document_is_well_formed() {
    let doc = generated();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    for (path, ops) in doc["paths"].as_object().unwrap() {
        assert!(path.starts_with('/'));
        for (m, op) in ops.as_object().unwrap() {
            if METHODS.contains(&m.as_str()) {
                assert!(
                    !op["responses"].as_object().unwrap().is_empty(),
                    "{m} {path} has no responses"
                );
            }
        }
    }
    check_refs(&doc, &doc);
}

/// Keys that only describe; changing them never breaks a client.
const DESCRIPTIVE: [&str; 5] = ["description", "summary", "example", "examples", "title"];

/// Whether `new` keeps everything `old` promised: every object key (but descriptive ones) still there and
/// compatible, every array element (enum value, parameter, required field) still matched, scalars equal.
fn compatible(old: &Value, new: &Value, at: &str, problems: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            for (k, ov) in o {
                if DESCRIPTIVE.contains(&k.as_str()) || (at.is_empty() && k == "info") {
                    continue;
                }
                match n.get(k) {
                    Some(nv) => compatible(ov, nv, &format!("{at}/{k}"), problems),
                    None => problems.push(format!("{at}/{k} was removed")),
                }
            }
        }
        (Value::Array(o), Value::Array(n)) => {
            for (i, ov) in o.iter().enumerate() {
                let found = n.iter().any(|nv| {
                    let mut p = Vec::new();
                    compatible(ov, nv, at, &mut p);
                    p.is_empty()
                });
                if !found {
                    problems.push(format!("{at}/{i} ({ov}) was removed or changed"));
                }
            }
        }
        (o, n) if o == n => {}
        (o, n) => problems.push(format!("{at} changed from {o} to {n}")),
    }
}

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.json")
}

/// The committed openapi.json is still honoured: nothing it lists was removed or changed (additions pass).
/// Regenerate it with `ORDO_UPDATE_OPENAPI=1 cargo test --test it openapi` after an intended addition.
#[test]
fn committed_openapi_is_a_subset_of_the_generated_one() {
    let doc = generated();
    if std::env::var_os("ORDO_UPDATE_OPENAPI").is_some() {
        std::fs::write(committed_path(), api::openapi::json() + "\n").unwrap();
    }
    let text = std::fs::read_to_string(committed_path())
        .expect("openapi.json is committed at the repository root (ORDO_UPDATE_OPENAPI=1 writes it)");
    let committed: Value = serde_json::from_str(&text).unwrap();
    let mut problems = Vec::new();
    compatible(&committed, &doc, "", &mut problems);
    assert!(problems.is_empty(), "breaking API changes:\n{}", problems.join("\n"));
}

/// The compatibility check itself: additions pass; removed fields, changed types and dropped enum values fail.
#[test]
fn compatibility_check_accepts_additions_only() {
    let old = serde_json::json!({"properties": {"a": {"type": "string", "enum": ["x", "y"]}}, "required": ["a"]});
    let ok = |new: Value| {
        let mut p = Vec::new();
        compatible(&old, &new, "", &mut p);
        p.is_empty()
    };
    assert!(ok(
        serde_json::json!({"properties": {"a": {"type": "string", "enum": ["x", "y", "z"]}, "b": {}}, "required": ["a"]})
    ));
    assert!(!ok(
        serde_json::json!({"properties": {"a": {"type": "string", "enum": ["x"]}}, "required": ["a"]})
    ));
    assert!(!ok(
        serde_json::json!({"properties": {"a": {"type": "integer", "enum": ["x", "y"]}}, "required": ["a"]})
    ));
    assert!(!ok(serde_json::json!({"properties": {}, "required": ["a"]})));
}
