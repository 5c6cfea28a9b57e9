//! A stand-in for the ERP the example workflow `ORDER::HD` notifies: it receives the webhooks on this machine,
//! checks each one's `Ordo-Signature` against the demo account's webhook secret over the raw body, and prints
//! what it got, so the demo's deliveries succeed and can be seen.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tokio_util::sync::CancellationToken;

/// The path the example workflow's `erp_url` setting points at.
pub const PATH: &str = "/erp/orders";

/// Oldest signature accepted, as the README's verification example does.
const MAX_AGE_S: i64 = 300;

/// Serves the receiver on `listener` until `stop`: 200 for a delivery whose signature verifies, 401 otherwise.
pub async fn serve(listener: tokio::net::TcpListener, secret: String, stop: CancellationToken) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        PATH,
        post(move |headers: HeaderMap, body: Bytes| {
            let secret = secret.clone();
            async move { receive(&secret, &headers, &body) }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

fn receive(secret: &str, headers: &HeaderMap, body: &[u8]) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let event: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let what = format!(
        "{} of {} {} (Idempotency-Key {})",
        event["name"].as_str().unwrap_or("?"),
        event["entity"]["type"].as_str().unwrap_or("?"),
        event["entity"]["ref"].as_str().unwrap_or("?"),
        header("idempotency-key")
    );
    match verify(secret, header("ordo-signature"), body) {
        Ok(()) => {
            eprintln!("{:>12} | verified delivery: {what}", "erp");
            StatusCode::OK
        }
        Err(why) => {
            eprintln!("{:>12} | refused delivery ({why}): {what}", "erp");
            StatusCode::UNAUTHORIZED
        }
    }
}

/// Checks `t=<unix seconds>,v1=<hex HMAC>` against the raw body.
fn verify(secret: &str, signature: &str, body: &[u8]) -> Result<(), &'static str> {
    let t = signature
        .split(',')
        .find_map(|p| p.strip_prefix("t="))
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or("no timestamp in Ordo-Signature")?;
    if (chrono::Utc::now().timestamp() - t).abs() > MAX_AGE_S {
        return Err("signature too old");
    }
    let expected = crate::orchestration::webhook::sign(secret, t, body);
    if crate::tenancy::secrets_equal(&expected, signature) {
        Ok(())
    } else {
        Err("signature does not match")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signature over the exact body verifies; another body, another secret or an old timestamp does not.
    #[test]
    fn verifies_signatures_over_the_raw_body() {
        let now = chrono::Utc::now().timestamp();
        let sig = crate::orchestration::webhook::sign("s3cret", now, b"{\"a\":1}");
        assert_eq!(verify("s3cret", &sig, b"{\"a\":1}"), Ok(()));
        assert!(verify("s3cret", &sig, b"{\"a\": 1}").is_err());
        assert!(verify("other", &sig, b"{\"a\":1}").is_err());
        let old = crate::orchestration::webhook::sign("s3cret", now - 3600, b"x");
        assert!(verify("s3cret", &old, b"x").is_err());
        assert!(verify("s3cret", "", b"x").is_err());
    }
}
