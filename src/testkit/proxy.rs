//! A TCP proxy for outage tests, and the addresses it stands between.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::UrlParts;

/// A TCP proxy on 127.0.0.1 for outage tests: route a client through it, then [`cut`](Self::cut) and
/// [`restore`](Self::restore) the link without touching the shared server. Dropping it stops its tasks.
pub struct TcpProxy {
    addr: SocketAddr,
    link: Arc<Mutex<Link>>,
    /// Parent of every connection's token: cancelling it stops the accept loop and every forwarded connection.
    shutdown: CancellationToken,
}

/// The link's state, read by the accept loop and changed by `cut`/`restore` under one lock, so a connection
/// accepted concurrently with `cut` is either refused or gets the token that `cut` cancels.
struct Link {
    cut: bool,
    /// Token of the connections forwarded since the last cut.
    connections: CancellationToken,
}

impl TcpProxy {
    /// Starts a proxy on 127.0.0.1 (a free port) forwarding every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("binding 127.0.0.1:0 succeeds on any test machine");
        let addr = listener.local_addr().expect("a bound listener has a local address");
        let shutdown = CancellationToken::new();
        let link = Arc::new(Mutex::new(Link {
            cut: false,
            connections: shutdown.child_token(),
        }));
        tokio::spawn(accept_loop(listener, upstream, Arc::clone(&link), shutdown.clone()));
        TcpProxy { addr, link, shutdown }
    }

    /// The address clients connect to (see [`with_host_port`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open forwarded connection and refuses new ones (accepts and closes them) until [`restore`].
    ///
    /// [`restore`]: Self::restore
    pub fn cut(&self) {
        let mut link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        link.cut = true;
        link.connections.cancel();
        link.connections = self.shutdown.child_token();
    }

    /// Forwards new connections again; connections closed by [`cut`](Self::cut) stay closed.
    pub fn restore(&self) {
        self.link.lock().unwrap_or_else(PoisonError::into_inner).cut = false;
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, link: Arc<Mutex<Link>>, shutdown: CancellationToken) {
    loop {
        let inbound = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let token = {
            let link = link.lock().unwrap_or_else(PoisonError::into_inner);
            (!link.cut).then(|| link.connections.clone())
        };
        // A refused connection is accepted and dropped at once: the client sees the peer close.
        let Some(token) = token else { continue };
        tokio::spawn(forward(inbound, upstream, token));
    }
}

async fn forward(mut inbound: TcpStream, upstream: SocketAddr, cut: CancellationToken) {
    // Cancellation wins over pending data so a cut link forwards nothing more; both sockets close on return.
    tokio::select! {
        biased;
        () = cut.cancelled() => {}
        () = async {
            if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        } => {}
    }
}

/// Rewrites the host and port of a `postgres://` or `redis://` URL to `addr`, keeping scheme, user, password,
/// path and query (to route a client through a [`TcpProxy`]).
pub fn with_host_port(url: &str, addr: SocketAddr) -> String {
    let parts = UrlParts::split(url);
    format!("{}://{}{}{}", parts.scheme, parts.userinfo, addr, parts.rest)
}

/// Resolves the host and port of a `postgres://` or `redis://` URL (default port by scheme), e.g. the upstream
/// of a [`TcpProxy`].
pub async fn server_addr(url: &str) -> SocketAddr {
    let parts = UrlParts::split(url);
    let default_port = if parts.scheme.starts_with("redis") { 6379 } else { 5432 };
    let (host, port) = match parts.host_port.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').unwrap_or((v6, ""));
            (host, after.strip_prefix(':'))
        }
        None => match parts.host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (parts.host_port, None),
        },
    };
    let port = match port {
        Some(port) => port
            .parse()
            .unwrap_or_else(|_| panic!("bad port {port:?} in a server URL")),
        None => default_port,
    };
    let host = if host.is_empty() { "localhost" } else { host };
    tokio::net::lookup_host((host, port))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve {host}:{port}"))
}
