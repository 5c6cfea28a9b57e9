//! The dashboard's daily console in a real browser (headless Chromium through chromedriver, as in `ui`): job search
//! and bulk retry behind a confirmation, the server-side history charts and their time range, the rollouts and
//! workers pages and the admin's jobs across accounts, and dark mode.

use ordo::testkit::eventually;
use serde_json::{json, Value};

use crate::api::ADMIN;
use crate::ui::{Browser, Server, PATIENCE};

/// Cancels a job through the API.
async fn cancel(server: &Server, key: &str, id: &str) {
    let (status, body) = server
        .api(reqwest::Method::POST, &format!("/api/jobs/{id}/cancel"), key, None)
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Searching by idempotency key, by id and by kind prefix and state finds exactly the jobs meant; "Retry all
/// matching" says how many it will retry, and after the confirmation they are available again while a job outside
/// the search stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_search_jobs_and_retry_them_in_bulk() {
    let server = Server::start().await;
    let key = server.account("acme").await;
    let mut mail = Vec::new();
    for n in 0..3 {
        let id = server
            .enqueue(&key, json!({"kind": "mail.send", "queue": "mail", "args": {"n": n}}))
            .await;
        cancel(&server, &key, &id).await;
        mail.push(id);
    }
    let report = server
        .enqueue(&key, json!({"kind": "report", "idempotency_key": "inv-7"}))
        .await;
    cancel(&server, &key, &report).await;
    let b = Browser::start("ui_search_jobs_and_retry_them_in_bulk").await;
    b.sign_in(&server.base, &key).await;

    b.goto(&format!("{}/ui/jobs", server.base)).await;
    b.type_into("#f-idempotency_key", "inv-7").await;
    b.click("form[role=search] button[type=submit]").await;
    // The unfiltered list is on the page until the search's answer replaces it: wait for a list of one.
    let rows = b
        .wait_text("#jobs tbody", "the job of key inv-7", |t| t.lines().count() == 1)
        .await;
    assert!(rows.contains("report") && !rows.contains("mail.send"), "{rows}");

    b.goto(&format!("{}/ui/jobs", server.base)).await;
    b.type_into("#f-id", &mail[1]).await;
    b.click("form[role=search] button[type=submit]").await;
    let rows = b
        .wait_text("#jobs tbody", "the job by id", |t| t.lines().count() == 1)
        .await;
    assert!(rows.starts_with(&format!("{} ", mail[1])), "{rows}");

    b.goto(&format!("{}/ui/jobs", server.base)).await;
    b.type_into("#f-kind_prefix", "mail.").await;
    b.click("#f-state").await;
    b.click("#f-state option[value=cancelled]").await;
    b.click("form[role=search] button[type=submit]").await;
    let rows = b
        .wait_text("#jobs caption", "three cancelled mail jobs", |t| {
            t.contains("(3 on this page)")
        })
        .await;
    assert!(rows.contains('3'));
    b.click("#bulk-retry").await;
    assert_eq!(b.text("#bulk-count").await, "3");
    b.click("#bulk-confirm button[type=submit]").await;
    let done = b
        .wait_text("[role=status]", "the bulk outcome", |t| t.contains("Retried"))
        .await;
    assert!(done.contains("3 jobs changed"), "{done}");
    for id in &mail {
        let (_, job) = server
            .api(reqwest::Method::GET, &format!("/api/jobs/{id}"), &key, None)
            .await;
        assert_eq!(job["state"], "available", "{job}");
    }
    let (_, job) = server
        .api(reqwest::Method::GET, &format!("/api/jobs/{report}"), &key, None)
        .await;
    assert_eq!(job["state"], "cancelled", "outside the search: {job}");
}

/// The overview's history is drawn from the server's counters and samples: labelled charts with axes, units and a
/// legend, and totals; choosing another time range redraws them for that range, and a reload keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_history_charts_follow_the_time_range() {
    let server = Server::start().await;
    let key = server.account("acme").await;
    for _ in 0..4 {
        server.enqueue(&key, json!({"kind": "noop", "queue": "mail"})).await;
    }
    ordo::queue::sample_queues(&server.db.pool).await.unwrap();
    let b = Browser::start("ui_history_charts_follow_the_time_range").await;
    b.sign_in(&server.base, &key).await;
    eventually(PATIENCE, "the overview after sign-in", || async {
        b.url().await.ends_with("/ui/overview").then_some(())
    })
    .await;
    assert!(b.text("#history-title").await.contains("1 hour"));
    assert_eq!(b.text("[data-total=enqueued]").await, "4");
    let legend = b.text("#chart-throughput ul.legend").await;
    assert!(legend.contains("Completed") && legend.contains("Enqueued"), "{legend}");
    let depth = b
        .eval("return document.querySelector('#chart-depth desc').textContent;")
        .await;
    assert!(
        depth.as_str().unwrap().contains("Available (runnable): peak 4"),
        "{depth}"
    );
    let labels = b
        .eval(
            "return Array.prototype.map.call(document.querySelectorAll('#chart-delay svg text'), \
             function (t) { return t.textContent; });",
        )
        .await;
    let labels: Vec<&str> = labels.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(labels.contains(&"seconds"), "the y axis names its unit: {labels:?}");
    assert!(
        labels.iter().any(|l| l.starts_with("Time (UTC")),
        "the x axis is labelled: {labels:?}"
    );

    b.click("nav.ranges a[href*='range=6h']").await;
    b.wait_text("#history-title", "the 6-hour range", |t| t.contains("6 hours"))
        .await;
    assert!(b.url().await.contains("range=6h"));
    assert_eq!(b.text("nav.ranges a[aria-current=true]").await, "6 hours");
    // One point per minute over six hours, and the same totals after a reload.
    let points = b
        .eval(
            "var p = document.querySelector('#chart-throughput polyline.series-2').getAttribute('points'); \
             return p.trim().split(' ').length;",
        )
        .await;
    assert_eq!(points, json!(360));
    b.goto(&b.url().await).await;
    assert_eq!(b.text("[data-total=enqueued]").await, "4");
}

