//! The gateway's HTTP surface: one listener, one hyper connection per client.
//!
//! Each accepted connection gets a [`ConnCtx`] (peer address and the upstream
//! stream bound to it) and is served by [`dispatch`]: requests whose Host names a
//! tunnel, and every path that is not one of the gateway's own, go to the
//! [`proxy`]; `/health`, `/connections` and `/ws` go to the axum router in
//! [`routes`]; `POST /forward` is a proxied request with its own timeout.

mod agents;
mod error;
mod proxy;
mod routes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::body::Body;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;
use tracing::Instrument;

use crate::config::Config;
use crate::registry::Registry;
use crate::shutdown::{Shutdown, signalled};

pub use error::ErrorKind;

/// Shared state of a running gateway.
pub struct State {
    config: ArcSwap<Config>,
    pub registry: Registry,
    started: Instant,
    draining: AtomicBool,
    shutdown: Shutdown,
}

impl State {
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// What a reload changed, for the log.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Settings that need a restart to take effect.
    pub needs_restart: Vec<String>,
    /// Agents disconnected because their tunnel was removed.
    pub disconnected: usize,
}

/// A gateway: its state and the router of its own endpoints.
#[derive(Clone)]
pub struct Gateway {
    state: Arc<State>,
    router: axum::Router,
}

/// What a request knows of its connection.
#[derive(Clone)]
pub struct ConnCtx {
    pub peer: SocketAddr,
    /// The peer's IP as a header value (for X-Forwarded-For), made once per
    /// connection.
    pub peer_ip: HeaderValue,
    pub bound: Arc<proxy::BoundSlot>,
}

impl Gateway {
    /// A gateway with `config`; `shutdown` is the daemon's shutdown channel, to
    /// which every connection and agent session subscribes.
    pub fn new(config: Config, shutdown: &Shutdown) -> Self {
        let state = Arc::new(State {
            config: ArcSwap::from_pointee(config),
            registry: Registry::default(),
            started: Instant::now(),
            draining: AtomicBool::new(false),
            shutdown: shutdown.clone(),
        });
        let router = routes::router(state.clone());
        Gateway { state, router }
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Applies a new configuration (SIGHUP): tunnels, tokens, timeouts and routing
    /// take effect for new requests and agents; listener changes are reported.
    pub fn reload(&self, mut new: Config) -> ReloadReport {
        let old = self.state.config();
        let mut report = ReloadReport::default();
        if old.server.host != new.server.host || old.server.port != new.server.port {
            report.needs_restart.push(format!(
                "server.host/server.port ({} -> {})",
                old.server.addr(),
                new.server.addr()
            ));
        }
        let log_changed = old.log.directory != new.log.directory
            || old.log.file != new.log.file
            || old.log.format != new.log.format
            || old.log.rotation != new.log.rotation;
        if log_changed {
            report
                .needs_restart
                .push("log.directory/file/format/rotation".to_owned());
        }
        // Keep describing what actually runs: the listener and the log writers are
        // not rebuilt, so later reloads compare against them, not the file.
        new.server.host = old.server.host;
        new.server.port = old.server.port;
        new.log = crate::config::LogConfig {
            level: new.log.level.clone(),
            ..old.log.clone()
        };
        for t in &old.tunnels {
            let revoked = match new.tunnel(&t.id) {
                None => true,
                Some(n) => n.token != t.token || n.token_sha256 != t.token_sha256,
            };
            if revoked {
                // Its credentials no longer hold: stop routing to it and close it.
                for agent in self.state.registry.agents_of(&t.id) {
                    agent.evict();
                    report.disconnected += 1;
                }
            }
        }
        self.state.config.store(Arc::new(new));
        report
    }

    /// Accepts connections until `shutdown` fires, then stops accepting and tells
    /// every connection to finish its current request and close. Returns when the
    /// listener is closed; connections finish on their own (see [`Shutdown::drain`]).
    pub async fn serve(&self, listener: TcpListener, shutdown: &Shutdown) {
        let mut stop = shutdown.subscribe();
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: log, back off a little, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = signalled(&mut stop) => break,
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            let conn_shutdown = shutdown.subscribe();
            tokio::spawn(async move { this.serve_connection(stream, peer, conn_shutdown).await });
        }
        self.state.draining.store(true, Ordering::Release);
        tracing::info!("stopped accepting connections");
    }

    async fn serve_connection(
        self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let ctx = ConnCtx {
            peer,
            peer_ip: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            bound: Arc::default(),
        };
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let gateway = self.clone();
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(gateway.dispatch(ctx, req).await) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(std::time::Duration::from_secs(30));
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
            _ = signalled(&mut shutdown) => {
                conn.as_mut().graceful_shutdown();
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
            }
        }
    }

    async fn dispatch(&self, ctx: ConnCtx, req: Request<Incoming>) -> Response<Body> {
        let config = self.state.config();
        match proxy::route_by_host(&config, &req) {
            proxy::HostRoute::Tunnel(tunnel) => {
                return proxy::handle(
                    &self.state,
                    &config,
                    &ctx,
                    req,
                    proxy::Kind::Direct,
                    Some(tunnel),
                )
                .await;
            }
            proxy::HostRoute::UnknownTunnel(name) => {
                let id = proxy::request_id(&req);
                return error::ErrorKind::UnknownTunnel(name).response(&req, &id);
            }
            proxy::HostRoute::Gateway => {}
        }
        match req.uri().path() {
            "/health" | "/connections" | crate::protocol::WS_PATH => {
                let id = proxy::request_id(&req);
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ctx.clone());
                let span = tracing::debug_span!("api", path = %req.uri().path(), peer = %ctx.peer);
                let mut resp = match self.router.clone().oneshot(req).instrument(span).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                };
                resp.headers_mut()
                    .insert(crate::protocol::REQUEST_ID_HEADER, id);
                resp
            }
            "/forward" if req.method() == http::Method::POST => {
                proxy::handle(&self.state, &config, &ctx, req, proxy::Kind::Forward, None).await
            }
            _ => proxy::handle(&self.state, &config, &ctx, req, proxy::Kind::Direct, None).await,
        }
    }
}
