//! The dashboard (`/ui`) end to end: a real server on a socket with a real database, driven by headless Chromium
//! through chromedriver's W3C WebDriver protocol (browser tests), and by plain HTTP for redirects, isolation and
//! form errors. A failing browser test saves a screenshot to `<target>/ui-screenshots/<test>.png`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use ordo::api::{self, AppState};
use ordo::tenancy::{self, AccountId};
use ordo::testkit::{self, eventually, TestDb};
use ordo::wake::Waker;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::api::{settings, ADMIN};
use crate::support::{fast_config, start_worker};

mod audit;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long a page may take to show what a test waits for (live refresh every 2 s, workers, a busy CI machine).
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// `ordo api` on a free port of 127.0.0.1 with a fresh database; stops when dropped.
pub(crate) struct Server {
    pub(crate) db: TestDb,
    pub(crate) base: String,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Server {
    pub(crate) async fn start() -> Server {
        let db = testkit::db().await;
        let state = AppState::new(db.pool.clone(), Waker::disabled(), settings());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move { api::serve(listener, state, token).await.unwrap() });
        Server { db, base, stop }
    }

    /// Creates an account and returns its API key.
    pub(crate) async fn account(&self, id: &str) -> String {
        let id = AccountId::parse(id).unwrap();
        tenancy::create_account(&self.db.pool, &id, id.as_str(), "local")
            .await
            .unwrap()
            .api_key
    }

    /// Calls the JSON API as `key`.
    pub(crate) async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&b).unwrap());
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let bytes = res.bytes().await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub(crate) async fn enqueue(&self, key: &str, body: Value) -> String {
        let (status, job) = self.api(reqwest::Method::POST, "/api/jobs", key, Some(body)).await;
        assert_eq!(status, 201, "{job}");
        job["id"].as_str().unwrap().to_owned()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A minimal W3C WebDriver client.

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// WebDriver key codes.
const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

/// A headless Chromium session behind its own chromedriver. Dropping it saves a screenshot if the test is
/// panicking, then ends the browser session (chromedriver itself is killed on drop).
pub(crate) struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    test: &'static str,
    _driver: Child,
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")));
    target.join("ui-screenshots")
}

