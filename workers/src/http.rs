//! `http.request`: calls an HTTP endpoint and classifies the response into the step contract.
//!
//! A 2xx response completes the job with `{"status", "body"}`, where `body` is the parsed JSON
//! when the response says it is JSON and otherwise the text, cut to 64 KiB. 408, 429 and 5xx,
//! connection errors and timeouts are retried (honouring `Retry-After` in seconds); other 4xx
//! are permanent failures, as are args that can never produce a valid request.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Client, Method, RequestBuilder, Response, Url};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::step::{parse_args, BoxFuture, Handler, Outcome, StepContext, StepError};

const KIND: &str = "http.request";

/// The most of a successful response's body kept in the job's result.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// How much of an error response's body is quoted in the failure reason.
const ERROR_BODY_CHARS: usize = 200;

/// Enough bytes for [`ERROR_BODY_CHARS`] characters of UTF-8 plus surrounding whitespace.
const ERROR_BODY_BYTES: usize = 1024;

/// `http.request {method?, url, headers?, body?, timeout_ms?}`: one HTTP call per attempt.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// Shared by every run so connections are pooled across jobs; cloning it is cheap.
    client: Client,
}

/// Args of `http.request`.
#[derive(Debug, Deserialize)]
struct RequestArgs {
    #[serde(default = "default_method")]
    method: String,
    url: String,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    /// Sent as JSON when present and not `null`.
    #[serde(default)]
    body: Option<Value>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
}

fn default_method() -> String {
    "GET".to_owned()
}

fn default_timeout_ms() -> u64 {
    30_000
}

impl HttpRequest {
    /// A handler with its own client, honouring the system proxy settings.
    pub fn new() -> Self {
        let client = Client::builder()
            .user_agent(concat!("ordo-workers/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client with default TLS settings and built-in root certificates always builds");
        Self::with_client(client)
    }

    /// A handler that sends its requests through `client` (custom TLS, proxies or pooling).
    pub fn with_client(client: Client) -> Self {
        Self { client }
    }
}

impl Default for HttpRequest {
    fn default() -> Self {
        Self::new()
    }
}

impl Handler for HttpRequest {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn description(&self) -> &'static str {
        "sends {method?, url, headers?, body?, timeout_ms?}; 2xx succeeds, 408/429/5xx retry, other 4xx fail"
    }

    fn run(&self, ctx: StepContext, args: Value) -> BoxFuture<'static, Result<Outcome, StepError>> {
        let client = self.client.clone();
        Box::pin(async move {
            let args: RequestArgs = parse_args(KIND, args)?;
            let request = build_request(&client, args)?;
            tokio::select! {
                // Checked first so a cancelled job sends nothing.
                biased;
                () = ctx.cancel.cancelled() => Err(StepError::Cancelled),
                outcome = execute(request) => outcome,
            }
        })
    }
}

/// Validates args into a request; every error here is permanent because the args are stored.
fn build_request(client: &Client, args: RequestArgs) -> Result<RequestBuilder, StepError> {
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| StepError::fail(format!("invalid HTTP method {:?}", args.method)))?;
    let url = Url::parse(&args.url).map_err(|e| StepError::fail(format!("invalid url {:?}: {e}", args.url)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(StepError::fail(format!(
            "unsupported url scheme {:?}: only http and https are allowed",
            url.scheme()
        )));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in args.headers.unwrap_or_default() {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| StepError::fail(format!("invalid header name {name:?}")))?;
        let value =
            HeaderValue::from_str(&value).map_err(|_| StepError::fail(format!("invalid value for header {name:?}")))?;
        headers.append(header, value);
    }
    let mut request = client
        .request(method, url)
        .headers(headers)
        .timeout(Duration::from_millis(args.timeout_ms));
    if let Some(body) = args.body {
        // Leaves a caller-supplied content-type alone.
        request = request.json(&body);
    }
    Ok(request)
}

