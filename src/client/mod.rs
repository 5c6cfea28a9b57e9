//! The daily CLI: `ordo jobs`, `ordo queues`, `ordo events`, `ordo entities`, `ordo account list|delete`,
//! `ordo keys` and `ordo rollouts`, clients of the HTTP API (CONTRACT §1). Each command is one request; its answer
//! is printed as a table (or a field list) for people, or as the API's JSON document with `--json`.

pub mod args;
pub mod commands;
mod render;

use clap::Args;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub use args::{AccountAdmin, Command};

/// Where and how a client command talks to the API.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// Base URL of the API.
    #[arg(long, env = "ORDO_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The account's API key (account resources: jobs, queues, events, entities).
    #[arg(long, env = "ORDO_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The admin token (accounts, keys, rollouts).
    #[arg(long, env = "ORDO_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Print the API's JSON answer as is, for scripts.
    #[arg(long)]
    pub json: bool,
    /// Trust for an `https://` URL.
    #[command(flatten)]
    pub tls: crate::config::TlsClientConfig,
}

/// Which credential a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// `ORDO_API_KEY`.
    ApiKey,
    /// `ORDO_ADMIN_TOKEN`.
    Admin,
}

/// Errors of the client commands.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The credential the command needs is not set.
    #[error("{0} is required for this command")]
    MissingCredential(&'static str),
    /// The API answered with an error; `message` is its problem's `detail` and `errors`.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// What the server said.
        message: String,
    },
    /// The server does not have the route this command needs (an older server).
    #[error("the server at {url} does not support {method} {path} yet (HTTP {status}: no such route); it is older than this ordo")]
    Unsupported {
        /// URL of the server.
        url: String,
        /// Method.
        method: Method,
        /// Path.
        path: String,
        /// Status.
        status: u16,
    },
    /// The server could not be reached.
    #[error("could not reach {url}: {message}")]
    Unreachable {
        /// The URL requested.
        url: String,
        /// Why.
        message: String,
    },
    /// The server's certificate was refused.
    #[error("{url}: the server's certificate was refused ({message}); ORDO_CA_FILE adds a CA to trust")]
    Certificate {
        /// The URL requested.
        url: String,
        /// Why.
        message: String,
    },
    /// The answer was not JSON.
    #[error("unexpected answer from {url} (HTTP {status}): {body}")]
    Protocol {
        /// The URL requested.
        url: String,
        /// Status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// A setting is unusable (e.g. ORDO_CA_FILE).
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    /// Writing the output failed.
    #[error("write output: {0}")]
    Output(#[from] std::io::Error),
    /// Rotating the master keys failed.
    #[error("rotate the data keys: {0}")]
    Rotate(String),
}

/// Percent-encodes a path segment or query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A request's answer: its status, JSON body (`Value::Null` for 204) and the body's text as sent.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// JSON body.
    pub body: Value,
    /// The body as the server sent it.
    pub raw: String,
}

impl Answer {
    /// The answer when it is a success, else [`ClientError::Api`] with the problem's text.
    fn into_result(self) -> Result<Answer, ClientError> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(ClientError::Api {
                status: self.status.as_u16(),
                message: problem_text(self.status, &self.body),
            })
        }
    }
}

/// One request: method, path, query parameters, JSON body and idempotency key.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Method.
    pub method: &'a Method,
    /// Path below the base URL, e.g. `/api/jobs`.
    pub path: &'a str,
    /// Query parameters.
    pub query: &'a [(&'a str, String)],
    /// JSON body.
    pub body: Option<&'a Value>,
    /// `Idempotency-Key` header.
    pub key: Option<&'a str>,
}

impl<'a> Request<'a> {
    /// A request without query, body or key.
    pub fn new(method: &'a Method, path: &'a str) -> Self {
        Request {
            method,
            path,
            query: &[],
            body: None,
            key: None,
        }
    }
}

