//! Static checks of the deployment files, since no Docker engine or cluster runs here: every YAML parses; every
//! command, flag and environment variable matches `ordo --help`; ports and probes agree; alert rules and the
//! dashboard only use metrics ordo exports.

use std::collections::BTreeSet;
use std::path::Path;

use clap::CommandFactory;
use serde_norway::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The subcommand `name` of `ordo`, with its long flags and environment variables (global ones included).
struct Role {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

fn role(name: &str) -> Role {
    let cli = ordo::cli::Cli::command();
    let sub = cli
        .find_subcommand(name)
        .unwrap_or_else(|| panic!("`ordo {name}` is not a subcommand"));
    let mut flags = BTreeSet::new();
    let mut env = BTreeSet::new();
    for a in sub.get_arguments().chain(cli.get_arguments()) {
        if let Some(l) = a.get_long() {
            flags.insert(format!("--{l}"));
        }
        if let Some(e) = a.get_env() {
            env.insert(e.to_string_lossy().into_owned());
        }
    }
    // Levels come from RUST_LOG, read by the logging set-up rather than a flag.
    env.insert("RUST_LOG".into());
    Role { flags, env }
}

fn all_role_env() -> BTreeSet<String> {
    let cli = ordo::cli::Cli::command();
    cli.get_subcommands().flat_map(|s| role(s.get_name()).env).collect()
}

/// Checks an `ordo` argv: a real subcommand and only its flags.
fn check_argv(argv: &[String], what: &str) -> Role {
    let r = role(&argv[0]);
    for a in &argv[1..] {
        if a.starts_with("--") {
            let flag = a.split('=').next().unwrap_or(a);
            assert!(r.flags.contains(flag), "{what}: `ordo {}` has no flag {flag}", argv[0]);
        }
    }
    r
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// docker-compose.yml has every role, each with a real subcommand, real flags and known variables.
#[test]
fn compose_services_match_the_binary() {
    let mut doc = yaml_docs(&root().join("docker-compose.yml")).remove(0);
    // Compose files share settings through `<<:` merge keys.
    doc.apply_merge().unwrap();
    let services = doc["services"].as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    for required in [
        "postgres",
        "redis",
        "migrate",
        "api",
        "scheduler",
        "autoscaler",
        "worker-blue",
        "worker-green",
        "prometheus",
        "grafana",
    ] {
        assert!(names.contains(required), "service {required} missing");
    }
    let mut ordo_services = 0;
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if svc["image"].as_str() != Some("ordo:local") {
            continue;
        }
        ordo_services += 1;
        let argv = strings(&svc["command"]);
        let r = check_argv(&argv, name);
        let env = svc["environment"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{name}: environment"));
        let keys: BTreeSet<String> = env.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect();
        assert!(keys.contains("DATABASE_URL"), "{name}: DATABASE_URL");
        for k in &keys {
            assert!(r.env.contains(k), "{name}: `ordo {}` reads no {k}", argv[0]);
        }
        if argv[0] == "api" {
            assert_eq!(env["ORDO_LISTEN"].as_str(), Some("0.0.0.0:8080"));
            assert_eq!(strings(&svc["ports"]), vec!["8080:8080".to_owned()]);
        }
        // Health checks ask the role itself over HTTP: the API's /readyz (the database answers), the other
        // roles' /healthz beside /metrics; never just whether the binary starts.
        if argv[0] != "migrate" {
            let test = strings(&svc["healthcheck"]["test"]);
            let (listen, path) = match argv[0].as_str() {
                "api" => (env["ORDO_LISTEN"].as_str(), "/readyz"),
                _ => (env["ORDO_METRICS_LISTEN"].as_str(), "/healthz"),
            };
            let port = listen
                .and_then(|l| l.rsplit(':').next())
                .unwrap_or_else(|| panic!("{name}: no listen address for its health check"));
            let url = format!("http://127.0.0.1:{port}{path}");
            assert_eq!(test.first().map(String::as_str), Some("CMD"), "{name}: {test:?}");
            assert_eq!(test.get(1).map(String::as_str), Some("curl"), "{name}: {test:?}");
            assert!(
                test.contains(&"-f".to_owned()) || test.iter().any(|a| a.starts_with("-f")),
                "{name}: curl must fail on an HTTP error: {test:?}"
            );
            assert_eq!(test.last(), Some(&url), "{name}: health check {test:?}");
        }
    }
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(" curl"),
        "the image must carry curl for the compose health checks"
    );
    assert_eq!(ordo_services, 6, "migrate, api, scheduler, autoscaler and two workers");

    // Prometheus scrapes each role where it serves /metrics.
    let prom = &yaml_docs(&root().join("deploy/prometheus/prometheus.yml"))[0];
    let targets: BTreeSet<String> = prom["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|c| {
            c["static_configs"]
                .as_sequence()
                .unwrap()
                .iter()
                .flat_map(|s| strings(&s["targets"]))
        })
        .collect();
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        let argv = strings(&svc["command"]);
        if svc["image"].as_str() != Some("ordo:local") || argv[0] == "migrate" {
            continue;
        }
        let port = if argv[0] == "api" {
            "8080".to_owned()
        } else {
            let listen = svc["environment"]["ORDO_METRICS_LISTEN"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: ORDO_METRICS_LISTEN"));
            listen.rsplit(':').next().unwrap().to_owned()
        };
        assert!(
            targets.contains(&format!("{name}:{port}")),
            "prometheus does not scrape {name}:{port}"
        );
    }
}

