//! `[timeouts]`, all written as humantime strings ("5s", "1m 30s").

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::diagnose::duration;

/// `POST /forward`: how long to wait for the upstream's response head.
pub const DEFAULT_FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Every other proxied request: how long to wait for the upstream's response head.
pub const DEFAULT_DIRECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long requests in flight may run on after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How often the gateway pings an agent; three missed intervals end the session.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// How long a request whose tunnel has no agent waits for one to connect: long
/// enough for an agent to restart or reconnect after a blip.
pub const DEFAULT_AGENT_WAIT: Duration = Duration::from_secs(5);

/// `[timeouts]`: how long the gateway waits, for what.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// `POST /forward`: wait for the upstream's response head.
    #[serde(with = "duration")]
    pub forward: Duration,
    /// Every other proxied request: wait for the upstream's response head.
    #[serde(with = "duration")]
    pub direct: Duration,
    /// After SIGTERM, how long requests in flight may take to finish.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Interval of WebSocket pings to agents; silence for three intervals ends a session.
    #[serde(with = "duration")]
    pub heartbeat: Duration,
    /// How long a request whose tunnel has no agent waits for one (counted in
    /// its own timeout); 0: 503 at once. Tunnels may set their own.
    #[serde(with = "duration")]
    pub agent_wait: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            forward: DEFAULT_FORWARD_TIMEOUT,
            direct: DEFAULT_DIRECT_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            heartbeat: DEFAULT_HEARTBEAT,
            agent_wait: DEFAULT_AGENT_WAIT,
        }
    }
}