impl Browser {
    pub(crate) async fn start(test: &'static str) -> Browser {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
            "the dashboard tests drive a real browser: install Debian's `chromium` and `chromium-driver` \
             (apt-get install chromium chromium-driver); {CHROMEDRIVER} or {CHROMIUM} is missing"
        );
        let port = testkit::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(20), "chromedriver to answer", || {
            let http = http.clone();
            let url = format!("{base}/status");
            async move {
                let v: Value = http.get(url).send().await.ok()?.json().await.ok()?;
                v["value"]["ready"].as_bool().filter(|r| *r)
            }
        })
        .await;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", "--disable-extensions"]
            }
        }}});
        let res = http
            .post(format!("{base}/session"))
            .header("content-type", "application/json")
            .body(caps.to_string())
            .send()
            .await
            .expect("create a WebDriver session");
        let v: Value = res.json().await.unwrap();
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver refused the session: {v}"));
        Browser {
            http,
            session: format!("{base}/session/{id}"),
            test,
            _driver: driver,
        }
    }

    /// One WebDriver command; the `value` of its answer, or the error as `Err`.
    pub(crate) async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let res = req.send().await.expect("chromedriver answers");
        let ok = res.status().is_success();
        let v: Value = res.json().await.expect("chromedriver answers JSON");
        if ok {
            Ok(v["value"].clone())
        } else {
            Err(v["value"].clone())
        }
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
    }

    pub(crate) async fn url(&self) -> String {
        let v = self.cmd(reqwest::Method::GET, "/url", None).await.unwrap();
        v.as_str().unwrap().to_owned()
    }

    pub(crate) async fn try_find(&self, css: &str) -> Option<String> {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .ok()?;
        v[ELEMENT].as_str().map(str::to_owned)
    }

    /// The first element matching `css`, waiting for it to appear (the page may still be loading).
    pub(crate) async fn find(&self, css: &str) -> String {
        let what = format!("an element matching {css:?} on the page");
        eventually(PATIENCE, &what, || async { self.try_find(css).await }).await
    }

    pub(crate) async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{el}/click"), Some(json!({})))
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    pub(crate) async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        )
        .await
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// The visible text of the first element matching `css`, `None` when there is none.
    pub(crate) async fn try_text(&self, css: &str) -> Option<String> {
        let el = self.try_find(css).await?;
        let v = self
            .cmd(reqwest::Method::GET, &format!("/element/{el}/text"), None)
            .await
            .ok()?;
        v.as_str().map(str::to_owned)
    }

    /// The text of `css`, waiting for it to appear: after a click that posts a form, the next page may not have
    /// loaded when the click returns.
    pub(crate) async fn text(&self, css: &str) -> String {
        let what = format!("an element matching {css:?} on the page");
        eventually(PATIENCE, &what, || async { self.try_text(css).await }).await
    }

    /// Waits until the text of `css` satisfies `ok` (re-reading it; never reloading the page).
    pub(crate) async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        eventually(PATIENCE, what, || async { self.try_text(css).await.filter(|t| ok(t)) }).await
    }

    /// Presses one key (a WebDriver key code such as TAB or ENTER) on whatever has the focus.
    pub(crate) async fn press(&self, key: &str) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}
        ]}]});
        self.cmd(reqwest::Method::POST, "/actions", Some(actions))
            .await
            .unwrap_or_else(|e| panic!("press a key: {e}"));
    }

    /// The visible text of the focused element.
    pub(crate) async fn focused_text(&self) -> String {
        let v = self.cmd(reqwest::Method::GET, "/element/active", None).await.unwrap();
        let el = v[ELEMENT].as_str().unwrap().to_owned();
        let t = self
            .cmd(reqwest::Method::GET, &format!("/element/{el}/text"), None)
            .await
            .unwrap();
        t.as_str().unwrap_or("").to_owned()
    }

    /// Runs a script in the page and returns its result.
    pub(crate) async fn eval(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
        .unwrap_or_else(|e| panic!("run {script}: {e}"))
    }

    /// Resizes the window (e.g. to a phone's width).
    pub(crate) async fn resize(&self, width: u32, height: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await
        .unwrap_or_else(|e| panic!("resize: {e}"));
    }

    /// Signs in through the form with `key`.
    /// Submits `key` on the sign-in page; a wrong one is answered on that page.
    pub(crate) async fn submit_key(&self, base: &str, key: &str) {
        self.goto(&format!("{base}/ui/login")).await;
        self.type_into("#key", key).await;
        self.click("form[action='/ui/login'] button[type=submit]").await;
    }

    /// Signs in with `key` and waits for the overview the form redirects to: a `goto` before the redirect lands can
    /// be overtaken by it (a test then stood on the overview, looking for the page it had asked for).
    pub(crate) async fn sign_in(&self, base: &str, key: &str) {
        self.submit_key(base, key).await;
        eventually(PATIENCE, "the overview after sign-in", || async {
            self.url().await.ends_with("/ui/overview").then_some(())
        })
        .await;
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in s.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

impl Drop for Browser {
    fn drop(&mut self) {
        let http = self.http.clone();
        let session = self.session.clone();
        let shot = std::thread::panicking().then(|| screenshot_dir().join(format!("{}.png", self.test)));
        // Drop cannot await: finish the WebDriver conversation on a thread with its own small runtime.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Some(path) = shot {
                    let png = async {
                        let v: Value = http
                            .get(format!("{session}/screenshot"))
                            .send()
                            .await
                            .ok()?
                            .json()
                            .await
                            .ok()?;
                        Some(base64_decode(v["value"].as_str()?))
                    };
                    if let Some(png) = png.await {
                        let _ = std::fs::create_dir_all(path.parent().unwrap());
                        if std::fs::write(&path, png).is_ok() {
                            eprintln!("screenshot of the failed page: {}", path.display());
                        }
                    }
                }
                let _ = http.delete(&session).send().await;
            });
        });
        let _ = done.join();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Browser tests.

/// Signing in with a bad key shows a message; with a good one the overview shows the account's queues and their
/// depth changes live (no reload) after jobs are enqueued; a bad filter value is answered with a message; another
/// account's job never appears in the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_sign_in_and_watch_queue_depth_change() {
    let server = Server::start().await;
    let key = server.account("acme").await;
    let other = server.account("rival").await;
    let b = Browser::start("ui_sign_in_and_watch_queue_depth_change").await;

    b.submit_key(&server.base, "not-a-key").await;
    let msg = b.text("[role=alert]").await;
    assert!(msg.contains("Unknown or revoked key"), "{msg}");

    server.enqueue(&key, json!({"kind": "noop", "queue": "mail"})).await;
    let rival_job = server
        .enqueue(&other, json!({"kind": "secret-kind", "queue": "mail"}))
        .await;
    // Signed in with the keyboard alone: type the key, press Enter.
    b.goto(&format!("{}/ui/login", server.base)).await;
    b.type_into("#key", &key).await;
    b.press(ENTER).await;
    eventually(PATIENCE, "the overview after sign-in", || async {
        b.url().await.ends_with("/ui/overview").then_some(())
    })
    .await;
    // The first Tab reaches the skip link, which moves past the navigation.
    b.press(TAB).await;
    assert_eq!(b.focused_text().await, "Skip to content");
    b.press(ENTER).await;
    assert!(b.url().await.ends_with("#main"), "{}", b.url().await);
    let depth = "#live tr[data-key='mail'] td.available";
    assert_eq!(b.text(depth).await, "1");

    for _ in 0..3 {
        server.enqueue(&key, json!({"kind": "noop", "queue": "mail"})).await;
    }
    b.wait_text(depth, "the overview to show depth 4 without a reload", |t| t == "4")
        .await;
    // The live refresh also drew the depth sparkline from its readings.
    eventually(PATIENCE, "a depth sparkline", || {
        b.try_find("#live tr[data-key='mail'] td[data-series='depth'] svg[role=img] polyline")
    })
    .await;

    b.goto(&format!("{}/ui/jobs?queue=mail", server.base)).await;
    let list = b.text("#jobs").await;
    assert!(list.contains("noop"), "{list}");
    assert!(!list.contains("secret-kind"), "another account's job shown: {list}");
    let rival_link = format!("#jobs a[href='/ui/jobs/{rival_job}']");
    assert!(
        b.try_find(&rival_link).await.is_none(),
        "another account's job linked: {list}"
    );

    b.goto(&format!("{}/ui/jobs?state=bogus", server.base)).await;
    let msg = b.text("[role=alert]").await;
    assert!(msg.contains("state") && msg.contains("unknown state"), "{msg}");
}

