//! The public listener: the accept loop, and one hyper HTTP/1.1 connection per
//! client, with upgrades, served by [`super::dispatch`].

use std::convert::Infallible;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{HeaderValue, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use tokio::sync::OwnedSemaphorePermit;

use super::policy::connections::{ConnSlot, Refused};
use super::{ConnCtx, Gateway, dispatch};
use crate::shutdown::Shutdown;
use crate::transport::proxy_protocol;

/// Pause after a failed accept (EMFILE and friends), so that the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Why the listener could not be bound: the address, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {hint}")]
pub struct BindError {
    addr: SocketAddr,
    hint: String,
}

/// Binds the public listener, or says what to do instead.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            ErrorKind::AddrInUse => "address already in use; stop the other process or choose another port with --port or server.port".to_owned(),
            ErrorKind::PermissionDenied => "permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE, or choose another port with --port".to_owned(),
            ErrorKind::AddrNotAvailable => format!(
                "{e}; server.host must be an address of this machine (127.0.0.1, 0.0.0.0, ...)"
            ),
            _ => e.to_string(),
        };
        BindError { addr, hint }
    })
}

impl Gateway {
    /// Accepts connections until `shutdown` fires, then stops accepting and tells
    /// every connection to finish its current request and close. Returns when the
    /// listener is closed; connections finish on their own (see [`Shutdown::drain`]).
    ///
    /// At `limits.max_connections` it stops accepting (new connections wait in
    /// the kernel's backlog) after asking an idle one to close; a client address
    /// at `limits.max_connections_per_ip` gets 429 and its connection closed.
    pub async fn serve(&self, listener: TcpListener, shutdown: &Shutdown) {
        let connections = self.state.connections.clone();
        loop {
            let permit = tokio::select! {
                permit = connections.permit() => permit,
                _ = shutdown.stopped() => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        connections.accept_failed(&e);
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
                _ = shutdown.stopped() => break,
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            let stop = shutdown.clone();
            shutdown.spawn(async move { this.admit_connection(stream, peer, permit, stop).await });
        }
        self.state.draining.store(true, Ordering::Release);
        tracing::info!("stopped accepting connections");
    }

    /// Reads the PROXY header when one is due, counts the connection against
    /// its client's cap, and serves it (or refuses it).
    async fn admit_connection(
        self,
        mut stream: TcpStream,
        mut peer: SocketAddr,
        permit: OwnedSemaphorePermit,
        stop: Shutdown,
    ) {
        let config = self.state.config();
        let policies = self.state.policies.load_full();
        if config.server.proxy_protocol {
            if !policies.trusts(peer.ip()) {
                self.state.metrics.connection_refused("untrusted_proxy");
                tracing::debug!(%peer, "connection closed: server.proxy_protocol is on and the peer is not a trusted proxy");
                return;
            }
            let read = proxy_protocol::read_header(&mut stream);
            match tokio::time::timeout(config.limits.header_read_timeout, read).await {
                Ok(Ok(Some(client))) => peer = client,
                // The proxy's own connection (a health check): it is the client.
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    self.state.metrics.connection_refused("proxy_header");
                    tracing::debug!(%peer, error = %e, "connection closed: no valid PROXY protocol header");
                    return;
                }
                Err(_) => {
                    self.state.metrics.connection_refused("proxy_header");
                    tracing::debug!(%peer, "connection closed: no PROXY protocol header in time");
                    return;
                }
            }
        }
        let ip = peer.ip().to_canonical();
        // A trusted proxy carries many clients: it is not one.
        let exempt = policies.trusts(ip);
        let per_ip = config.limits.max_connections_per_ip;
        drop(config);
        match self.state.connections.admit(ip, permit, per_ip, exempt) {
            Ok(slot) => self.serve_connection(stream, peer, slot, stop).await,
            Err(Refused::PerIp) => {
                tracing::debug!(%peer, "connection refused: limits.max_connections_per_ip is reached");
                refuse_connection(stream).await;
            }
        }
    }

    async fn serve_connection(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        slot: Arc<ConnSlot>,
        stop: Shutdown,
    ) {
        let ctx = ConnCtx {
            peer,
            peer_ip: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            bound: Arc::default(),
            conn: slot.clone(),
        };
        let limits = self.state.config().limits.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let gateway = self.clone();
            let ctx = ctx.clone();
            async move {
                // Busy until the response head; a proxied body keeps it busy
                // until its last byte (proxy::body::TrackedBody).
                let _busy = ctx.conn.busy();
                let resp = dispatch::dispatch(&gateway.state, &gateway.router, ctx, req).await;
                Ok::<_, Infallible>(resp)
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_header_size(usize::try_from(limits.max_header_bytes).unwrap_or(usize::MAX));
        // hyper's own default is 100 headers, kept on the stack; any other
        // count costs an allocation per request, so it is set only when asked.
        if limits.max_headers != crate::config::DEFAULT_MAX_HEADERS {
            builder.max_headers(limits.max_headers);
        }
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
            }
            _ = slot.asked_to_close() => {
                // Idle, and its place is wanted: hyper closes an idle
                // connection at once, and lets a request that just began finish.
                conn.as_mut().graceful_shutdown();
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
            }
            _ = stop.stopped() => {
                // Finish the request in progress (and its response), then close;
                // at the end of the grace period, close anyway.
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    res = conn => {
                        if let Err(e) = res {
                            tracing::debug!(%peer, error = %e, "client connection ended with an error");
                        }
                    }
                    _ = stop.cut_off() => tracing::debug!(%peer, "client connection cut off: the grace period is over"),
                }
            }
        }
    }
}

/// Answers a connection over its address's cap with 429 and closes it, within a
/// second whatever the client does.
async fn refuse_connection(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    const ANSWER: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\nx-gateway-error: too_many_connections\r\nretry-after: 1\r\ncontent-length: 46\r\n\r\nToo many connections from your address: retry\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(ANSWER).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
