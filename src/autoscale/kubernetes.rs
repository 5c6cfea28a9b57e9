//! The Kubernetes driver: sets `spec.replicas` of the Deployment `ordo-worker-<pool>-<version>` through its scale
//! subresource (`PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale`, a JSON merge patch).
//!
//! It speaks that one REST call with reqwest (already built for the HTTP handlers) instead of kube-rs, whose
//! generated API types cost minutes of build for a single endpoint. Configuration: in a pod, the service account
//! (API host from `KUBERNETES_SERVICE_HOST`/`_PORT`, token and CA from
//! `/var/run/secrets/kubernetes.io/serviceaccount`); elsewhere `--kube-api-url` (e.g. `kubectl proxy`'s
//! `http://127.0.0.1:8001`) with an optional bearer token file.

use std::collections::BTreeMap;
use std::path::Path;

use clap::Args;

use super::driver::{Desired, PoolDriver};
use super::{Error, Result};

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Where the Kubernetes API is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct KubeConfig {
    /// Kubernetes API base URL; unset = in-cluster (service account).
    #[arg(long, env = "ORDO_KUBE_API_URL")]
    pub kube_api_url: Option<String>,
    /// Namespace of the worker Deployments; unset = the service account's namespace, else `default`.
    #[arg(long, env = "ORDO_KUBE_NAMESPACE")]
    pub kube_namespace: Option<String>,
    /// File holding a bearer token for the API (in-cluster: the service account token).
    #[arg(long, env = "ORDO_KUBE_TOKEN_FILE")]
    pub kube_token_file: Option<String>,
    /// In-cluster API host (set by Kubernetes in every pod).
    #[arg(long, env = "KUBERNETES_SERVICE_HOST", hide = true)]
    pub kubernetes_service_host: Option<String>,
    /// In-cluster API port (set by Kubernetes in every pod).
    #[arg(long, env = "KUBERNETES_SERVICE_PORT", hide = true)]
    pub kubernetes_service_port: Option<String>,
}

/// The Deployment of a pool version: `ordo-worker-<pool>-<version>`, lowercased, with `_` and `.` as `-`.
pub fn deployment_name(pool: &str, version: &str) -> String {
    format!("ordo-worker-{pool}-{version}")
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c == '_' || c == '.' { '-' } else { c })
        .collect()
}

/// Scales one Deployment per pool version.
pub struct KubernetesDriver {
    client: reqwest::Client,
    base: String,
    namespace: String,
    token: Option<String>,
    /// Replicas last set successfully; only changes are sent.
    applied: BTreeMap<(String, String), u32>,
}

impl KubernetesDriver {
    /// A driver talking plain HTTP or system-trusted HTTPS to `base` (e.g. `kubectl proxy`) in `namespace`.
    pub fn new(base: &str, namespace: &str, token: Option<String>) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| Error::KubeConfig(format!("build the HTTP client: {e}")))?;
        Ok(Self::with_client(client, base.to_owned(), namespace.to_owned(), token))
    }

    fn with_client(client: reqwest::Client, base: String, namespace: String, token: Option<String>) -> Self {
        KubernetesDriver {
            client,
            base: base.trim_end_matches('/').to_owned(),
            namespace,
            token,
            applied: BTreeMap::new(),
        }
    }

    /// Builds a driver from flags, the environment and, in a pod, the service account files.
    pub fn from_config(cfg: &KubeConfig) -> Result<Self> {
        let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned());
        let sa = Path::new(SA_DIR);
        let namespace = cfg
            .kube_namespace
            .clone()
            .or_else(|| read(&sa.join("namespace").to_string_lossy()).ok())
            .unwrap_or_else(|| "default".to_owned());
        let token_file = cfg.kube_token_file.clone().or_else(|| {
            sa.join("token")
                .exists()
                .then(|| sa.join("token").to_string_lossy().into_owned())
        });
        let token = match token_file {
            Some(f) => Some(read(&f).map_err(|e| Error::KubeConfig(format!("read token file {f}: {e}")))?),
            None => None,
        };
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10));
        let base = match (&cfg.kube_api_url, &cfg.kubernetes_service_host) {
            (Some(url), _) => url.clone(),
            (None, Some(host)) => {
                let ca = std::fs::read(sa.join("ca.crt"))
                    .map_err(|e| Error::KubeConfig(format!("read the service account CA: {e}")))?;
                let cert = reqwest::Certificate::from_pem(&ca)
                    .map_err(|e| Error::KubeConfig(format!("parse the service account CA: {e}")))?;
                builder = builder.add_root_certificate(cert);
                let port = cfg.kubernetes_service_port.as_deref().unwrap_or("443");
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
            (None, None) => {
                return Err(Error::KubeConfig(
                    "not in a cluster and no --kube-api-url (ORDO_KUBE_API_URL) given".to_owned(),
                ))
            }
        };
        let client = builder
            .build()
            .map_err(|e| Error::KubeConfig(format!("build the HTTP client: {e}")))?;
        Ok(KubernetesDriver::with_client(client, base, namespace, token))
    }

    /// Sets the replicas of one pool version's Deployment.
    pub async fn scale(&self, pool: &str, version: &str, replicas: u32) -> Result<()> {
        let name = deployment_name(pool, version);
        let url = format!(
            "{}/apis/apps/v1/namespaces/{}/deployments/{}/scale",
            self.base, self.namespace, name
        );
        let mut req = self
            .client
            .patch(&url)
            .header("content-type", "application/merge-patch+json")
            .header("accept", "application/json")
            .body(serde_json::json!({"spec": {"replicas": replicas}}).to_string());
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::KubeConfig(format!("PATCH {url}: {e}")))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        // Kubernetes answers errors with a `Status` object whose `message` says what is wrong.
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or(body);
        if status == 404 {
            return Err(Error::DeploymentNotFound {
                namespace: self.namespace.clone(),
                name,
            });
        }
        Err(Error::Kubernetes { name, status, message })
    }
}

impl PoolDriver for KubernetesDriver {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn apply(&mut self, desired: &[Desired]) -> Result<()> {
        let mut first_error = None;
        for d in desired {
            let key = (d.pool.clone(), d.version.clone());
            if self.applied.get(&key) == Some(&d.workers) {
                continue;
            }
            match self.scale(&d.pool, &d.version, d.workers).await {
                Ok(()) => {
                    tracing::info!(pool = %d.pool, pool.version = %d.version, replicas = d.workers, "scaled deployment");
                    self.applied.insert(key, d.workers);
                }
                // One missing Deployment must not stop the others; the first error is reported.
                Err(e) => {
                    if first_error.is_none() {
                        first_error = Some(e);
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn actual(&self) -> Option<BTreeMap<(String, String), u32>> {
        None
    }

    async fn shutdown(&mut self) {}
}
