//! The autoscaler: its process driver with real worker processes, and its Kubernetes driver against a fake API.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ordo::autoscale::{self, Desired, KubernetesDriver, PoolDriver, ScaleTarget};
use ordo::queue::{self, NewJob};
use ordo::testkit::{self, eventually};
use serde_json::json;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::support::{acct, create_execution_table, signal};

/// SIGTERMs the autoscaler when a test ends early, so its worker children are stopped too (a SIGKILL from
/// `kill_on_drop` would orphan them).
pub struct TermOnDrop(pub u32);

impl Drop for TermOnDrop {
    fn drop(&mut self) {
        let pid = self.0.to_string();
        ordo::supervisor::send_signal(self.0, ordo::supervisor::Signal::Term);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Starts `ordo autoscaler --driver process` against `db_url`, a round every `interval_ms`; its workers poll every
/// 50 ms, hold 1.5 s leases and take `worker_args`.
pub fn spawn_autoscaler(db_url: &str, interval_ms: u64, worker_args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ordo"))
        .args([
            "autoscaler",
            "--driver",
            "process",
            "--interval-ms",
            &interval_ms.to_string(),
        ])
        .args(worker_args.iter().map(|a| format!("--worker-arg={a}")))
        .env("DATABASE_URL", db_url)
        .env_remove("REDIS_URL")
        .env("ORDO_POLL_MS", "50")
        .env("ORDO_LEASE_MS", "1500")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn ordo autoscaler")
}

/// Pids of live worker processes (heartbeat within the last 2 s) that are still running.
async fn live_pids(pool: &PgPool) -> HashSet<i32> {
    live_pids_within(pool, Duration::from_secs(2)).await
}

/// Pids of live worker processes (not stopping, heartbeat within `fresh`) that are still running; none while the
/// database does not answer.
pub async fn live_pids_within(pool: &PgPool, fresh: Duration) -> HashSet<i32> {
    let rows: Vec<i32> = sqlx::query_scalar(
        "select pid from worker where heartbeat_at > now() - make_interval(secs => $1) and not stopping",
    )
    .bind(fresh.as_secs_f64())
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    rows.into_iter()
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
        .collect()
}

/// The process driver: a backlog makes the worker count rise to max within one interval, it falls back to min
/// after the scale-down delay, a killed worker is replaced, and SIGTERM stops the autoscaler and its workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_driver_follows_the_backlog_and_replaces_dead_workers() {
    let db = testkit::db().await;
    create_execution_table(&db.pool).await;
    autoscale::put_target(
        &db.pool,
        "default",
        &ScaleTarget {
            min: 1,
            max: 3,
            target_per_worker: 10,
            scale_down_delay_s: 4,
        },
    )
    .await
    .unwrap();
    let mut scaler = spawn_autoscaler(&db.url, 500, &[]);
    let _guard = TermOnDrop(scaler.id().unwrap());
    eventually(Duration::from_secs(30), "the minimum of one worker", || async {
        (live_pids(&db.pool).await.len() == 1).then_some(())
    })
    .await;

    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let jobs: Vec<NewJob> = (0..100)
        .map(|_| NewJob::new("test.record", json!({"ms": 1500})))
        .collect();
    let t0 = Instant::now();
    q.enqueue_many(&acct(), jobs).await.unwrap();
    eventually(Duration::from_secs(30), "three workers for the backlog", || async {
        (live_pids(&db.pool).await.len() == 3).then_some(())
    })
    .await;
    // One interval to decide plus a worker's start-up and first heartbeat.
    let up = t0.elapsed();
    assert!(up < Duration::from_secs(5), "scaled up in {up:?}");
    eprintln!("process driver: 1 -> 3 workers in {up:?} (interval 500 ms)");

    eventually(Duration::from_secs(60), "the backlog to drain", || async {
        (crate::support::count_state(&db.pool, "completed").await == 100).then_some(())
    })
    .await;
    // The last wave (4 jobs of 1.5 s) wants one worker; the 4 s delay keeps three until after it finished.
    assert_eq!(live_pids(&db.pool).await.len(), 3, "no scale-down before the delay");
    eventually(Duration::from_secs(30), "back to the minimum", || async {
        (live_pids(&db.pool).await.len() == 1).then_some(())
    })
    .await;

    let victim = *live_pids(&db.pool).await.iter().next().unwrap();
    ordo::supervisor::send_signal(victim as u32, ordo::supervisor::Signal::Kill);
    eventually(Duration::from_secs(30), "a replacement worker", || async {
        let pids = live_pids(&db.pool).await;
        (pids.len() == 1 && !pids.contains(&victim)).then_some(())
    })
    .await;

    signal(&scaler, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), scaler.wait())
        .await
        .expect("the autoscaler exits")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    eventually(Duration::from_secs(30), "its workers to deregister", || async {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from worker where not stopping and heartbeat_at > now() - interval '2 seconds'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (n == 0).then_some(())
    })
    .await;
}

/// One request seen by the fake Kubernetes API.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: String,
    path: String,
    content_type: String,
    authorization: String,
    body: serde_json::Value,
}