/// One API client: base URL, credential and the shared HTTP client.
#[derive(Debug)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// A client for `conn` with the credential `cred`.
    pub fn new(conn: &Conn, cred: Credential) -> Result<Api, ClientError> {
        let token = match cred {
            Credential::ApiKey => conn
                .api_key
                .clone()
                .ok_or(ClientError::MissingCredential("ORDO_API_KEY (or --api-key)"))?,
            Credential::Admin => conn
                .admin_token
                .clone()
                .ok_or(ClientError::MissingCredential("ORDO_ADMIN_TOKEN (or --admin-token)"))?,
        };
        Ok(Api {
            http: conn.tls.client()?,
            base: conn.url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// Sends one request (no retries: a person or a script sees the failure and decides), with an
    /// `Idempotency-Key` header when `key` is set, and returns a success answer; an error answer becomes
    /// [`ClientError::Api`] with the problem's text.
    pub async fn call(&self, req: Request<'_>) -> Result<Answer, ClientError> {
        let answer = self.send(req).await?;
        // The router's fallback (404 "no such route") or a 405 means the server lacks the route; say that instead
        // of "not found", which would read as "no such resource".
        let no_route = answer.status == StatusCode::METHOD_NOT_ALLOWED
            || (answer.status == StatusCode::NOT_FOUND && answer.body["detail"] == "no such route");
        if no_route {
            return Err(ClientError::Unsupported {
                url: self.base.clone(),
                method: req.method.clone(),
                path: req.path.to_owned(),
                status: answer.status.as_u16(),
            });
        }
        answer.into_result()
    }

    /// Sends one request and returns whatever the server answered, success or not.
    async fn send(&self, r: Request<'_>) -> Result<Answer, ClientError> {
        let Request {
            method,
            path,
            query,
            body,
            key,
        } = r;
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header(AUTHORIZATION, format!("Bearer {}", self.token));
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(b) = body {
            req = req.header(CONTENT_TYPE, "application/json").body(b.to_string());
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let res = req.send().await.map_err(|e| {
            // reqwest's own message repeats the URL this error already names; its causes say what failed.
            let message = match std::error::Error::source(&e) {
                Some(cause) => crate::tls::error_chain(cause),
                None => crate::tls::error_chain(&e),
            };
            if crate::tls::is_certificate_error(&e) {
                ClientError::Certificate {
                    url: url.clone(),
                    message,
                }
            } else {
                ClientError::Unreachable {
                    url: url.clone(),
                    message,
                }
            }
        })?;
        let status = res.status();
        let bytes = res.bytes().await.map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            message: format!("reading the answer: {}", crate::tls::error_chain(&e)),
        })?;
        if bytes.is_empty() {
            return Ok(Answer {
                status,
                body: Value::Null,
                raw: String::new(),
            });
        }
        match serde_json::from_slice(&bytes) {
            Ok(body) => Ok(Answer {
                status,
                body,
                raw: String::from_utf8_lossy(&bytes).into_owned(),
            }),
            Err(_) => Err(ClientError::Protocol {
                url,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            }),
        }
    }
}

/// The problem's `detail`, each of its `errors` as `path: message`, and a timed-out event's id: what a person
/// needs to fix the request, on one line.
fn problem_text(status: StatusCode, body: &Value) -> String {
    let mut text = body
        .get("detail")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {status}"));
    let errors: Vec<String> = body
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| {
            let path = e.get("path").and_then(Value::as_str).unwrap_or("");
            let message = e.get("message").and_then(Value::as_str).unwrap_or("");
            if path.is_empty() {
                message.to_owned()
            } else {
                format!("{path}: {message}")
            }
        })
        .collect();
    if !errors.is_empty() {
        text = format!("{text} ({})", errors.join("; "));
    }
    if let Some(id) = body.get("event_id").and_then(Value::as_str) {
        text = format!("{text} (event_id {id})");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A problem reads as its detail and every field error, once.
    #[test]
    fn problem_text_names_detail_and_fields() {
        let body = serde_json::json!({
            "type": "about:blank", "title": "Unprocessable Entity", "status": 422,
            "detail": "invalid request: 2 problem(s)",
            "errors": [{"path": "/priority", "message": "must be an integer from 0 to 9"},
                       {"path": "", "message": "must be an object"}]
        });
        assert_eq!(
            problem_text(StatusCode::UNPROCESSABLE_ENTITY, &body),
            "invalid request: 2 problem(s) (/priority: must be an integer from 0 to 9; must be an object)"
        );
        assert_eq!(
            problem_text(StatusCode::BAD_GATEWAY, &Value::Null),
            "HTTP 502 Bad Gateway"
        );
    }

    /// Path segments and query values are percent-encoded.
    #[test]
    fn encoding() {
        assert_eq!(encode("daily stock/eu"), "daily%20stock%2Feu");
    }
}
