//! The registry of connected agents: a `DashMap` by connection ID, and an index by
//! tunnel for selection.
//!
//! Selection picks, among the non-draining agents of a tunnel, the one with the
//! fewest requests in flight. Guards are held only while the map is read: every
//! lookup clones an `Arc<Agent>` out and releases the shard before any `.await`.
//!
//! A request whose tunnel has no available agent may wait for one
//! ([`Registry::wait_for_agent`]): an agent restarting, a network blip, or a
//! gateway that just started and whose agents are reconnecting cost a short
//! wait instead of a 503. A registration wakes the waiters of its tunnel; a
//! bounded number wait per tunnel.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
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

    /// Stops routing to this agent and closes its session.
    pub(crate) fn evict(&self) {
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
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The connected agents, by connection ID and by tunnel.
#[derive(Debug, Default)]
pub struct Registry {
    by_id: DashMap<String, Arc<Agent>>,
    by_tunnel: DashMap<String, Vec<Arc<Agent>>>,
    /// Requests waiting for an agent, by tunnel (one entry per configured tunnel
    /// that ever had a waiter: bounded by the configuration).
    waiters: DashMap<String, Arc<Waiters>>,
}

/// The requests waiting for an agent of one tunnel.
#[derive(Debug, Default)]
struct Waiters {
    count: AtomicUsize,
    /// Fires when an agent of the tunnel registers.
    joined: Notify,
}

/// Counts a waiting request until dropped (the request got an agent, gave up,
/// or its client left and the future was dropped).
struct Waiting(Arc<Waiters>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why no agent was found for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoAgent {
    /// None came within the wait.
    Timeout,
    /// Too many requests wait for this tunnel already.
    TooManyWaiting,
}

impl Registry {
    pub(crate) fn insert(&self, agent: Arc<Agent>) {
        self.by_tunnel
            .entry(agent.tunnel.clone())
            .or_default()
            .push(agent.clone());
        let tunnel = agent.tunnel.clone();
        self.by_id.insert(agent.connection_id.clone(), agent);
        if let Some(waiters) = self.waiters.get(&tunnel) {
            waiters.joined.notify_waiters();
        }
    }

    pub(crate) fn remove(&self, connection_id: &str) -> Option<Arc<Agent>> {
        let (_, agent) = self.by_id.remove(connection_id)?;
        let mut now_empty = false;
        if let Some(mut list) = self.by_tunnel.get_mut(&agent.tunnel) {
            list.retain(|a| a.connection_id != connection_id);
            now_empty = list.is_empty();
        }
        if now_empty {
            self.by_tunnel.remove_if(&agent.tunnel, |_, l| l.is_empty());
        }
        Some(agent)
    }

    /// The agent with this connection ID.
    pub fn get(&self, connection_id: &str) -> Option<Arc<Agent>> {
        self.by_id.get(connection_id).map(|a| a.clone())
    }

    /// The available agent of `tunnel` with the fewest requests in flight.
    pub fn select(&self, tunnel: &str) -> Option<Arc<Agent>> {
        self.select_avoiding(tunnel, None)
    }

    /// Like [`Registry::select`], preferring any agent other than `avoid` (the
    /// one a request just failed on), which is taken only when it is the one
    /// available.
    pub(crate) fn select_avoiding(&self, tunnel: &str, avoid: Option<&str>) -> Option<Arc<Agent>> {
        let list = self.by_tunnel.get(tunnel)?;
        let available = || list.iter().filter(|a| a.is_available());
        available()
            .filter(|a| Some(a.connection_id.as_str()) != avoid)
            .min_by_key(|a| a.in_flight())
            .or_else(|| available().min_by_key(|a| a.in_flight()))
            .cloned()
    }

    /// An available agent of `tunnel` (see [`Registry::select_avoiding`]),
    /// waiting up to `wait` for one to register when there is none; at most
    /// `max_waiting` requests wait per tunnel.
    pub(crate) async fn wait_for_agent(
        &self,
        tunnel: &str,
        avoid: Option<&str>,
        wait: Duration,
        max_waiting: usize,
    ) -> Result<Arc<Agent>, NoAgent> {
        if let Some(agent) = self.select_avoiding(tunnel, avoid) {
            return Ok(agent);
        }
        if wait.is_zero() {
            return Err(NoAgent::Timeout);
        }
        let waiters = self.waiters.entry(tunnel.to_owned()).or_default().clone();
        if waiters.count.fetch_add(1, Ordering::AcqRel) >= max_waiting {
            waiters.count.fetch_sub(1, Ordering::AcqRel);
            return Err(NoAgent::TooManyWaiting);
        }
        let _waiting = Waiting(waiters.clone());
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let joined = waiters.joined.notified();
            tokio::pin!(joined);
            // Registered before looking, so that an agent joining in between
            // is not missed.
            joined.as_mut().enable();
            if let Some(agent) = self.select_avoiding(tunnel, avoid) {
                return Ok(agent);
            }
            if tokio::time::timeout_at(deadline, joined).await.is_err() {
                return Err(NoAgent::Timeout);
            }
        }
    }

    /// Requests waiting for an agent of `tunnel` now.
    pub fn waiting(&self, tunnel: &str) -> usize {
        self.waiters
            .get(tunnel)
            .map_or(0, |w| w.count.load(Ordering::Acquire))
    }

    /// Every agent of `tunnel`.
    pub fn agents_of(&self, tunnel: &str) -> Vec<Arc<Agent>> {
        self.by_tunnel
            .get(tunnel)
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Number of connected agents.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no agent is connected.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// All agents, oldest first.
    pub fn list(&self) -> Vec<AgentInfo> {
        let mut agents: Vec<Arc<Agent>> = self.by_id.iter().map(|e| e.value().clone()).collect();
        agents.sort_by_key(|a| a.connected_at);
        agents.iter().map(|a| a.info()).collect()
    }
}