/// Sends the request and classifies the response.
async fn execute(request: RequestBuilder) -> Result<Outcome, StepError> {
    let mut response = request.send().await.map_err(send_error)?;
    let status = response.status();
    if status.is_success() {
        let is_json = is_json(response.headers());
        let (body, truncated) = read_limited(&mut response, MAX_BODY_BYTES).await.map_err(send_error)?;
        // A truncated body cannot parse as JSON, so it is kept as text.
        let body = if is_json && !truncated {
            serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(text(body, false)))
        } else {
            Value::String(text(body, truncated))
        };
        return Ok(Outcome::Done(json!({ "status": status.as_u16(), "body": body })));
    }

    let after = retry_after(response.headers());
    // The body only decorates the reason, so failing to read it must not hide the status.
    let (body, truncated) = read_limited(&mut response, ERROR_BODY_BYTES).await.unwrap_or_default();
    let snippet: String = text(body, truncated).trim().chars().take(ERROR_BODY_CHARS).collect();
    let reason = if snippet.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {snippet}", status.as_u16())
    };
    match status.as_u16() {
        408 | 429 | 500..=599 => Err(StepError::Retry { reason, after }),
        // Other 4xx mean the request itself is wrong; 1xx/3xx left over after redirects
        // are followed will not change on a retry either.
        _ => Err(StepError::fail(reason)),
    }
}

/// Classifies a transport error: only a request reqwest refused to build is permanent.
fn send_error(e: reqwest::Error) -> StepError {
    let mut reason = e.to_string();
    // reqwest's own message omits the cause ("connection refused", "timed out").
    let mut source = e.source();
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    if e.is_builder() {
        StepError::fail(reason)
    } else {
        StepError::retry(reason)
    }
}

/// Reads at most `limit` bytes of the body, saying whether more was left unread.
async fn read_limited(response: &mut Response, limit: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        // `body.len() <= limit` holds on every iteration, so this cannot underflow.
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// Whether the response declares a JSON body (`application/json` or a `+json` type).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media_type == "application/json" || media_type.ends_with("+json")
}

/// The delay from a `Retry-After: <seconds>` header; the HTTP-date form is left to the backoff.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse().ok().map(Duration::from_secs)
}

