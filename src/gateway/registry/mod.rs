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

mod agent;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;

pub use self::agent::{Agent, AgentInfo};
pub(crate) use self::agent::{IdleHolder, InFlight};

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
    /// one a request just failed on), then one that was heard from in the last
    /// heartbeat interval: a silent or failing agent is taken only when it is
    /// the one available.
    pub(crate) fn select_avoiding(&self, tunnel: &str, avoid: Option<&str>) -> Option<Arc<Agent>> {
        let list = self.by_tunnel.get(tunnel)?;
        list.iter()
            .filter(|a| a.is_available())
            .min_by_key(|a| {
                let avoided = Some(a.connection_id.as_str()) == avoid;
                (avoided, a.session.peer_silent(), a.in_flight())
            })
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
