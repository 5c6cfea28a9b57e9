//! The problem answers of every operation, declared from what the operation takes, so the document lists each
//! status the server really gives without every handler repeating the common ones.
//!
//! Credentials, JSON bodies, query strings, path parameters and the request deadline fail the same way on every
//! route (see [`super::super::auth`], [`super::super::extract`], [`super::super::middleware`]); a handler's own
//! statuses (409 on a conflict, 404 for an unknown entity named in a body, …) stay in its annotation. Every 4xx
//! and 5xx is `application/problem+json` with the `Problem` schema.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::{ContentBuilder, Object, OpenApi, Ref, RefOr, Response, Type};
use utoipa::Modify;

use crate::api::error::PROBLEM_JSON;

/// Declares the implied problem answers on every operation (a [`Modify`] of the document).
pub struct Problems;

impl Modify for Problems {
    fn modify(&self, doc: &mut OpenApi) {
        for item in doc.paths.paths.values_mut() {
            for op in operations(item) {
                for (status, description) in implied(op) {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| RefOr::T(Response::new(description)));
                }
                for (status, response) in &mut op.responses.responses {
                    if let (Ok(code), RefOr::T(response)) = (status.parse::<u16>(), response) {
                        if code >= 400 {
                            as_problem(code, response);
                        }
                    }
                }
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// The security scheme an operation names (`bearer` for an account key, `admin` for the admin token), if any.
fn scheme(op: &Operation) -> Option<String> {
    let security = serde_json::to_value(op.security.as_ref()?).ok()?;
    security
        .as_array()?
        .iter()
        .find_map(|requirement| requirement.as_object()?.keys().next().cloned())
}

/// The problem statuses an operation gives because of what it takes.
fn implied(op: &Operation) -> Vec<(u16, &'static str)> {
    let mut out = Vec::new();
    match scheme(op).as_deref() {
        Some("bearer") => out.extend([
            (401, "No API key, or one that is unknown or revoked"),
            (403, "The admin token, which cannot act for an account"),
            (421, "The account is homed in another region"),
            (
                429,
                "Over the account's request rate; retry after `Retry-After` seconds",
            ),
        ]),
        Some(_) => out.extend([
            (401, "No admin token, a wrong one, or the admin API is disabled"),
            (403, "An account's API key, which cannot reach admin routes"),
        ]),
        None => {}
    }
    if op.request_body.is_some() {
        out.extend([
            (400, "The body is not JSON"),
            (
                413,
                "The body is over the route's limit (1 MiB; 16 MiB on batch routes)",
            ),
            (415, "Content-Type is not JSON"),
            (422, "Invalid fields, each named in `errors`"),
        ]);
    }
    let params = op.parameters.as_deref().unwrap_or_default();
    if params.iter().any(|p| p.parameter_in == ParameterIn::Query) {
        out.extend([
            (400, "Malformed query string"),
            (422, "Invalid query parameters, each named in `errors`"),
        ]);
    }
    if params.iter().any(|p| p.parameter_in == ParameterIn::Path) {
        out.push((404, "No such resource in this account"));
    }
    out.push((
        503,
        "The database is unreachable or the request passed its deadline; retry after `Retry-After`",
    ));
    out
}

/// Makes an error answer problem JSON, with the headers its status always carries.
fn as_problem(status: u16, response: &mut Response) {
    response.content.clear();
    response.content.insert(
        PROBLEM_JSON.to_owned(),
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build(),
    );
    let headers: &[(&str, Type, &str)] = match status {
        401 => &[("WWW-Authenticate", Type::String, "`Bearer`")],
        429 => &[
            ("Retry-After", Type::Integer, "Seconds until a request is allowed again"),
            ("RateLimit-Limit", Type::Integer, "Requests per second allowed"),
            ("RateLimit-Remaining", Type::Integer, "Requests left now: 0"),
            (
                "RateLimit-Reset",
                Type::Integer,
                "Seconds until the bucket is full again",
            ),
        ],
        503 => &[("Retry-After", Type::Integer, "Seconds to wait before retrying")],
        _ => &[],
    };
    for (name, schema_type, description) in headers {
        response.headers.entry((*name).to_owned()).or_insert_with(|| {
            HeaderBuilder::new()
                .schema(Object::with_type(schema_type.clone()))
                .description(Some(*description))
                .build()
        });
    }
}