/// Decodes a body as text, replacing invalid UTF-8.
fn text(mut bytes: Vec<u8>, truncated: bool) -> String {
    if truncated {
        // The cut may split a multi-byte character; drop its leading bytes rather than
        // end the text with a replacement character.
        if let Err(e) = std::str::from_utf8(&bytes) {
            if e.error_len().is_none() {
                bytes.truncate(e.valid_up_to());
            }
        }
    }
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use super::*;

    /// A handler that ignores proxy settings of the machine running the tests.
    fn handler() -> HttpRequest {
        let client = Client::builder().no_proxy().build().expect("test client builds");
        HttpRequest::with_client(client)
    }

    async fn run(args: Value) -> Result<Outcome, StepError> {
        handler().run(StepContext::for_test(KIND), args).await
    }

    /// A minimal HTTP/1.1 response that closes the connection after the body.
    fn response(status_line: &str, headers: &[(&str, &str)], body: &str) -> String {
        let mut out = format!("HTTP/1.1 {status_line}\r\n");
        for (name, value) in headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        out
    }

    async fn bind() -> (TcpListener, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("bound address");
        (listener, format!("http://{addr}"))
    }

    /// Reads one request (head and a `Content-Length` body) and returns it as text.
    async fn read_request(stream: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0_u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.expect("read request");
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().expect("numeric length"));
            if buf.len() >= end + 4 + length {
                break;
            }
        }
        String::from_utf8(buf).expect("request is UTF-8")
    }

    /// Serves one connection with `response` and hands back the request it received.
    async fn serve_once(response: String) -> (String, JoinHandle<String>) {
        let (listener, url) = bind().await;
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let request = read_request(&mut stream).await;
            // The client may stop reading early (truncated bodies), so write errors are fine.
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
            request
        });
        (url, server)
    }

    /// Accepts one request and never answers, signalling once the request has arrived.
    async fn serve_silently() -> (String, oneshot::Receiver<()>, JoinHandle<()>) {
        let (listener, url) = bind().await;
        let (arrived, arrived_rx) = oneshot::channel();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            read_request(&mut stream).await;
            let _ = arrived.send(());
            // Hold the connection open until the client gives up.
            let _ = stream.read(&mut [0_u8; 1]).await;
        });
        (url, arrived_rx, server)
    }

    /// A 2xx completes with the status, and the body parsed only when declared as JSON.
    #[tokio::test]
    async fn http_request_2xx_returns_status_and_body() {
        let cases = [
            (
                "200 OK",
                Some("application/json"),
                r#"{"ok":true}"#,
                json!({"ok": true}),
            ),
            (
                "201 Created",
                Some("application/problem+json; charset=utf-8"),
                "[1,2]",
                json!([1, 2]),
            ),
            ("200 OK", Some("text/plain"), r#"{"ok":true}"#, json!(r#"{"ok":true}"#)),
            ("200 OK", Some("application/json"), "not json", json!("not json")),
            ("204 No Content", None, "", json!("")),
        ];
        for (status_line, content_type, body, want) in cases {
            let headers: Vec<_> = content_type.map(|ct| ("Content-Type", ct)).into_iter().collect();
            let (url, server) = serve_once(response(status_line, &headers, body)).await;
            let outcome = run(json!({"url": format!("{url}/status")})).await;
            let code: u16 = status_line[..3].parse().expect("numeric status");
            assert_eq!(
                outcome,
                Ok(Outcome::Done(json!({"status": code, "body": want}))),
                "{status_line} {content_type:?}"
            );
            let request = server.await.expect("server task");
            assert!(request.starts_with("GET /status HTTP/1.1\r\n"), "{request}");
        }
    }

    /// The method, headers and JSON body from the args reach the server as given.
    #[tokio::test]
    async fn http_request_sends_method_headers_and_json_body() {
        let (url, server) = serve_once(response("202 Accepted", &[], "queued")).await;
        let args = json!({
            "method": "post",
            "url": format!("{url}/hooks?x=1"),
            "headers": {"X-Trace": "abc"},
            "body": {"a": 1},
        });
        assert_eq!(
            run(args).await,
            Ok(Outcome::Done(json!({"status": 202, "body": "queued"})))
        );
        let request = server.await.expect("server task");
        assert!(request.starts_with("POST /hooks?x=1 HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("x-trace: abc\r\n"), "{request}");
        assert!(request.contains("content-type: application/json\r\n"), "{request}");
        assert!(request.ends_with("\r\n\r\n{\"a\":1}"), "{request}");
    }

    /// 408, 429 and 5xx retry (after `Retry-After` seconds if given); other 4xx fail for good.
    #[tokio::test]
    async fn http_request_error_statuses_map_to_retry_or_fail() {
        let cases = [
            (
                "404 Not Found",
                vec![],
                "no such thing",
                StepError::fail("HTTP 404: no such thing"),
            ),
            ("400 Bad Request", vec![], "", StepError::fail("HTTP 400")),
            (
                "503 Service Unavailable",
                vec![("Retry-After", "7")],
                "busy",
                StepError::retry_after("HTTP 503: busy", Duration::from_secs(7)),
            ),
            (
                "429 Too Many Requests",
                vec![],
                "slow down",
                StepError::retry("HTTP 429: slow down"),
            ),
            (
                "429 Too Many Requests",
                vec![("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")],
                "",
                StepError::retry("HTTP 429"),
            ),
            ("408 Request Timeout", vec![], "", StepError::retry("HTTP 408")),
            (
                "500 Internal Server Error",
                vec![],
                " oops\n",
                StepError::retry("HTTP 500: oops"),
            ),
        ];
        for (status_line, headers, body, want) in cases {
            let (url, _server) = serve_once(response(status_line, &headers, body)).await;
            assert_eq!(run(json!({"url": url})).await, Err(want), "{status_line}");
        }
    }

    /// An error body is quoted only up to 200 characters in the failure reason.
    #[tokio::test]
    async fn http_request_failure_reason_quotes_at_most_200_chars_of_body() {
        let body = "é".repeat(300);
        let (url, _server) = serve_once(response("422 Unprocessable Entity", &[], &body)).await;
        let want = format!("HTTP 422: {}", "é".repeat(200));
        assert_eq!(run(json!({"url": url})).await, Err(StepError::fail(want)));
    }

    /// A large successful body is kept only up to 64 KiB, so results stay bounded.
    #[tokio::test]
    async fn http_request_truncates_large_bodies_to_64_kib() {
        let body = "x".repeat(MAX_BODY_BYTES + 10_000);
        let headers = [("Content-Type", "application/json")];
        let (url, _server) = serve_once(response("200 OK", &headers, &body)).await;
        let outcome = run(json!({"url": url})).await;
        let Ok(Outcome::Done(result)) = outcome else {
            panic!("expected Done, got {outcome:?}");
        };
        assert_eq!(result["body"].as_str().map(str::len), Some(MAX_BODY_BYTES));
    }

    /// Args that can never make a valid request fail permanently without sending anything.
    #[tokio::test]
    async fn http_request_invalid_args_fail_permanently() {
        // Nothing listens here, so any request that was actually sent would retry instead.
        let (listener, url) = bind().await;
        drop(listener);
        let cases = [
            (
                json!({"url": "ftp://example.com/file"}),
                "unsupported url scheme \"ftp\": only http and https are allowed",
            ),
            (
                json!({"url": "not a url"}),
                "invalid url \"not a url\": relative URL without a base",
            ),
            (json!({"method": "GE T", "url": url}), "invalid HTTP method \"GE T\""),
            (
                json!({"url": url, "headers": {"bad header": "x"}}),
                "invalid header name \"bad header\"",
            ),
            (
                json!({"url": url, "headers": {"x-ok": "line\nbreak"}}),
                "invalid value for header \"x-ok\"",
            ),
            (
                json!({"method": "GET"}),
                "invalid args for http.request: missing field `url`",
            ),
        ];
        for (args, want) in cases {
            assert_eq!(run(args.clone()).await, Err(StepError::fail(want)), "args {args}");
        }
    }

    /// A refused connection is transient: the endpoint may come back.
    #[tokio::test]
    async fn http_request_to_a_closed_port_retries() {
        let (listener, url) = bind().await;
        drop(listener);
        let outcome = run(json!({"url": url})).await;
        assert!(
            matches!(outcome, Err(StepError::Retry { after: None, .. })),
            "{outcome:?}"
        );
    }

    /// A request that outlives `timeout_ms` is retried rather than hanging the slot.
    #[tokio::test]
    async fn http_request_timeout_retries() {
        let (url, _arrived, _server) = serve_silently().await;
        let outcome = run(json!({"url": url, "timeout_ms": 50})).await;
        let Err(StepError::Retry { reason, after: None }) = &outcome else {
            panic!("expected Retry, got {outcome:?}");
        };
        assert!(reason.contains("timed out"), "{reason}");
    }

    /// Cancelling the token abandons an in-flight request at once.
    #[tokio::test]
    async fn http_request_returns_cancelled_when_the_token_fires_in_flight() {
        let (url, arrived, _server) = serve_silently().await;
        let ctx = StepContext::for_test(KIND);
        let cancel = ctx.cancel.clone();
        let running = tokio::spawn(handler().run(ctx, json!({"url": url})));
        arrived.await.expect("request reaches the server");
        cancel.cancel();
        let outcome = running.await.expect("handler task does not panic");
        assert_eq!(outcome, Err(StepError::Cancelled));
    }

    /// Cutting text mid-character drops the partial character instead of garbling it.
    #[test]
    fn text_drops_a_character_split_by_truncation() {
        let cut = "aé".as_bytes()[..2].to_vec();
        assert_eq!(text(cut.clone(), true), "a");
        assert_eq!(text(cut, false), "a\u{fffd}");
        assert_eq!(text(b"ok".to_vec(), true), "ok");
    }
}
