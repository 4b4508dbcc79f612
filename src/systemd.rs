//! systemd integration through `sd_notify`: readiness, status, stopping, watchdog.
//!
//! `READY=1` is sent only once the listener is bound, so that `systemctl start`
//! returns when the port really accepts connections and units ordered after the
//! gateway can use it at once. Without `NOTIFY_SOCKET` every call is a no-op, so
//! the same binary runs under systemd, in a terminal and in tests.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// `READY=1` with a one-line `STATUS=`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STATUS=` alone, e.g. after a reload.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `STOPPING=1`, when draining starts.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// When systemd asked for a watchdog (`WATCHDOG_USEC`), pings at half its interval
/// until shutdown. Returns at once when there is no watchdog.
pub async fn watchdog(stop: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = ticker.tick() => send(&[NotifyState::Watchdog]),
            _ = stop.cancelled() => return,
        }
    }
}
