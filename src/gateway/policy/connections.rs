//! Caps on public connections: `limits.max_connections` in all, and
//! `limits.max_connections_per_ip` from one address.
//!
//! The total is a semaphore the accept loop takes a permit of before it
//! accepts: at the cap it stops accepting, and new connections wait in the
//! kernel's backlog rather than costing a descriptor. Before it waits, it asks
//! the oldest idle connection (one between requests, or that has not sent a
//! whole request yet) to close, as nginx reuses keep-alive connections when it
//! runs out: 20,000 idle sockets cannot keep a new client out. Connections in
//! a request, and upgraded ones (agents, WebSockets), are never picked.
//!
//! A connection holds its [`ConnSlot`] until its socket is closed: an upgraded
//! connection's task takes a clone along.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use dashmap::DashMap;

use super::super::metrics::{GaugeGuard, Metrics};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// The public connections, counted.
pub(crate) struct Connections {
    permits: Arc<Semaphore>,
    pub(crate) metrics: Arc<Metrics>,
    per_ip: DashMap<IpAddr, usize>,
    /// Open connections, oldest first, for [`Connections::close_idle`]; dead
    /// entries are pruned as it grows.
    by_age: Mutex<VecDeque<Weak<ConnSlot>>>,
    max: usize,
    /// When "too many open files" was last logged (ms since `epoch`).
    fd_warned: AtomicU64,
    epoch: Instant,
}

/// One open connection: whether it is busy, and how to ask it to close.
pub(crate) struct ConnSlot {
    busy: AtomicUsize,
    close: Notify,
    owner: Option<Arc<Connections>>,
    ip: Option<IpAddr>,
    _permit: Option<OwnedSemaphorePermit>,
    _open: Option<GaugeGuard>,
}

/// Marks a connection busy until dropped (a request and its response body).
pub(crate) struct Busy(Arc<ConnSlot>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnSlot {
    /// A slot that counts nothing, for the fuzz targets.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn detached() -> Arc<ConnSlot> {
        Arc::new(ConnSlot {
            busy: AtomicUsize::new(0),
            close: Notify::new(),
            owner: None,
            ip: None,
            _permit: None,
            _open: None,
        })
    }

    /// The connection is in a request until the guard is dropped.
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// The connection was upgraded: it is never idle again.
    pub(crate) fn upgraded(&self) {
        self.busy.fetch_add(1, Ordering::AcqRel);
    }

    /// Resolves when the gateway needs this (idle) connection's place.
    pub(crate) async fn asked_to_close(&self) {
        self.close.notified().await;
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let (Some(owner), Some(ip)) = (&self.owner, self.ip) {
            owner.per_ip.remove_if_mut(&ip, |_, n| {
                *n -= 1;
                *n == 0
            });
        }
    }
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its address has `max_connections_per_ip` open already.
    PerIp,
}

impl Connections {
    pub(crate) fn new(max: usize, metrics: Arc<Metrics>) -> Arc<Connections> {
        Arc::new(Connections {
            permits: Arc::new(Semaphore::new(max)),
            metrics,
            per_ip: DashMap::new(),
            by_age: Mutex::new(VecDeque::new()),
            max,
            fd_warned: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// A permit for one more connection: at once if under the cap, else once an
    /// idle connection asked to close (or any other) is gone.
    pub(crate) async fn permit(&self) -> OwnedSemaphorePermit {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return p;
        }
        self.close_idle();
        match self.permits.clone().acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed; should it be, wait for good.
            Err(_) => std::future::pending().await,
        }
    }

    /// Takes an accepted connection from `ip`, unless that address has `per_ip`
    /// connections already (`exempt`: trusted proxies).
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        permit: OwnedSemaphorePermit,
        per_ip: usize,
        exempt: bool,
    ) -> Result<Arc<ConnSlot>, Refused> {
        let counted = per_ip != 0 && !exempt;
        if counted {
            let mut n = self.per_ip.entry(ip).or_insert(0);
            if *n >= per_ip {
                self.metrics.connection_refused("per_ip");
                return Err(Refused::PerIp);
            }
            *n += 1;
        }
        let slot = Arc::new(ConnSlot {
            busy: AtomicUsize::new(0),
            close: Notify::new(),
            owner: counted.then(|| self.clone()),
            ip: counted.then_some(ip),
            _permit: Some(permit),
            _open: Some(GaugeGuard::new(self.metrics.connections_open.clone())),
        });
        let mut by_age = self.by_age.lock().unwrap_or_else(|e| e.into_inner());
        if by_age.len() >= 2 * self.max {
            by_age.retain(|w| w.strong_count() > 0);
        }
        by_age.push_back(Arc::downgrade(&slot));
        Ok(slot)
    }

    /// Asks the oldest idle connection to close. Busy ones keep their place.
    fn close_idle(&self) {
        let mut by_age = self.by_age.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..by_age.len() {
            let Some(weak) = by_age.pop_front() else {
                break;
            };
            let Some(slot) = weak.upgrade() else {
                continue;
            };
            if slot.busy.load(Ordering::Acquire) == 0 {
                slot.close.notify_one();
                tracing::debug!("closing an idle connection: limits.max_connections is reached");
                return;
            }
            by_age.push_back(weak);
        }
    }

    /// Logs a failed accept, at most once a second: under "too many open
    /// files" every accept fails, and a line each would flood the log.
    pub(crate) fn accept_failed(&self, error: &std::io::Error) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.fd_warned.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000 || last == 0 {
            self.fd_warned.store(now.max(1), Ordering::Relaxed);
            tracing::warn!(%error, "accept failed (logged once a second at most); lower limits.max_connections below the descriptor limit (LimitNOFILE)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn per_ip_and_idle_connections() {
        let conns = Connections::new(2, Arc::new(Metrics::new(&crate::Config::defaults())));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = conns.admit(ip, conns.permit().await, 1, false).unwrap();
        let p = conns.permit().await;
        assert_eq!(conns.admit(ip, p, 1, false).err(), Some(Refused::PerIp));
        let b = conns.admit(ip, conns.permit().await, 1, true).unwrap();
        let _busy = b.busy();
        // At the cap: the idle one (a) is asked to close, the busy one (b) is not.
        let waiting = tokio::spawn({
            let conns = conns.clone();
            async move { conns.permit().await }
        });
        a.asked_to_close().await;
        drop(a);
        let _third = waiting.await.unwrap();
        assert!(conns.per_ip.is_empty());
    }
}