/// A hand-written HTTP/1.1 server that records each request and answers by Deployment name: `…-missing` 404,
/// `…-busy` 409, anything else 200.
async fn fake_kube_api() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
                    if let Some(end) = head_end {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let header = |name: &str| {
                            head.lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                                })
                                .unwrap_or_default()
                        };
                        let len: usize = header("content-length").parse().unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            let n = sock.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                            continue;
                        }
                        let body = buf[end + 4..end + 4 + len].to_vec();
                        buf.drain(..end + 4 + len);
                        let mut first = head.lines().next().unwrap_or_default().split(' ');
                        let method = first.next().unwrap_or_default().to_owned();
                        let path = first.next().unwrap_or_default().to_owned();
                        log.lock().unwrap().push(Seen {
                            method,
                            path: path.clone(),
                            content_type: header("content-type"),
                            authorization: header("authorization"),
                            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                        });
                        let (status, body) = if path.contains("-missing/") {
                            (
                                "404 Not Found",
                                r#"{"kind":"Status","message":"deployments.apps \"x\" not found","code":404}"#,
                            )
                        } else if path.contains("-busy/") {
                            (
                                "409 Conflict",
                                r#"{"kind":"Status","message":"the object has been modified","code":409}"#,
                            )
                        } else {
                            ("200 OK", r#"{"kind":"Scale","spec":{"replicas":1}}"#)
                        };
                        let resp = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if sock.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            });
        }
    });
    (format!("http://{addr}"), seen)
}

fn want(pool: &str, version: &str, workers: u32) -> Desired {
    Desired {
        pool: pool.into(),
        version: version.into(),
        workers,
    }
}

/// The Kubernetes driver sends exactly one merge patch of the scale subresource per change, and a 404 or 409
/// from the API becomes a clear error.
#[tokio::test]
async fn kubernetes_driver_patches_the_scale_subresource() {
    let (base, seen) = fake_kube_api().await;
    let mut driver = KubernetesDriver::new(&base, "jobs", Some("sekret".into())).unwrap();
    driver
        .apply(&[want("default", "v1", 3), want("emails", "V2.1", 0)])
        .await
        .unwrap();
    let expected = vec![
        Seen {
            method: "PATCH".into(),
            path: "/apis/apps/v1/namespaces/jobs/deployments/ordo-worker-default-v1/scale".into(),
            content_type: "application/merge-patch+json".into(),
            authorization: "Bearer sekret".into(),
            body: json!({"spec": {"replicas": 3}}),
        },
        Seen {
            method: "PATCH".into(),
            path: "/apis/apps/v1/namespaces/jobs/deployments/ordo-worker-emails-v2-1/scale".into(),
            content_type: "application/merge-patch+json".into(),
            authorization: "Bearer sekret".into(),
            body: json!({"spec": {"replicas": 0}}),
        },
    ];
    assert_eq!(*seen.lock().unwrap(), expected);

    // Unchanged counts send nothing; a change sends one patch.
    driver
        .apply(&[want("default", "v1", 3), want("emails", "V2.1", 0)])
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2);
    driver
        .apply(&[want("default", "v1", 5), want("emails", "V2.1", 0)])
        .await
        .unwrap();
    let all = seen.lock().unwrap().clone();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].body, json!({"spec": {"replicas": 5}}));

    let err = driver.apply(&[want("default", "missing", 1)]).await.unwrap_err();
    assert!(matches!(err, autoscale::Error::DeploymentNotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "kubernetes: deployment jobs/ordo-worker-default-missing not found (create one Deployment per pool version)"
    );
    let err = driver.scale("default", "busy", 2).await.unwrap_err();
    match &err {
        autoscale::Error::Kubernetes { status, message, .. } => {
            assert_eq!((*status, message.as_str()), (409, "the object has been modified"))
        }
        other => panic!("expected a 409 error, got {other:?}"),
    }
    // A failed change is retried next round (it was not remembered as applied).
    let before = seen.lock().unwrap().len();
    let _ = driver.apply(&[want("default", "missing", 1)]).await;
    assert_eq!(seen.lock().unwrap().len(), before + 1);
}

/// The autoscaler publishes desired counts per pool version from depth: the stable version carries unrouted
/// work, a draining version keeps workers while it has work, and goes to zero when empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaler_round_decides_per_pool_version() {
    let db = testkit::db().await;
    autoscale::put_target(
        &db.pool,
        "default",
        &ScaleTarget {
            min: 1,
            max: 4,
            target_per_worker: 10,
            scale_down_delay_s: 600,
        },
    )
    .await
    .unwrap();
    let mut a = autoscale::Autoscaler::new(db.pool.clone(), "test".into(), autoscale::NoneDriver);
    let d = a.round().await.unwrap().unwrap();
    assert_eq!(
        d,
        vec![want("default", "v1", 1)],
        "a fresh pool gets its default version at min"
    );

    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    q.enqueue_many(&acct(), (0..25).map(|_| NewJob::new("noop", json!({}))).collect())
        .await
        .unwrap();
    // Future work is not depth.
    let mut later = NewJob::new("noop", json!({}));
    later.run_at = Some(chrono::Utc::now() + chrono::TimeDelta::hours(1));
    q.enqueue(&acct(), later).await.unwrap();
    let d = a.round().await.unwrap().unwrap();
    assert_eq!(d, vec![want("default", "v1", 3)]);

    let mut req = ordo::rollout::NewRollout::new("default", "v2");
    req.canary_percent = Some(100);
    let r = ordo::rollout::start(&db.pool, &req).await.unwrap();
    q.enqueue_many(&acct(), (0..15).map(|_| NewJob::new("noop", json!({}))).collect())
        .await
        .unwrap();
    ordo::rollout::promote(&db.pool, r.id).await.unwrap();
    let d = a.round().await.unwrap().unwrap();
    // Unrouted work (the 25 from before the rollout) belongs to the stable version, now v2, with the 15 routed
    // to it; v1 is draining with nothing routed to it, so it goes to zero at once.
    assert_eq!(d, vec![want("default", "v1", 0), want("default", "v2", 4)]);
}
