//! Graceful shutdown through one `tokio::sync::watch` channel.
//!
//! The daemon owns a [`Shutdown`]; every long-lived task (each public connection,
//! each agent session, each upgraded passthrough) holds a [`watch::Receiver`] from
//! [`Shutdown::subscribe`]. `trigger` flips the value; tasks see `changed()` and
//! wind down; [`Shutdown::drain`] waits until every receiver is dropped, bounded by
//! the grace period, and reports how many tasks were still running.
//!
//! axum's own graceful shutdown does not cover tasks spawned from an upgrade
//! (tokio-rs/axum#3003), which is why agent sessions subscribe here themselves.

use std::time::Duration;

use tokio::sync::watch;

/// Cloning gives another handle on the same channel (clones are not receivers, so
/// they do not hold up the drain).
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(false);
        Shutdown { tx }
    }

    /// A receiver for one task; it must be dropped when the task ends.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Starts the shutdown: every subscriber's `changed()` resolves.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Waits until every subscriber is gone, or `grace` has passed. Returns the
    /// number of tasks still running at the deadline (0 when all finished).
    pub async fn drain(&self, grace: Duration) -> usize {
        match tokio::time::timeout(grace, self.tx.closed()).await {
            Ok(()) => 0,
            Err(_) => self.tx.receiver_count(),
        }
    }
}

/// Resolves when `rx` reports shutdown (or its sender is gone).
pub async fn signalled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
