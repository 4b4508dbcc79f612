//! A connected agent's lifecycle: the hello, registration, the yamux session, and
//! its end: the agent leaving (its drain announcement), the tunnel revoked by a
//! reload, the gateway shutting down, or the connection lost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use super::State;
use super::registry::Agent;
use crate::protocol::Hello;
use crate::transport::{Role, Session, SessionEnd, SessionHandle, WsIo, close_code};

/// An agent that passed the handshake's checks.
pub(crate) struct Accepted {
    pub(crate) tunnel: String,
    /// What the agent says it forwards to (display only).
    pub(crate) upstream: Option<String>,
    pub(crate) peer: SocketAddr,
    pub(crate) heartbeat: Duration,
    pub(crate) grace: Duration,
    /// The connection's place among the public ones, held while the session lives.
    pub(crate) conn: Arc<crate::gateway::policy::connections::ConnSlot>,
}

/// Runs the session of an accepted agent, once its connection is upgraded, in a
/// task of its own.
pub(crate) fn start(state: &Arc<State>, accepted: Accepted, on_upgrade: OnUpgrade) {
    let connection_id = uuid::Uuid::new_v4().simple().to_string();
    let span = tracing::info_span!(
        "agent",
        tunnel = %accepted.tunnel,
        conn_id = %connection_id,
        peer = %accepted.peer
    );
    let state = state.clone();
    let shutdown = state.shutdown.clone();
    // Tracked until the session has closed its WebSocket, so that the daemon does
    // not exit before the agent has its close frame.
    shutdown.clone().spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(error = %e, "agent upgrade failed");
                    return;
                }
            };
            let Accepted {
                tunnel,
                upstream,
                peer,
                heartbeat,
                grace,
                conn: _conn,
            } = accepted;
            let mut io = WsIo::new(
                TokioIo::new(upgraded),
                Role::Server,
                Some(heartbeat),
                close_code::AWAY,
            );
            let hello = Hello::new(&connection_id, &tunnel, heartbeat);
            // Registered before the hello goes out, so that a request sent as soon
            // as the agent sees its hello finds it; streams asked for in between
            // wait in the queue until the session runs.
            let (handle, queue) = SessionHandle::channel();
            let agent = Arc::new(Agent::new(
                connection_id.clone(),
                tunnel,
                peer,
                upstream,
                handle,
            ));
            state.registry.insert(agent.clone());
            if let Err(e) = io.send_text(&hello.to_text()).await {
                state.registry.remove(&connection_id);
                tracing::warn!(error = %e, "cannot send hello to agent");
                return;
            }
            let session = Session::client_with(io, queue);
            state.metrics.agent_connected(&agent.tunnel);
            tracing::info!(upstream = agent.upstream.as_deref().unwrap_or("-"), "agent connected");

            // The agent announces its departure: route nothing new to it.
            let watch_drain = {
                let agent = agent.clone();
                async move {
                    agent.session.peer_drained().await;
                    agent.set_draining();
                    tracing::info!("agent is draining");
                    let released = agent.release_upgrades_when_idle().await;
                    if released > 0 {
                        tracing::info!(
                            upgraded = released,
                            "only upgraded connections were left on the leaving agent: closed them so that it can go (their clients reconnect)"
                        );
                    }
                    std::future::pending::<()>().await
                }
            };
            let stop = {
                let agent = agent.clone();
                async move {
                    tokio::select! {
                        _ = shutdown.stopped() => {}
                        _ = agent.evicted.notified() => tracing::info!("tunnel revoked by reload; closing agent session"),
                        _ = agent.session.ids_running_out() => {
                            // Before they are gone: the agent reconnects with a
                            // new session, and requests wait for it meanwhile.
                            agent.set_draining();
                            tracing::info!("stream IDs running out; closing agent session so that the agent reconnects");
                        }
                        _ = watch_drain => {}
                    }
                }
            };
            let end = session.run(stop, grace).await;
            agent.set_draining();
            state.registry.remove(&connection_id);
            let reason = match &end {
                SessionEnd::Closed => "closed",
                SessionEnd::Drained { .. } if agent.was_evicted() => "evicted",
                SessionEnd::Drained { .. } => "drained",
                SessionEnd::Failed(_) => "failed",
            };
            let configured = state.config().tunnel(&agent.tunnel).is_some();
            state.metrics.agent_disconnected(&agent.tunnel, reason, configured);
            match end {
                SessionEnd::Closed => tracing::info!("agent disconnected"),
                SessionEnd::Drained { unfinished_streams } => {
                    tracing::info!(unfinished_streams, "agent session closed")
                }
                SessionEnd::Failed(reason) => tracing::warn!(%reason, "agent session failed"),
            }
        }
        .instrument(span),
    );
}