/// The admin's rollouts page lists rollouts with their state and filters them; the workers page shows each live
/// worker's pool, version, host, kinds and running jobs; the jobs page shows every account's jobs with their
/// account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_rollouts_workers_and_jobs_across_accounts() {
    let server = Server::start().await;
    let key = server.account("acme").await;
    let job = server.enqueue(&key, json!({"kind": "noop", "queue": "mail"})).await;
    let id = crate::ui::canary_of_emails(&server).await;
    crate::support::register_worker(&server.db.pool, "emails-w1", ("emails", "v2"), "mail", "noop").await;

    let b = Browser::start("ui_rollouts_workers_and_jobs_across_accounts").await;
    b.sign_in(&server.base, ADMIN).await;
    b.click("nav.top a[href='/ui/rollouts']").await;
    let listed = b.text("#rollout-list tbody").await;
    assert!(
        listed.contains(&format!("#{id}")) && listed.contains("v1 → v2") && listed.contains("canary"),
        "{listed}"
    );
    b.click("#ro-state").await;
    b.click("#ro-state option[value=aborted]").await;
    b.click("form[action='/ui/rollouts'] button[type=submit]").await;
    b.wait_text("#rollout-list tbody", "no aborted rollout", |t| {
        t.contains("No rollout yet.")
    })
    .await;

    b.click("nav.top a[href='/ui/workers']").await;
    let workers = b.text("#workers tbody").await;
    for part in ["emails-w1", "emails", "v2", "test", "noop", "mail", "0 / 1"] {
        assert!(workers.contains(part), "{part} missing: {workers}");
    }

    b.click("nav.top a[href='/ui/jobs']").await;
    let jobs = b.text("#jobs").await;
    assert!(
        jobs.contains("Account") && jobs.contains("acme") && jobs.contains(&job),
        "{jobs}"
    );
    b.click(&format!("#jobs a[href='/ui/jobs/{job}']")).await;
    assert_eq!(b.text("#job-account").await, "acme");
}

/// With the system set to dark (emulated through the DevTools protocol), the pages turn dark: background, text and
/// chart colours change, and text stays readable on its background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_dark_mode_follows_the_system_setting() {
    let server = Server::start().await;
    let key = server.account("acme").await;
    server.enqueue(&key, json!({"kind": "noop"})).await;
    let b = Browser::start("ui_dark_mode_follows_the_system_setting").await;
    b.sign_in(&server.base, &key).await;
    b.find("#chart-throughput").await;
    let colours = "var b = getComputedStyle(document.body), \
                   l = getComputedStyle(document.querySelector('#chart-throughput polyline.series-1')); \
                   return [b.backgroundColor, b.color, l.stroke, matchMedia('(prefers-color-scheme: dark)').matches];";
    let light = b.eval(colours).await;
    assert_eq!(light[0], "rgb(255, 255, 255)", "{light}");
    assert_eq!(light[3], false);

    emulate_dark(&b).await;
    let dark = eventually(PATIENCE, "the page to turn dark", || async {
        let v = b.eval(colours).await;
        (v[3] == json!(true)).then_some(v)
    })
    .await;
    assert_eq!(dark[0], "rgb(15, 20, 25)", "dark background: {dark}");
    assert_eq!(dark[1], "rgb(230, 233, 238)", "light text: {dark}");
    assert_ne!(dark[2], light[2], "chart lines recoloured: {light} {dark}");
    // It holds on every page: the jobs list too.
    b.goto(&format!("{}/ui/jobs", server.base)).await;
    b.find("#jobs").await;
    let jobs = b
        .eval(colours.replace("#chart-throughput polyline.series-1", "#jobs").as_str())
        .await;
    assert_eq!(jobs[0], "rgb(15, 20, 25)", "{jobs}");
}

/// Sets `prefers-color-scheme: dark` for the page through chromedriver's DevTools passthrough.
async fn emulate_dark(b: &Browser) {
    b.cmd(
        reqwest::Method::POST,
        "/goog/cdp/execute",
        Some(json!({"cmd": "Emulation.setEmulatedMedia",
                    "params": {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}})),
    )
    .await
    .unwrap_or_else(|e| panic!("emulate dark mode: {e}"));
}
