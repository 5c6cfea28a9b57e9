//! The dashboard's audit page (admin token): every admin change, newest first, with who made it.

use serde_json::json;

use super::{get, sign_in, Browser, Server};
use crate::api::ADMIN;

/// An administrator follows the nav to the audit page and finds the changes just made, newest first, with their
/// targets and the actor `admin`; an account's key is refused the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_audit_lists_admin_changes() {
    let server = Server::start().await;
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            "/api/accounts",
            ADMIN,
            Some(json!({"id": "acme"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let key = body["api_key"].as_str().unwrap().to_owned();
    let limits = json!({"weight": 4});
    let (status, body) = server
        .api(reqwest::Method::PUT, "/api/accounts/acme/limits", ADMIN, Some(limits))
        .await;
    assert_eq!(status, 200, "{body}");

    let b = Browser::start("ui_audit_lists_admin_changes").await;
    b.sign_in(&server.base, ADMIN).await;
    b.click("nav.top a[href='/ui/audit']").await;
    let rows = b.text("#admin-events tbody").await;
    let limits_at = rows.find("limits.put").unwrap_or_else(|| panic!("{rows}"));
    let created_at = rows.find("account.create").unwrap_or_else(|| panic!("{rows}"));
    assert!(limits_at < created_at, "newest first: {rows}");
    assert!(rows.contains("acme") && rows.contains("admin"), "{rows}");
    assert!(!rows.contains(ADMIN), "the token itself is never shown");
    assert_eq!(b.text("nav.top a[aria-current=page]").await, "Audit");

    let cookie = sign_in(&server, &key).await;
    assert_eq!(get(&server, "/ui/audit", Some(&cookie)).await.0, 403);
}
