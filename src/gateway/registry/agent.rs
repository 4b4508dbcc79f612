//! One connected agent: what it is, the requests in flight on it, and what it
//! takes to let it leave (its idle streams released, its upgraded connections
//! closed once nothing else is in flight).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::transport::SessionHandle;

/// Something that may keep an idle upstream stream to an agent open between
/// requests (a public connection's bound stream, see `gateway::proxy`).
pub(crate) trait IdleHolder: Send + Sync {
    /// Closes the stream it keeps if that stream's agent is no longer available. A
    /// stream still carrying a response is closed once that response is complete.
    fn release_if_unavailable(&self);
}

/// One connected agent.
#[derive(Debug)]
pub struct Agent {
    /// Unique ID of this connection.
    pub connection_id: String,
    /// The tunnel it serves.
    pub tunnel: String,
    /// Where it connected from.
    pub peer: SocketAddr,
    /// What the agent says it forwards to (display only).
    pub upstream: Option<String>,
    /// When it connected.
    pub connected_at: SystemTime,
    /// Opens streams to the agent; says whether it is leaving.
    pub(crate) session: SessionHandle,
    in_flight: AtomicUsize,
    /// Of `in_flight`, the upgraded connections (WebSocket and others).
    upgraded: AtomicUsize,
    total: AtomicU64,
    draining: AtomicBool,
    /// Fires when a request in flight ends on a draining agent.
    settled: Notify,
    /// Closes the agent's upgraded connections (see
    /// [`Agent::release_upgrades_when_idle`]).
    pub(crate) release_upgrades: CancellationToken,
    /// Fires when the gateway wants this session closed (tunnel revoked by a reload).
    pub(crate) evicted: Notify,
    /// Whether [`Agent::evict`] was called (for the metrics' disconnect reason).
    revoked: AtomicBool,
    /// Public connections that opened a stream to this agent and may keep it idle
    /// for their next request. Told to let go when the agent drains: otherwise an
    /// idle keep-alive stream would hold the agent's drain until its grace period
    /// is over, and the agent would cut it off.
    idle_holders: Mutex<Vec<Weak<dyn IdleHolder>>>,
}

impl Agent {
    pub(crate) fn new(
        connection_id: String,
        tunnel: String,
        peer: SocketAddr,
        upstream: Option<String>,
        session: SessionHandle,
    ) -> Self {
        Agent {
            connection_id,
            tunnel,
            peer,
            upstream,
            connected_at: SystemTime::now(),
            session,
            in_flight: AtomicUsize::new(0),
            upgraded: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            settled: Notify::new(),
            release_upgrades: CancellationToken::new(),
            evicted: Notify::new(),
            revoked: AtomicBool::new(false),
            idle_holders: Mutex::new(Vec::new()),
        }
    }

    /// Requests in flight on this agent.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request until the returned guard is dropped.
    pub(crate) fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        InFlight {
            agent: self.clone(),
            upgraded: false,
        }
    }

    /// Once only upgraded connections are left on this (draining) agent, closes
    /// them and returns how many there were. A WebSocket left open (a dev
    /// server's live reload, say) would otherwise hold the agent's drain for
    /// its whole grace period; its client reconnects, to another agent.
    pub(crate) async fn release_upgrades_when_idle(&self) -> usize {
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            let upgraded = self.upgraded.load(Ordering::Acquire);
            if self.in_flight() <= upgraded {
                self.release_upgrades.cancel();
                return upgraded;
            }
            settled.await;
        }
    }

    /// Whether new streams may go to this agent.
    pub fn is_available(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && !self.session.is_closed()
    }

    /// Whether the gateway closed this agent's session because a reload
    /// revoked its tunnel or token.
    pub(crate) fn was_evicted(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Stops routing to this agent and closes its session.
    pub(crate) fn evict(&self) {
        self.revoked.store(true, Ordering::Release);
        self.set_draining();
        self.evicted.notify_one();
    }

    /// Stops routing to this agent, and closes the idle streams that public
    /// connections keep to it (see [`Agent::watch_idle`]), so that its drain ends
    /// as soon as the requests in flight are done.
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
        // Take the list out first: no lock is held while the holders lock theirs.
        let holders = self
            .idle_holders
            .lock()
            .map(|mut list| std::mem::take(&mut *list))
            .unwrap_or_default();
        for holder in holders.iter().filter_map(Weak::upgrade) {
            holder.release_if_unavailable();
        }
    }

    /// Remembers `holder`, which may keep a stream to this agent idle between
    /// requests, so that [`Agent::set_draining`] can tell it to let go.
    pub(crate) fn watch_idle(&self, holder: Weak<dyn IdleHolder>) {
        if let Ok(mut list) = self.idle_holders.lock() {
            // Forget closed connections before the list grows; reserving as much
            // again as is left keeps this amortised O(1) per stream.
            if list.len() == list.capacity() {
                list.retain(|h| h.strong_count() > 0);
                let live = list.len();
                list.reserve(live.max(4));
            }
            list.push(holder);
        }
    }

    /// What `/connections` shows of it.
    pub fn info(&self) -> AgentInfo {
        AgentInfo {
            connection_id: self.connection_id.clone(),
            tunnel: self.tunnel.clone(),
            connected_at: rfc3339(self.connected_at),
            peer: self.peer.to_string(),
            upstream: self.upstream.clone(),
            requests_in_flight: self.in_flight(),
            requests_total: self.total.load(Ordering::Relaxed),
            draining: self.draining.load(Ordering::Acquire),
            silent: self.session.peer_silent(),
        }
    }
}

/// A request in flight on an agent.
#[derive(Debug)]
pub(crate) struct InFlight {
    agent: Arc<Agent>,
    upgraded: bool,
}

impl InFlight {
    /// The request became an upgraded connection: counted as such until it ends.
    pub(crate) fn upgraded(mut self) -> Self {
        self.agent.upgraded.fetch_add(1, Ordering::AcqRel);
        self.upgraded = true;
        self
    }

    /// The agent the request is on.
    pub(crate) fn agent(&self) -> &Arc<Agent> {
        &self.agent
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.upgraded {
            self.agent.upgraded.fetch_sub(1, Ordering::AcqRel);
        }
        self.agent.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.agent.draining.load(Ordering::Acquire) {
            self.agent.settled.notify_waiters();
        }
    }
}

/// What `/connections` shows of an agent.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct AgentInfo {
    /// Unique ID of the connection.
    pub connection_id: String,
    /// The tunnel it serves.
    pub tunnel: String,
    /// When it connected, RFC 3339.
    pub connected_at: String,
    /// Where it connected from.
    pub peer: String,
    /// What it says it forwards to.
    pub upstream: Option<String>,
    /// Requests in flight on it now.
    pub requests_in_flight: usize,
    /// Requests it has served.
    pub requests_total: u64,
    /// Whether it is leaving (no new requests go to it).
    pub draining: bool,
    /// Whether nothing was heard from it for a whole heartbeat interval (new
    /// requests go to other agents when there are; three intervals drop it).
    pub silent: bool,
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
