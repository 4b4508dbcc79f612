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
pub mod daemon;
mod dispatch;
mod error;
pub mod listener;
pub mod metrics;
mod observe;
pub(crate) mod policy;
pub(crate) mod proxy;
pub mod registry;
mod reload;
pub(crate) mod request_id;
pub(crate) mod routing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use http::HeaderValue;

pub use self::policy::hash_password;
use self::registry::Registry;
pub use self::reload::ReloadReport;
use crate::config::Config;
use crate::shutdown::Shutdown;

/// Shared state of a running gateway.
pub struct State {
    config: ArcSwap<Config>,
    /// Every tunnel's access policy, compiled from `config` (and swapped with it).
    policies: ArcSwap<policy::Policies>,
    /// The connected agents.
    pub registry: Registry,
    /// What the gateway counts, for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// The public connections, counted against `[limits]`.
    connections: Arc<policy::connections::Connections>,
    started: Instant,
    /// Latched once the gateway is ready (see [`State::is_ready`]).
    ready: AtomicBool,
    draining: AtomicBool,
    shutdown: Shutdown,
}

impl State {
    /// The configuration in force (replaced as a whole by a reload).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Whether the gateway is ready for traffic, as `/health` tells load
    /// balancers: once every configured tunnel has an agent, or once
    /// `timeouts.agent_wait` has passed since the start (a tunnel whose agent
    /// is not coming must not keep the node out for ever). A gateway that just
    /// (re)started answers before its agents have reconnected; this keeps a
    /// balancer on the other nodes meanwhile. Once ready, it stays ready.
    pub fn is_ready(&self) -> bool {
        if self.ready.load(Ordering::Acquire) {
            return true;
        }
        let config = self.config();
        let ready = self.started.elapsed() >= config.timeouts.agent_wait
            || config
                .tunnels
                .iter()
                .all(|t| self.registry.select(&t.id).is_some());
        if ready {
            self.ready.store(true, Ordering::Release);
        }
        ready
    }

    /// Whether the gateway has stopped accepting connections.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
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
    /// The connection's place among the public connections.
    pub(crate) conn: Arc<policy::connections::ConnSlot>,
}

impl Gateway {
    /// A gateway with `config`; `shutdown` is the daemon's: every connection and
    /// agent session listens to its stop and is tracked by it.
    pub fn new(config: Config, shutdown: &Shutdown) -> Self {
        let metrics = Arc::new(metrics::Metrics::new(&config));
        let state = Arc::new(State {
            policies: ArcSwap::from_pointee(policy::Policies::build(&config, None)),
            connections: policy::connections::Connections::new(
                config.limits.max_connections,
                metrics.clone(),
            ),
            metrics,
            config: ArcSwap::from_pointee(config),
            registry: Registry::default(),
            started: Instant::now(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            shutdown: shutdown.clone(),
        });
        let router = dispatch::router(state.clone());
        Gateway { state, router }
    }

    /// Serves the admin pages (`/metrics`, `/health`, `/connections`) on
    /// `listener`, in a task tracked by `shutdown`.
    pub fn serve_admin(&self, listener: tokio::net::TcpListener, shutdown: &Shutdown) {
        let state = self.state.clone();
        shutdown.spawn(admin::listener::serve(state, listener, shutdown.clone()));
    }

    /// The shared state (for tests and the daemon).
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }
}