/// A job that failed for good shows its error history; Retry from its page makes it run again, and the page
/// shows the new state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_open_failed_job_and_retry_it() {
    let server = Server::start().await;
    let key = server.account("acme").await;
    let worker = start_worker(&server.db.pool, fast_config());
    let id = server
        .enqueue(&key, json!({"kind": "fail", "args": {"times": 1}, "max_attempts": 1}))
        .await;
    let b = Browser::start("ui_open_failed_job_and_retry_it").await;
    b.sign_in(&server.base, &key).await;

    b.goto(&format!("{}/ui/jobs?state=discarded", server.base)).await;
    let link = format!("#jobs a[href='/ui/jobs/{id}']");
    eventually(PATIENCE, "the job to be listed as discarded", || async {
        if b.try_find(&link).await.is_some() {
            return Some(());
        }
        b.goto(&format!("{}/ui/jobs?state=discarded", server.base)).await;
        None
    })
    .await;
    b.click(&link).await;
    assert_eq!(b.text("#job-state").await, "discarded");
    let errors = b.text("#errors").await;
    assert!(errors.contains("failing attempt 1 of 1"), "{errors}");

    b.click("form[action$='/retry'] button").await;
    let flash = b.text("[role=status]").await;
    assert!(flash.contains("Retried"), "{flash}");
    let state = b.text("#job-state").await;
    assert!(
        ["available", "running", "completed"].contains(&state.as_str()),
        "{state}"
    );
    eventually(PATIENCE, "the retried job to complete", || async {
        b.goto(&format!("{}/ui/jobs/{id}", server.base)).await;
        b.try_text("#job-state").await.filter(|s| s == "completed")
    })
    .await;
    assert!(b.text("main").await.contains("attempts_failed"), "the result is shown");
    worker.stop().await;
}

