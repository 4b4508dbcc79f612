//! The gateway: its shared [`State`], one public listener, one hyper connection
//! per client.
//!
//! - [`listener`]: the accept loop and the per-connection server;
//! - [`dispatch`]: the one table of the gateway's own endpoints, and the proxy for
//!   everything else;
//! - [`routing`], [`policy`], [`proxy`], [`observe`]: the phases of a proxied
//!   request (route, admit, acquire/send/respond, observe);
//! - [`agent_endpoint`]: `GET /ws`, where agents connect, and [`agent_session`],
//!   a connected agent's lifecycle; [`registry`]: the connected agents;
//! - [`admin`]: `/health` and `/connections`.

mod admin;
mod agent_endpoint;
mod agent_session;
mod dispatch;
mod error;
mod listener;
mod observe;
mod policy;
mod proxy;
pub mod registry;
mod request_id;
mod routing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use http::HeaderValue;

use self::registry::Registry;
use crate::config::Config;
use crate::shutdown::Shutdown;

/// Shared state of a running gateway.
pub struct State {
    config: ArcSwap<Config>,
    /// The connected agents.
    pub registry: Registry,
    started: Instant,
    draining: AtomicBool,
    shutdown: Shutdown,
}

impl State {
    /// The configuration in force (replaced as a whole by a reload).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Whether the gateway has stopped accepting connections.
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
pub(crate) struct ConnCtx {
    pub(crate) peer: SocketAddr,
    /// The peer's IP as a header value (for X-Forwarded-For), made once per
    /// connection.
    pub(crate) peer_ip: HeaderValue,
    /// The upstream stream bound to this connection.
    pub(crate) bound: Arc<proxy::BoundSlot>,
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
        let router = dispatch::router(state.clone());
        Gateway { state, router }
    }

    /// The shared state (for tests and the daemon).
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
}
