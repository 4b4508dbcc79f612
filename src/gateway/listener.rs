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

use super::{ConnCtx, Gateway, dispatch};
use crate::shutdown::Shutdown;

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
    pub async fn serve(&self, listener: TcpListener, shutdown: &Shutdown) {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
                _ = shutdown.stopped() => break,
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            let stop = shutdown.clone();
            shutdown.spawn(async move { this.serve_connection(stream, peer, stop).await });
        }
        self.state.draining.store(true, Ordering::Release);
        tracing::info!("stopped accepting connections");
    }

    async fn serve_connection(self, stream: TcpStream, peer: SocketAddr, stop: Shutdown) {
        let ctx = ConnCtx {
            peer,
            peer_ip: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            bound: Arc::default(),
        };
        let limits = self.state.config().limits.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let gateway = self.clone();
            let ctx = ctx.clone();
            async move {
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