/// An order's page shows its status and a timeline of its events and the audit records of their execution,
/// each audit record linked to the event it describes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_read_an_orders_timeline() {
    let server = Server::start().await;
    let key = server.account("shop").await;
    let worker = start_worker(&server.db.pool, fast_config());
    let workflow = json!({
        "statuses": [{"name": "CREATED"}, {"name": "BOOKED"}],
        "rulesets": [
            {"name": "CREATE", "entity_type": "ORDER", "triggers": ["CREATED"],
             "rules": [{"name": "core.Log", "props": {"message": "order {{entity.ref}} created"}}]},
            {"name": "Book", "entity_type": "ORDER", "triggers": ["CREATED"],
             "rules": [{"name": "core.SetState", "props": {"status": "BOOKED"}}]}
        ]
    });
    let put = reqwest::Method::PUT;
    let (status, body) = server.api(put, "/api/workflows/ORDER::HD", &key, Some(workflow)).await;
    assert_eq!(status, 201, "{body}");
    let order = json!({"type": "ORDER", "subtype": "HD", "ref": "o-1001", "attributes": {"total": 42}});
    let (status, body) = server
        .api(reqwest::Method::POST, "/api/entities", &key, Some(order))
        .await;
    assert_eq!(status, 201, "{body}");
    let book = json!({"name": "Book", "entity": {"type": "ORDER", "ref": "o-1001"}});
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            "/api/events/sync?timeout_ms=20000",
            &key,
            Some(book),
        )
        .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("success")), "{body}");

    let b = Browser::start("ui_read_an_orders_timeline").await;
    b.sign_in(&server.base, &key).await;
    b.click("nav.top a[href='/ui/entities']").await;
    // The page opens on a list of the account's entities.
    let listed = b.text("#entity-list").await;
    assert!(listed.contains("o-1001") && listed.contains("ORDER"), "{listed}");
    b.type_into("#e-type", "ORDER").await;
    b.type_into("#e-ref", "o-1001").await;
    b.click("form[action='/ui/entities'] button").await;
    assert_eq!(b.text("#entity-status").await, "BOOKED");
    let timeline = eventually(PATIENCE, "the CREATE event and its audit in the timeline", || async {
        b.goto(&format!("{}/ui/entities?type=ORDER&ref=o-1001", server.base))
            .await;
        // Audit records are folded under their event: unfold them to read them.
        b.eval("document.querySelectorAll('#timeline details.audits').forEach(function (d) { d.open = true; });")
            .await;
        b.try_text("#timeline")
            .await
            .filter(|t| t.contains("CREATE") && t.contains("order o-1001 created"))
    })
    .await;
    assert!(timeline.contains("Book"), "{timeline}");
    assert!(timeline.contains("audit"), "{timeline}");
    // Audit records are folded under the event they describe; an audit record of Book links to Book's entry.
    let (_, events) = server
        .api(
            reqwest::Method::GET,
            "/api/events?entity_type=ORDER&entity_ref=o-1001&kind=orchestration&name=Book",
            &key,
            None,
        )
        .await;
    let id = events["items"][0]["id"].as_str().unwrap().to_owned();
    let link = format!("#ev-{id} details.audits li.audit a[href='#ev-{id}']");
    assert!(
        b.try_find(&link).await.is_some(),
        "no audit record links to event {id}: {timeline}"
    );
    assert!(b.try_find(&format!("#ev-{id}")).await.is_some());
    // On a phone's width the page reflows instead of scrolling sideways.
    b.resize(390, 844).await;
    let fits = b
        .eval("return document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1;")
        .await;
    assert_eq!(fits, json!(true), "the timeline page scrolls sideways at 390 px");
    b.resize(1280, 1000).await;
    // The workflow link leads to the version the order runs on, with its rulesets as a diagram.
    b.click("a[href^='/ui/workflows/ORDER']").await;
    assert_eq!(b.text("#wf-version").await, "1.0");
    let created = b.text("#status-CREATED").await;
    assert!(created.contains("Book") && created.contains("BOOKED"), "{created}");
    worker.stop().await;
}

