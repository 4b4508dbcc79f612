//! Shutdown: two jobs, two types. A [`CancellationToken`] tells every task to
//! stop; a [`TaskTracker`] knows when the tasks that must finish (each public
//! connection, each agent session until its close frame is out, each upgraded
//! passthrough) are done. [`Shutdown::drain`] waits for them, bounded by the
//! grace period, and says how many were still running.
//!
//! axum's own graceful shutdown does not cover tasks spawned from an upgrade
//! (tokio-rs/axum#3003): agent sessions are spawned on the tracker themselves.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The daemon's stop signal and its tracker of tasks. Clones share both.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    /// Fires when the grace period is over: what still runs is cut off.
    cut: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    /// A shutdown that has not been triggered, tracking no task.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stop signal, for a task to listen to (`token.cancelled().await`).
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Spawns a task that the drain waits for.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Tells every task to stop.
    pub fn trigger(&self) {
        self.stop.cancel();
    }

    /// Whether [`Shutdown::trigger`] was called.
    pub fn is_triggered(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves once the shutdown is triggered.
    pub async fn stopped(&self) {
        self.stop.cancelled().await
    }

    /// The grace period is over: tasks still finishing their work (a client
    /// downloading slowly) stop now.
    pub fn cut(&self) {
        self.stop.cancel();
        self.cut.cancel();
    }

    /// Resolves once [`Shutdown::cut`] is called.
    pub async fn cut_off(&self) {
        self.cut.cancelled().await
    }

    /// Waits until every tracked task is done, or `grace` has passed. Returns the
    /// number of tasks still running at the deadline (0 when all finished).
    pub async fn drain(&self, grace: Duration) -> usize {
        self.tasks.close();
        match tokio::time::timeout(grace, self.tasks.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tasks.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tracked_tasks_within_the_grace() {
        let shutdown = Shutdown::new();
        for secs in [1, 2, 100] {
            let token = shutdown.token();
            shutdown.spawn(async move {
                token.cancelled().await;
                tokio::time::sleep(Duration::from_secs(secs)).await;
            });
        }
        // An untracked task does not hold the drain.
        tokio::spawn(std::future::pending::<()>());
        shutdown.trigger();
        assert!(shutdown.is_triggered());
        assert_eq!(shutdown.drain(Duration::from_secs(10)).await, 1);
        assert_eq!(Shutdown::new().drain(Duration::from_secs(10)).await, 0);
    }
}
