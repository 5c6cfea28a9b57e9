//! TLS shared by the roles: PEM files read with errors that name the file, the API's HTTPS listener whose
//! certificate is re-read when its files are rewritten, and the extra trusted root of the HTTP clients.
//!
//! rustls with the ring provider everywhere (sqlx, redis and reqwest use the same); nothing here implements
//! cryptography. PostgreSQL's TLS is sqlx's own, driven by `sslmode`/`sslrootcert` in `DATABASE_URL`.
//!
//! Invariants:
//! - a certificate that cannot be loaded at start is an error; one rewritten badly while running (half written,
//!   key and certificate not matching yet) is logged and the previous one keeps being served;
//! - handshakes run off the accept loop, so a slow or silent client never delays another's connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

/// How often, at most, a handshake looks at the certificate files' modification times.
const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// How long the listener waits after a failed accept (out of file descriptors, say) before it tries again.
const ACCEPT_RETRY: Duration = Duration::from_secs(1);
/// Longest a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPT_BACKLOG: usize = 64;

/// Errors reading TLS material or building a TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not PEM, or holds none of what was expected.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the material (e.g. the key does not belong to the certificate).
    #[error("{what}: {message}")]
    Rustls {
        /// What was being built.
        what: String,
        /// rustls's reason.
        message: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The certificates in a PEM file (a chain, or a bundle of CAs); an error when it holds none.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no CERTIFICATE block found".to_owned()));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| pem_error(path, format!("no private key found: {e}")))
}

/// Checks that `path` is a readable PEM file of certificates and returns its bytes, for clients that take PEM.
pub fn read_ca_pem(path: &Path) -> Result<Vec<u8>> {
    read_certs(path)?;
    read(path)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_error(path: &Path, message: String) -> Error {
    Error::Pem {
        path: path.to_owned(),
        message,
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A reqwest client builder that trusts the certificates of `ca_file` (PEM) in addition to the usual roots, for
/// the CLI's calls to the API (`ORDO_CA_FILE`).
pub fn http_client(ca_file: Option<&Path>) -> Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = ca_file {
        let pem = read_ca_pem(path)?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| pem_error(path, e.to_string()))?;
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
    }
    Ok(builder)
}

/// An error and its causes on one line (`a: b: c`): reqwest's own message leaves out why a request failed.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Whether `e` comes from a server certificate that was refused: retrying cannot help.
pub fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    use tokio_rustls::rustls::Error as TlsError;
    if let Some(TlsError::InvalidCertificate(_)) = e.downcast_ref::<TlsError>() {
        return true;
    }
    // The TLS error travels inside an io::Error (perhaps more than one), whose `source` skips what it wraps.
    let wrapped = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .is_some_and(|inner| is_certificate_error(inner));
    wrapped || e.source().is_some_and(is_certificate_error)
}

/// Modification time and length of a file: what tells a rewritten certificate from the one loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// The API's certificate and key, from two PEM files. A handshake at least a second after the last look checks
/// both files' modification times; when either changed, the pair is loaded again and served to the connections
/// that follow. Open connections keep the certificate they were made with.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    state: Mutex<ReloadState>,
}

#[derive(Debug)]
struct ReloadState {
    current: Arc<CertifiedKey>,
    /// The files' stamps when `current` was loaded.
    loaded: (Option<Stamp>, Option<Stamp>),
    /// The stamps of a pair that failed to load, so a broken pair is reported once, not on every check.
    failed: Option<(Option<Stamp>, Option<Stamp>)>,
    checked: Instant,
}

impl ReloadingCert {
    /// Loads the pair; an error when either file is missing, not PEM, or the key does not match the certificate.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self> {
        let loaded = (stamp(cert_path), stamp(key_path));
        let current = Arc::new(certified_key(cert_path, key_path)?);
        Ok(ReloadingCert {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            state: Mutex::new(ReloadState {
                current,
                loaded,
                failed: None,
                checked: Instant::now(),
            }),
        })
    }

    /// The certificate to serve now, reloaded first when the files changed since the last look.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.checked.elapsed() < RELOAD_CHECK {
            return state.current.clone();
        }
        state.checked = Instant::now();
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        if now == state.loaded || state.failed == Some(now) {
            return state.current.clone();
        }
        match certified_key(&self.cert_path, &self.key_path) {
            Ok(key) => {
                tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                state.current = Arc::new(key);
                state.loaded = now;
                state.failed = None;
            }
            Err(e) => {
                // Often a renewal caught between writing the certificate and writing its key: the next check,
                // a second later, sees the pair complete.
                tracing::warn!("failed to reload the TLS certificate, still serving the previous one: {e}");
                state.failed = Some(now);
            }
        }
        state.current.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey> {
    let chain = read_certs(cert_path)?;
    let key = read_key(key_path)?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| Error::Rustls {
        what: format!("{} with {}", cert_path.display(), key_path.display()),
        message: e.to_string(),
    })
}

/// The API's TLS configuration: TLS 1.2 and 1.3, HTTP/1.1, the certificate from `cert`.
pub fn server_config(cert: ReloadingCert) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Rustls {
            what: "the TLS server configuration".to_owned(),
            message: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(cert));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener that hands out connections once their TLS handshake completed, for `axum::serve`. It owns its
/// accept loop, and the loop owns the handshakes (tasks of their own); dropping the listener stops them all.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    /// Cancels the loop and the handshakes when the listener is dropped (declared first, so it runs first).
    _stop: DropGuard,
    /// Aborts whatever of the loop is left after that.
    _accepting: AbortOnDropHandle<()>,
}

impl TlsListener {
    /// Serves TLS with `config` on the connections `tcp` accepts.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(ACCEPT_BACKLOG);
        let stop = CancellationToken::new();
        let accepting = tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), tx, stop.clone()));
        Ok(TlsListener {
            ready,
            local,
            _stop: stop.drop_guard(),
            _accepting: AbortOnDropHandle::new(accepting),
        })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    stop: CancellationToken,
) {
    let handshakes = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = tcp.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(conn) => conn,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: accepting again at once would spin.
                tracing::warn!(error = %e, "failed to accept a connection");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_RETRY) => continue,
                }
            }
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        let stop = stop.clone();
        handshakes.spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let tls = tokio::select! {
                _ = stop.cancelled() => return,
                r = handshake => r,
            };
            match tls {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, addr)).await;
                }
                // A client that does not trust the certificate, speaks plain HTTP, or goes silent: its problem.
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
            }
        });
    }
    // Every handshake watches `stop` too, so this wait is short.
    handshakes.close();
    handshakes.wait().await;
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unreadable or empty PEM files are refused with an error naming the file, never a panic.
    #[test]
    fn bad_pem_files_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("ordo-tls-unit-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let e = read_certs(&missing).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        let e = read_certs(&empty).unwrap_err().to_string();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        let e = read_key(&empty).unwrap_err().to_string();
        assert!(e.contains("no private key"), "{e}");
        assert!(ReloadingCert::load(&empty, &empty).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