/// The Kubernetes manifests: real subcommands and flags, known variables, probes on the served paths and ports,
/// worker Deployments named `ordo-worker-<pool>-<version>` after their flags, a grace period above the drain time,
/// and an autoscaler allowed nothing but the scale subresource.
#[test]
fn kubernetes_manifests_match_the_binary() {
    let dir = root().join("deploy/kubernetes");
    let kustomization = &yaml_docs(&dir.join("kustomization.yaml"))[0];
    let mut docs = Vec::new();
    for file in strings(&kustomization["resources"]) {
        docs.extend(yaml_docs(&dir.join(&file)));
    }
    let keda = yaml_docs(&dir.join("keda-scaledobject.yaml"));
    assert_eq!(keda[0]["kind"].as_str(), Some("ScaledObject"));

    let known_env = all_role_env();
    let config = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("ConfigMap"))
        .expect("ConfigMap");
    let secret = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Secret"))
        .expect("Secret");
    for k in config["data"]
        .as_mapping()
        .unwrap()
        .keys()
        .chain(secret["stringData"].as_mapping().unwrap().keys())
    {
        let k = k.as_str().unwrap();
        assert!(known_env.contains(k), "no role reads {k}");
    }
    let drain_ms: u64 = config["data"]["ORDO_DRAIN_MS"].as_str().unwrap().parse().unwrap();
    let metrics_port: u64 = config["data"]["ORDO_METRICS_LISTEN"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    let mut roles_seen = BTreeSet::new();
    for d in &docs {
        let kind = d["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("a manifest without kind: {d:?}"));
        assert!(d["apiVersion"].is_string(), "{kind} without apiVersion");
        let pod = match kind {
            "Deployment" | "Job" => &d["spec"]["template"]["spec"],
            "Role" => {
                for rule in d["rules"].as_sequence().unwrap() {
                    assert_eq!(
                        strings(&rule["resources"]),
                        vec!["deployments/scale".to_owned()],
                        "autoscaler role too wide"
                    );
                }
                continue;
            }
            _ => continue,
        };
        let name = d["metadata"]["name"].as_str().unwrap();
        for c in pod["containers"].as_sequence().unwrap() {
            assert_eq!(c["image"].as_str(), Some("ordo"), "{name}: image");
            let argv = strings(&c["args"]);
            let r = check_argv(&argv, name);
            roles_seen.insert(argv[0].clone());
            for e in c["env"].as_sequence().map(|s| s.as_slice()).unwrap_or_default() {
                let k = e["name"].as_str().unwrap();
                assert!(r.env.contains(k), "{name}: `ordo {}` reads no {k}", argv[0]);
            }
            let ports: Vec<(String, u64)> = c["ports"]
                .as_sequence()
                .map(|s| {
                    s.iter()
                        .map(|p| {
                            (
                                p["name"].as_str().unwrap().to_owned(),
                                p["containerPort"].as_u64().unwrap(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            for probe in ["readinessProbe", "livenessProbe"] {
                let get = &c[probe]["httpGet"];
                if get.is_null() {
                    continue;
                }
                let path = get["path"].as_str().unwrap();
                let port = get["port"].as_str().unwrap();
                let number = ports
                    .iter()
                    .find(|(n, _)| n == port)
                    .unwrap_or_else(|| panic!("{name}: no port {port}"))
                    .1;
                if argv[0] == "api" {
                    assert!(["/healthz", "/readyz"].contains(&path), "{name}: {path}");
                    let listen = c["env"]
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .find(|e| e["name"].as_str() == Some("ORDO_LISTEN"))
                        .unwrap();
                    assert!(
                        listen["value"].as_str().unwrap().ends_with(&format!(":{number}")),
                        "{name}: ORDO_LISTEN and port differ"
                    );
                } else {
                    assert_eq!(path, "/healthz", "{name}: the metrics listener serves /healthz only");
                    assert_eq!(
                        number, metrics_port,
                        "{name}: metrics port differs from ORDO_METRICS_LISTEN"
                    );
                }
            }
            if argv[0] == "worker" {
                let flag = |f: &str| argv.iter().position(|a| a == f).map(|i| argv[i + 1].clone()).unwrap();
                assert_eq!(name, format!("ordo-worker-{}-{}", flag("--pool"), flag("--version")));
                let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
                assert!(
                    grace * 1000 > drain_ms,
                    "{name}: grace period {grace} s is not above the drain time"
                );
            }
            if argv[0] == "autoscaler" {
                assert_eq!(pod["serviceAccountName"].as_str(), Some("ordo-autoscaler"));
            }
        }
    }
    for r in ["migrate", "api", "scheduler", "autoscaler", "worker"] {
        assert!(roles_seen.contains(r), "no manifest runs `ordo {r}`");
    }
    // Services point at named ports the pods declare.
    for svc in docs.iter().filter(|d| d["kind"].as_str() == Some("Service")) {
        for p in svc["spec"]["ports"].as_sequence().unwrap() {
            assert_eq!(p["targetPort"].as_str(), Some("http"));
        }
    }
}

fn exported_metrics() -> BTreeSet<String> {
    let src = std::fs::read_to_string(root().join("src/telemetry/metrics.rs")).unwrap();
    src.split('"')
        .filter(|s| s.starts_with("ordo_"))
        .map(str::to_owned)
        .collect()
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("ordo_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        out.push(base.to_owned());
        rest = &tail[end..];
    }
    out
}

/// Alert rules and the Grafana dashboard use only metrics ordo exports, and `promtool` accepts the rules.
#[test]
fn alerts_and_dashboard_use_exported_metrics() {
    let exported = exported_metrics();
    let rules = &yaml_docs(&root().join("deploy/prometheus/alerts.yml"))[0];
    let mut alerts = BTreeSet::new();
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            alerts.insert(r["alert"].as_str().unwrap().to_owned());
            for m in metric_names(r["expr"].as_str().unwrap()) {
                assert!(exported.contains(&m), "alert uses unknown metric {m}");
            }
        }
    }
    assert!(alerts.len() >= 5, "{alerts:?}");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("deploy/grafana/dashboards/ordo.json")).unwrap())
            .unwrap();
    let mut used = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            for m in metric_names(t["expr"].as_str().unwrap()) {
                assert!(exported.contains(&m), "dashboard uses unknown metric {m}");
                used += 1;
            }
        }
    }
    assert!(used >= 10);
    for f in [
        "deploy/grafana/provisioning/datasources/prometheus.yml",
        "deploy/grafana/provisioning/dashboards/ordo.yml",
    ] {
        assert!(!yaml_docs(&root().join(f)).is_empty(), "{f}");
    }
    // CI installs promtool (Debian's `prometheus` package); a missing one is a set-up error, not a pass.
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(root().join("deploy/prometheus/alerts.yml"))
        .output()
        .expect("promtool runs (install Debian's `prometheus` package; .ci/run does)");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Encryption at rest is configured alike everywhere: every role of docker-compose.yml and of the Kubernetes
/// manifests that reads `ORDO_MASTER_KEYS` gets it (in Kubernetes from the Secret), one value for all of them (a
/// value sealed by one role must open in another), and that value is a valid key list.
#[test]
fn master_keys_reach_every_role_that_reads_them() {
    const VAR: &str = "ORDO_MASTER_KEYS";
    let mut doc = yaml_docs(&root().join("docker-compose.yml")).remove(0);
    doc.apply_merge().unwrap();
    let mut compose = BTreeSet::new();
    for (name, svc) in doc["services"].as_mapping().unwrap() {
        if svc["image"].as_str() != Some("ordo:local") {
            continue;
        }
        let argv = strings(&svc["command"]);
        if !role(&argv[0]).env.contains(VAR) {
            continue;
        }
        let value = svc["environment"][VAR].as_str().unwrap_or_else(|| {
            panic!(
                "compose {}: `ordo {}` reads {VAR} but gets none",
                name.as_str().unwrap(),
                argv[0]
            )
        });
        compose.insert(value.to_owned());
    }
    assert_eq!(compose.len(), 1, "one {VAR} for every compose role: {compose:?}");

    let dir = root().join("deploy/kubernetes");
    let kustomization = &yaml_docs(&dir.join("kustomization.yaml"))[0];
    let docs: Vec<Value> = strings(&kustomization["resources"])
        .iter()
        .flat_map(|f| yaml_docs(&dir.join(f)))
        .collect();
    let secret = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Secret"))
        .expect("Secret");
    let secret_name = secret["metadata"]["name"].as_str().unwrap();
    let value = secret["stringData"][VAR]
        .as_str()
        .unwrap_or_else(|| panic!("the Secret has no {VAR}"));
    for v in compose.iter().map(String::as_str).chain([value]) {
        v.parse::<ordo::crypt::MasterKeys>()
            .unwrap_or_else(|e| panic!("{VAR}={v}: {e}"));
    }
    let mut readers = 0;
    for d in docs
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("Deployment" | "Job")))
    {
        let name = d["metadata"]["name"].as_str().unwrap();
        for c in d["spec"]["template"]["spec"]["containers"].as_sequence().unwrap() {
            let argv = strings(&c["args"]);
            if !role(&argv[0]).env.contains(VAR) {
                continue;
            }
            readers += 1;
            let from_secret = c["envFrom"]
                .as_sequence()
                .map(|s| s.as_slice())
                .unwrap_or_default()
                .iter()
                .any(|e| e["secretRef"]["name"].as_str() == Some(secret_name));
            assert!(
                from_secret,
                "{name}: `ordo {}` reads {VAR} but does not load the Secret",
                argv[0]
            );
        }
    }
    assert!(readers >= 3, "the API, the workers and the scheduler read {VAR}");
}
