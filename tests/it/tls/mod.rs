//! TLS on every connection, against real servers that speak nothing else: a private PostgreSQL with `ssl=on` and
//! `hostssl`-only authentication, a private Redis with `--tls-port` only, and `ordo api` over HTTPS. The CAs and
//! certificates are made by each test (rcgen), never committed.

mod api;
mod postgres;
mod redis;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A certificate authority made for one test, and the directory its files live in (removed on drop).
pub struct Pki {
    /// Directory of the CA's and the certificates' PEM files.
    pub dir: PathBuf,
    /// The CA certificate (PEM), what clients are told to trust.
    pub ca_file: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate issued by a [`Pki`]: its PEM files and its DER bytes (to recognise it on the wire).
pub struct Issued {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key (mode 0600, as PostgreSQL insists).
    pub key: PathBuf,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

impl Pki {
    /// A fresh CA named `name`, in a new directory under the system temp dir (not under /root, so a server
    /// running as `postgres` can read it).
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("ordo-tls-{name}-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("ordo test CA {name}"));
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki {
            dir,
            ca_file,
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses) with a new key, written to
    /// `<stem>.crt`/`<stem>.key` in the directory (over any earlier ones: the key first, then the certificate).
    pub fn issue(&self, stem: &str, names: &[&str]) -> Issued {
        let params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            self.dir.join(format!("{stem}.crt")),
            self.dir.join(format!("{stem}.key")),
        );
        write_private(&key_path, key.serialize_pem().as_bytes());
        std::fs::write(&cert_path, cert.pem()).unwrap();
        Issued {
            cert: cert_path,
            key: key_path,
            der: cert.der().to_vec(),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes `bytes` over `path` in place (same file, truncated) with mode 0600.
fn write_private(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A reqwest client that trusts `ca` (and reports the peer's certificate in each response).
pub fn client_trusting(ca: &Path) -> reqwest::Client {
    ordo::tls::http_client(Some(ca))
        .unwrap()
        .tls_info(true)
        .build()
        .unwrap()
}

/// The DER certificate the server presented for `response`.
pub fn peer_certificate(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("an HTTPS response carries the peer's certificate")
        .to_vec()
}
