//! `gateway-agent`: dials the gateway, keeps the tunnel up, and splices every
//! stream the gateway opens to a TCP connection to the local upstream.
//!
//! The agent parses no HTTP. Its one exception is the answer it writes when the
//! upstream cannot be reached: a complete `502` response that says which address
//! and why, so that the person at the browser knows what to fix.
//!
//! - [`config`]: flags over the TOML file, one [`AgentConfig`] per gateway;
//! - [`dial`]: [`connect`] returns only after the gateway's hello (so callers
//!   need no sleep);
//! - [`upstream`]: the local server, the splice, the `502` page;
//! - [`backoff`]: reconnect delays, exponential with full jitter;
//! - here: [`Connected::serve`] runs a session; [`run`] connects and serves
//!   forever, reconnecting, until a shutdown or a refusal that retrying cannot
//!   fix; [`run_until_signalled`] does that for every gateway at once, as the
//!   binary does.

pub mod backoff;
pub mod config;
pub mod dial;
pub mod metrics;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use self::backoff::Backoff;
pub use self::backoff::{BACKOFF_BASE, BACKOFF_CAP, BACKOFF_RESET_AFTER, backoff};
pub use self::config::{AgentConfig, AgentFile, DEFAULT_GRACE, Flags, OneOrMany};
use self::dial::GatewayIo;
pub use self::dial::{CONNECT_TIMEOUT, connect};
pub use self::upstream::{UPSTREAM_CONNECT_TIMEOUT, Upstream};
use crate::protocol::Hello;
use crate::transport::{Session, SessionEnd, WsIo};

/// How often `--wait-upstream` tries the upstream.
const WAIT_UPSTREAM_EVERY: Duration = Duration::from_millis(250);

/// Why the agent stopped, or could not connect.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad settings: fix and restart.
    #[error("{0}")]
    Config(String),
    /// The gateway refused the agent for a reason that retrying cannot fix.
    #[error("the gateway refused the agent ({status}): {reason}")]
    Refused {
        /// The HTTP status of the refusal.
        status: u16,
        /// The gateway's one-line reason.
        reason: String,
    },
    /// Anything worth retrying: network errors, a gateway restarting.
    #[error("{0}")]
    Transient(String),
}

impl AgentError {
    /// Whether retrying cannot help.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, AgentError::Transient(_))
    }
}

/// A session with the gateway, after the hello.
pub struct Connected {
    /// The gateway's hello.
    pub hello: Hello,
    ws: WsIo<GatewayIo>,
}

impl Connected {
    /// Serves the gateway's streams until the session ends or `shutdown` fires
    /// (then drains: tells the gateway, lets streams finish within `grace`).
    pub async fn serve(
        self,
        upstream: Upstream,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> SessionEnd {
        // Within bounds whatever the gateway said.
        let heartbeat = Duration::from_secs(self.hello.heartbeat_secs)
            .clamp(Duration::from_secs(1), crate::protocol::MAX_HEARTBEAT);
        let io = self.ws.with_heartbeat(Some(heartbeat));
        let upstream = Arc::new(upstream);
        let session = Session::server(io, move |stream| {
            tokio::spawn(upstream::splice(stream, upstream.clone()));
        });
        session.run(shutdown.cancelled_owned(), grace).await
    }
}

/// Connects and serves forever: reconnects on network errors and when the gateway
/// goes away; returns `Ok` after a shutdown, `Err` on a refusal retrying cannot fix.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let upstream = Upstream::parse(&cfg.upstream)?;
    if cfg.wait_upstream {
        tokio::select! {
            _ = upstream::wait_until_up(&upstream, WAIT_UPSTREAM_EVERY) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    let mut backoff = Backoff::default();
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let attempt = tokio::select! {
            r = connect(&cfg) => r,
            _ = shutdown.cancelled() => return Ok(()),
        };
        match attempt {
            Ok(connected) => {
                tracing::info!(
                    gateway = %cfg.gateway,
                    tunnel = %connected.hello.tunnel,
                    connection = %connected.hello.connection_id,
                    upstream = %upstream.display(),
                    "connected to {} as tunnel {}, connection {}",
                    cfg.gateway, connected.hello.tunnel, connected.hello.connection_id
                );
                let since = Instant::now();
                metrics::metrics().connected(&cfg.gateway, true);
                let end = connected
                    .serve(upstream.clone(), shutdown.clone(), cfg.grace)
                    .await;
                metrics::metrics().connected(&cfg.gateway, false);
                match end {
                    SessionEnd::Drained { unfinished_streams } => {
                        tracing::info!(unfinished_streams, "disconnected from the gateway");
                        return Ok(());
                    }
                    SessionEnd::Closed => {
                        tracing::warn!("the gateway closed the tunnel; reconnecting")
                    }
                    SessionEnd::Failed(reason) => {
                        tracing::warn!(%reason, "tunnel lost; reconnecting")
                    }
                }
                if !shutdown.is_cancelled() {
                    metrics::metrics().reconnecting(&cfg.gateway);
                }
                backoff.connected_for(since.elapsed());
            }
            Err(e) if e.is_fatal() => {
                tracing::error!(error = %e, "giving up");
                return Err(e);
            }
            Err(e) => {
                let failures = backoff.failures();
                let level_warn = failures < 3 || failures.is_multiple_of(10);
                if level_warn {
                    tracing::warn!(error = %e, attempt = failures + 1, "cannot connect to the gateway");
                } else {
                    tracing::debug!(error = %e, attempt = failures + 1, "cannot connect to the gateway");
                }
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Serves every config (one per gateway) until SIGTERM or SIGINT, then drains;
/// a second signal exits at once. Returns the first error that retrying cannot
/// fix.
pub async fn run_until_signalled(configs: Vec<AgentConfig>) -> Result<(), AgentError> {
    let stop = CancellationToken::new();
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return Err(AgentError::Transient(
            "cannot install signal handlers".into(),
        ));
    };
    // One reconnecting session per gateway; the first fatal error ends them all.
    let mut sessions = tokio::task::JoinSet::new();
    for cfg in configs {
        sessions.spawn(run(cfg, stop.clone()));
    }
    let run = async move {
        while let Some(done) = sessions.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(AgentError::Transient(format!("agent task failed: {e}"))),
            }
        }
        Ok(())
    };
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => return r,
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received: draining open requests, then leaving");
    stop.cancel();
    tokio::select! {
        r = &mut run => r,
        _ = term.recv() => { tracing::warn!("second signal: exiting at once"); Ok(()) }
        _ = int.recv() => { tracing::warn!("second signal: exiting at once"); Ok(()) }
    }
}