/// Pool `emails` (queue `mail`) at v1 with a canary of v2 at 20 %; returns the rollout's id. A canary needs
/// something to run it: here an autoscaler policy that would start its workers.
pub(crate) async fn canary_of_emails(server: &Server) -> String {
    let (status, body) = server
        .api(
            reqwest::Method::PUT,
            "/api/pools/emails",
            ADMIN,
            Some(json!({"queues": ["mail"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    ordo::rollout::announce_version(&server.db.pool, "emails", "v1", &[])
        .await
        .unwrap();
    let (status, body) = server
        .api(
            reqwest::Method::PUT,
            "/api/pools/emails/scaling",
            ADMIN,
            Some(json!({"min": 1, "max": 2, "target_per_worker": 10, "scale_down_delay_s": 60})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, rollout) = server
        .api(
            reqwest::Method::POST,
            "/api/rollouts",
            ADMIN,
            Some(json!({"pool": "emails", "version": "v2", "canary_percent": 20})),
        )
        .await;
    assert_eq!(status, 201, "{rollout}");
    rollout["id"].as_str().unwrap().to_owned()
}

/// An administrator opens a canary rollout, promotes it after confirming, and the page shows it promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_promote_a_rollout() {
    let server = Server::start().await;
    let id = canary_of_emails(&server).await;

    let b = Browser::start("ui_promote_a_rollout").await;
    b.sign_in(&server.base, ADMIN).await;
    b.click("nav.top a[href='/ui/pools']").await;
    let pools = b.text("main").await;
    assert!(
        pools.contains("Pool emails") && pools.contains("canary") && pools.contains("20%"),
        "{pools}"
    );
    // the rollouts list links to it
    let listed = b.text("#rollouts tbody").await;
    assert!(
        listed.contains(&format!("#{id}")) && listed.contains("v1 → v2"),
        "{listed}"
    );
    b.type_into("#r-id", &id).await;
    b.click("form[action='/ui/pools'] button").await;
    assert_eq!(b.text("#rollout-state").await, "canary");
    b.click("a[href$='/promote']").await;
    let question = b.text("[role=alertdialog] h2").await;
    assert!(question.contains("Promote v2 in pool emails?"), "{question}");
    b.click("[role=alertdialog] button").await;
    assert!(b.text("[role=status]").await.contains("Promoted"));
    let state = b.text("#rollout-state").await;
    assert!(state == "promoted" || state == "completed", "{state}");
}

// ---------------------------------------------------------------------------------------------------------------
// Plain HTTP: redirects, isolation and form errors, without a browser.

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in through the form and returns the session cookie (`name=value`).
async fn sign_in(server: &Server, key: &str) -> String {
    let res = client()
        .post(format!("{}/ui/login", server.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={}", ordo::ui::html::enc(key)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    cookie.split(';').next().unwrap().to_owned()
}

async fn get(server: &Server, path: &str, cookie: Option<&str>) -> (u16, String, String) {
    let mut req = client().get(format!("{}{path}", server.base));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let location = res
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, location, res.text().await.unwrap())
}

/// Every page redirects to sign-in without a valid session, and a revoked key's session ends at its next request.
#[tokio::test]
async fn ui_pages_without_a_session_redirect_to_sign_in() {
    let server = Server::start().await;
    for path in [
        "/ui",
        "/ui/overview",
        "/ui/jobs",
        "/ui/jobs/1",
        "/ui/entities",
        "/ui/pools",
        "/ui/fragments/overview",
    ] {
        let (status, location, _) = get(&server, path, None).await;
        let want = if path == "/ui" { "/ui/overview" } else { "/ui/login" };
        assert_eq!((status, location.as_str()), (303, want), "{path}");
    }
    let (status, _, _) = get(&server, "/ui/jobs", Some("ordo_session=k.forged")).await;
    assert_eq!(status, 303);
    let (status, location, _) = get(&server, "/ui/jobs", Some("ordo_session=garbage")).await;
    assert_eq!((status, location.as_str()), (303, "/ui/login"));
    let (status, _, body) = get(&server, "/ui/login", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("<label for=\"key\">"), "the key field is labelled");

    // A key revoked after sign-in: the next page ends the session.
    let key = server.account("acme").await;
    let cookie = sign_in(&server, &key).await;
    assert_eq!(get(&server, "/ui/jobs", Some(&cookie)).await.0, 200);
    sqlx::query("delete from api_key where account_id = 'acme'")
        .execute(&server.db.pool)
        .await
        .unwrap();
    let res = client()
        .get(format!("{}/ui/jobs", server.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert!(res.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
}

/// Account B's jobs never appear to A: not in the list, not by id, not in the overview; the admin token sees
/// accounts and every account's jobs (each with its account), but no account page such as entities.
#[tokio::test]
async fn ui_never_shows_another_accounts_data() {
    let server = Server::start().await;
    let a = server.account("acme").await;
    let b = server.account("rival").await;
    server.enqueue(&a, json!({"kind": "noop", "queue": "shared"})).await;
    let hidden = server
        .enqueue(&b, json!({"kind": "rival-only", "queue": "rival-queue"}))
        .await;
    let cookie = sign_in(&server, &a).await;
    let (status, _, list) = get(&server, "/ui/jobs", Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(list.contains("noop") && !list.contains("rival-only"), "{list}");
    let (status, _, page) = get(&server, &format!("/ui/jobs/{hidden}"), Some(&cookie)).await;
    assert_eq!(status, 404, "{page}");
    assert!(!page.contains("rival-only"));
    let (_, _, overview) = get(&server, "/ui/overview", Some(&cookie)).await;
    assert!(
        overview.contains("shared") && !overview.contains("rival-queue"),
        "{overview}"
    );
    let (_, _, fragment) = get(&server, "/ui/fragments/overview", Some(&cookie)).await;
    assert!(!fragment.contains("rival-queue"), "{fragment}");

    // Admin pages are closed to account keys, and account pages to the admin token.
    assert_eq!(get(&server, "/ui/pools", Some(&cookie)).await.0, 403);
    let admin = sign_in(&server, ADMIN).await;
    let (status, _, accounts) = get(&server, "/ui/accounts", Some(&admin)).await;
    assert_eq!(status, 200);
    assert!(accounts.contains("acme") && accounts.contains("rival"), "{accounts}");
    let (status, _, jobs) = get(&server, "/ui/jobs", Some(&admin)).await;
    assert_eq!(status, 200);
    assert!(jobs.contains("rival-only") && jobs.contains(">acme<"), "{jobs}");
    assert_eq!(get(&server, "/ui/entities", Some(&admin)).await.0, 403);
}

/// The accounts page shows each account's weight and its running jobs against its limits.
#[tokio::test]
async fn ui_accounts_show_running_jobs_against_limits() {
    let server = Server::start().await;
    let key = server.account("acme").await;
    server.account("other").await;
    let limits = serde_json::json!({
        "weight": 4,
        "queues": {"default": {"max_running": 5}},
        "kinds": {"noop": {"max_running": 20, "max_per_second": 50}}
    });
    let res = client()
        .put(format!("{}/api/accounts/acme/limits", server.base))
        .bearer_auth(ADMIN)
        .json(&limits)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for _ in 0..3 {
        let res = client()
            .post(format!("{}/api/jobs", server.base))
            .bearer_auth(&key)
            .json(&serde_json::json!({"kind": "noop"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }
    let claimed = crate::queue::claim_n(&server.db.pool, 2, Duration::from_secs(60)).await;
    assert_eq!(claimed.len(), 2);
    let admin = sign_in(&server, ADMIN).await;
    let (status, _, page) = get(&server, "/ui/accounts", Some(&admin)).await;
    assert_eq!(status, 200);
    let row = page.split("<tr>").find(|r| r.contains(">acme<")).expect("acme's row");
    assert!(row.contains(">4<"), "weight: {row}");
    assert!(
        row.contains("queue default: <span class=\"num\">2 / 5</span> running"),
        "{row}"
    );
    // (the starts of the last second depend on how long ago the claim was: only the limit is certain)
    assert!(
        row.contains("kind noop: <span class=\"num\">2 / 20</span> running, <span class=\"num\">"),
        "{row}"
    );
    assert!(row.contains(" / 50</span> a second"), "{row}");
    let other = page.split("<tr>").find(|r| r.contains(">other<")).expect("other's row");
    assert!(other.contains(">1<") && other.contains("—"), "{other}");
}

/// Forms reject bad input with a message and a 4xx status; cross-site posts are refused; names are escaped.
#[tokio::test]
async fn ui_forms_reject_bad_input_with_messages() {
    let server = Server::start().await;
    let key = server.account("acme").await;
    let post = |path: &str, body: &str| {
        client()
            .post(format!("{}{path}", server.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned())
    };
    let res = post("/ui/login", "key=").send().await.unwrap();
    assert_eq!(res.status(), 422);
    assert!(res.text().await.unwrap().contains("Enter an API key"));
    for bad in ["key=wrong", "key=a%0Ab%7F"] {
        let res = post("/ui/login", bad).send().await.unwrap();
        assert_eq!(res.status(), 401, "{bad}");
        assert!(res.text().await.unwrap().contains("Unknown or revoked key"), "{bad}");
    }
    let res = post("/ui/login", &format!("key={key}"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "a cross-site sign-in is refused");

    let cookie = sign_in(&server, &key).await;
    let (status, _, body) = get(&server, "/ui/jobs?state=bogus&limit=5", Some(&cookie)).await;
    assert_eq!(status, 422);
    assert!(body.contains("unknown state") && body.contains("Search jobs"), "{body}");
    // A partial key lists what matches instead.
    let (status, _, body) = get(&server, "/ui/entities?type=ORDER", Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(body.contains("id=\"entity-list\""), "{body}");
    let (status, _, body) = get(&server, "/ui/entities?type=ORDER&ref=nope", Some(&cookie)).await;
    assert_eq!(status, 404);
    assert!(body.contains("No entity ORDER nope"), "{body}");

    // Retrying a job that has not failed is refused by the API; the page says why.
    let id = server
        .enqueue(&key, json!({"kind": "noop", "queue": "<script>x</script>"}))
        .await;
    let res = post(&format!("/ui/jobs/{id}/retry"), "")
        .header("cookie", &cookie)
        .header("origin", server.base.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let body = res.text().await.unwrap();
    assert!(body.contains("role=\"alert\""), "{body}");
    assert!(
        !body.contains("<script>x</script>") && body.contains("&lt;script&gt;x&lt;/script&gt;"),
        "escaped"
    );
    let res = post(&format!("/ui/jobs/{id}/cancel"), "")
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "a cross-site post is refused");
    let (_, job) = server
        .api(reqwest::Method::GET, &format!("/api/jobs/{id}"), &key, None)
        .await;
    assert_eq!(job["state"], "available", "the refused post changed nothing");

    // The rollout form: a bad number is named.
    let admin = sign_in(&server, ADMIN).await;
    let res = post("/ui/rollouts", "pool=emails&version=v2&canary_percent=lots")
        .header("cookie", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    assert!(res.text().await.unwrap().contains("canary_percent"));
    let res = post("/ui/rollouts", "pool=nope&version=v2&canary_percent=150")
        .header("cookie", &admin)
        .send()
        .await
        .unwrap();
    assert!([404, 422].contains(&res.status().as_u16()), "{}", res.status());
    assert!(res.text().await.unwrap().contains("role=\"alert\""));
    let (status, _, _) = get(&server, "/ui/pools?rollout=abc", Some(&admin)).await;
    assert_eq!(status, 422);
    // `/ui/rollouts` is the rollouts list (it answered 405 to a GET), with its own filter's errors.
    let (status, _, body) = get(&server, "/ui/rollouts", Some(&admin)).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("id=\"rollout-list\"") && body.contains("No rollout yet."),
        "{body}"
    );
    let (status, _, body) = get(&server, "/ui/rollouts?state=sideways", Some(&admin)).await;
    assert_eq!(status, 422);
    assert!(body.contains("role=\"alert\""), "{body}");
    let (status, _, body) = get(&server, "/ui/pools", Some(&admin)).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("id=\"rollouts\"") && body.contains("No rollout yet."),
        "{body}"
    );
}

/// The loads pages render what the loads API answers: the account's loads, a load's batches with counts, and a
/// batch's failed records; another account's load is a 404.
#[tokio::test]
async fn ui_shows_loads_and_their_batches() {
    let server = Server::start().await;
    let key = server.account("acme").await;
    let rival = server.account("rival").await;
    let (status, load) = server
        .api(
            reqwest::Method::POST,
            "/api/loads",
            &key,
            Some(json!({"name": "stock-feed"})),
        )
        .await;
    assert_eq!(status, 201, "{load}");
    let load_id = load["id"].as_str().unwrap().to_owned();
    let batch = json!({"action": "upsert", "entity_type": "inventory", "records": [
        {"sku_ref": "sku-1", "location_ref": "DC1", "qty": 5},
        {"sku_ref": "sku-2", "location_ref": "DC1", "qty": -3}
    ]});
    let (status, b) = server
        .api(
            reqwest::Method::POST,
            &format!("/api/loads/{load_id}/batches"),
            &key,
            Some(batch),
        )
        .await;
    assert_eq!(status, 202, "{b}");
    let batch_id = b["id"].as_str().unwrap().to_owned();

    let cookie = sign_in(&server, &key).await;
    let (status, _, list) = get(&server, "/ui/loads", Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(
        list.contains("stock-feed") && list.contains(&format!("/ui/loads/{load_id}")),
        "{list}"
    );
    let (status, _, detail) = get(&server, &format!("/ui/loads/{load_id}"), Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(
        detail.contains("id=\"batches\"") && detail.contains(&batch_id),
        "{detail}"
    );
    let (status, _, page) = get(
        &server,
        &format!("/ui/loads/{load_id}/batches/{batch_id}"),
        Some(&cookie),
    )
    .await;
    assert_eq!(status, 200);
    assert!(page.contains("Failed records"), "{page}");

    let other = sign_in(&server, &rival).await;
    assert_eq!(get(&server, &format!("/ui/loads/{load_id}"), Some(&other)).await.0, 404);
    let (_, _, list) = get(&server, "/ui/loads", Some(&other)).await;
    assert!(!list.contains("stock-feed"), "{list}");
}

/// Every form field of every page has a label (`<label for>` naming its id), and every page has one `<h1>` and a
/// `lang`, so screen readers can name what they read.
#[tokio::test]
async fn ui_form_fields_are_labelled() {
    let server = Server::start().await;
    let key = server.account("acme").await;
    let cookie = sign_in(&server, &key).await;
    let admin = sign_in(&server, ADMIN).await;
    let mut pages = vec![("/ui/login".to_owned(), None)];
    for p in [
        "/ui/overview",
        "/ui/jobs",
        "/ui/entities",
        "/ui/workflows",
        "/ui/schedules",
        "/ui/loads",
    ] {
        pages.push((p.to_owned(), Some(cookie.clone())));
    }
    for p in ["/ui/overview", "/ui/pools", "/ui/accounts"] {
        pages.push((p.to_owned(), Some(admin.clone())));
    }
    for (path, c) in pages {
        let (status, _, html) = get(&server, &path, c.as_deref()).await;
        assert_eq!(status, 200, "{path}");
        assert!(html.starts_with("<!doctype html><html lang=\"en\">"), "{path}");
        assert_eq!(html.matches("<h1>").count(), 1, "{path}");
        for tag in ["<input", "<select"] {
            for (at, _) in html.match_indices(tag) {
                let element = &html[at..at + html[at..].find('>').unwrap()];
                let id = element
                    .split("id=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or_else(|| panic!("{path}: a field without an id: {element}"));
                assert!(
                    html.contains(&format!("<label for=\"{id}\">")),
                    "{path}: field {id} has no label"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Security headers and the content security policy.

/// What every response under `/ui` must carry, header by header.
const SECURITY_HEADERS: [(&str, &str); 4] = [
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
    ("content-security-policy", ordo::ui::CSP),
];

/// The first piece of markup that the policy would block or that would run code: a `<script>` without `src`, an
/// `on…=` event handler, a `javascript:` URL, a `<style>` block or a `style=` attribute.
fn inline_code(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let mut rest = lower.as_str();
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').map_or(rest.len(), |e| start + e + 1);
        let tag = &rest[start..end];
        rest = &rest[end..];
        let name: String = tag[1..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        if name == "script" && !tag.contains(" src=") {
            return Some(tag.to_owned());
        }
        if name == "style" || tag.contains("javascript:") {
            return Some(tag.to_owned());
        }
        // Attribute names follow whitespace; values are quoted and escaped, so a name can only start after a space.
        for attr in tag.split_whitespace().skip(1) {
            let attr_name = attr.split('=').next().unwrap_or("");
            if (attr_name.starts_with("on") && attr.contains('=')) || attr_name == "style" {
                return Some(tag.to_owned());
            }
        }
    }
    None
}

/// The checker itself catches each kind of inline code, and lets the dashboard's own markup through.
#[test]
fn inline_code_is_detected() {
    for bad in [
        "<p>x</p><script>alert(1)</script>",
        "<SCRIPT type=\"module\">x()</SCRIPT>",
        "<button onclick=\"x()\">",
        "<body\nonload='x()'>",
        "<a href=\"javascript:x()\">",
        "<style>p{}</style>",
        "<p style=\"color:red\">",
    ] {
        assert!(inline_code(bad).is_some(), "{bad}");
    }
    let good = "<script src=\"/ui/assets/ui.js\" defer></script><button type=\"submit\" class=\"online\" \
                aria-label=\"on=off\">on</button><p>onclick=\"x\" style=\"y\"</p>";
    assert_eq!(inline_code(good), None);
}

/// Every response under `/ui` (pages of both roles, redirects, an API error page, a 404, a 405, the static
/// assets) carries the security headers, and no page holds inline script, event handlers or inline styles, even
/// with hostile strings in the data it shows.
#[tokio::test]
async fn ui_every_response_carries_security_headers() {
    let server = Server::start().await;
    let key = server.account("acme").await;
    let hostile = "<script>alert(1)</script>\" onmouseover=\"alert(2)";
    let job = server
        .enqueue(&key, json!({"kind": "noop", "queue": "q1", "args": {"note": hostile}}))
        .await;
    let cookie = sign_in(&server, &key).await;
    let admin = sign_in(&server, ADMIN).await;

    // (method, path, session, status): pages, redirects, errors and assets alike.
    use reqwest::Method as M;
    let (acc, adm) = (Some(cookie.as_str()), Some(admin.as_str()));
    let mut cases: Vec<(M, String, Option<&str>, u16)> = vec![
        (M::GET, "/".into(), None, 303),
        (M::GET, "/ui".into(), None, 303),
        (M::GET, "/ui/login".into(), None, 200),
        (M::GET, "/ui/overview".into(), None, 303),
        (M::GET, "/ui/assets/ui.css".into(), None, 200),
        (M::GET, "/ui/assets/ui.js".into(), None, 200),
        (M::GET, "/ui/no-such-page".into(), None, 404),
        (M::GET, "/ui/jobs/1/nested/deeper".into(), acc, 404),
        (M::DELETE, "/ui/jobs".into(), acc, 405),
        (M::GET, format!("/ui/jobs/{job}"), acc, 200),
        (M::GET, "/ui/jobs/999999999".into(), acc, 404),
        (M::GET, "/ui/pools".into(), acc, 403),
        (M::GET, "/ui/fragments/overview".into(), acc, 200),
    ];
    for p in ["overview", "jobs", "entities", "workflows", "schedules", "loads"] {
        cases.push((M::GET, format!("/ui/{p}"), acc, 200));
    }
    for p in ["overview", "pools", "accounts"] {
        cases.push((M::GET, format!("/ui/{p}"), adm, 200));
    }

    for (method, path, c, want) in cases {
        let mut req = client().request(method.clone(), format!("{}{path}", server.base));
        if let Some(c) = c {
            req = req.header("cookie", c);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), want, "{method} {path}");
        for (name, value) in SECURITY_HEADERS {
            let got = res.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(got.as_deref(), Some(value), "{method} {path}: {name}");
        }
        let csp = res.headers()["content-security-policy"].to_str().unwrap().to_owned();
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        let content_type = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = res.text().await.unwrap();
        if content_type.starts_with("text/html") {
            assert_eq!(inline_code(&body), None, "{path} holds inline code");
        }
        if path.ends_with(".js") {
            assert!(content_type.starts_with("text/javascript"), "{content_type}");
        }
    }

    // The job page shows the hostile string as text.
    let (_, _, page) = get(&server, &format!("/ui/jobs/{job}"), Some(&cookie)).await;
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");

    // Under `no-referrer` a browser's own form post says `Origin: null`: accepted only with Sec-Fetch-Site.
    for (site, want) in [(Some("same-origin"), 303), (Some("cross-site"), 403), (None, 403)] {
        let mut req = client()
            .post(format!("{}/ui/login", server.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", "null")
            .body(format!("key={}", ordo::ui::html::enc(&key)));
        if let Some(site) = site {
            req = req.header("sec-fetch-site", site);
        }
        assert_eq!(req.send().await.unwrap().status().as_u16(), want, "{site:?}");
    }
}
