//! `[limits]`: what any client connection may send, before a tunnel's own
//! policy is looked at. The defaults are near nginx's and Envoy's: generous for
//! browsers and API clients, small enough that a slow or oversized client costs
//! little.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::diagnose::{duration, size};

/// How long a client has to send a request head: from the connection's start, or
/// from the end of the previous response on a keep-alive connection.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);
/// Request line and headers together, in bytes.
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 32 * 1024;
/// Header fields in one request.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// The request target (path and query, or an absolute URI), in bytes.
pub const DEFAULT_MAX_URI_LENGTH: u64 = 8 * 1024;
/// Public connections (agents' included) open at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Connections from one client address at once.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1024;
/// Longest pause inside a request body before it is given up on.
pub const DEFAULT_REQUEST_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest pause inside a response body before it is given up on.
pub const DEFAULT_RESPONSE_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// `[limits]`: bounds on every public request. Live on reload, for the
/// connections accepted after it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Time to send a request head; also how long an idle keep-alive
    /// connection stays open. Expired: the connection is closed.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Request line and headers, in bytes. Beyond: 431, connection closed.
    #[serde(with = "size")]
    pub max_header_bytes: u64,
    /// Header fields per request. Beyond: 431, connection closed.
    pub max_headers: usize,
    /// Request target length, in bytes. Beyond: 414.
    #[serde(with = "size")]
    pub max_uri_length: u64,
    /// Public connections open at once, agents' included (restart only).
    /// Beyond: idle keep-alive connections are closed to make room, and if
    /// none is idle, new connections wait in the kernel's backlog.
    pub max_connections: usize,
    /// Connections from one client address at once (0: no limit); trusted
    /// proxies are exempt. Beyond: 429 and close.
    pub max_connections_per_ip: usize,
    /// A request body that pauses longer than this is given up on: 408 if no
    /// answer was sent yet, and the connection is closed.
    #[serde(with = "duration")]
    pub request_body_idle_timeout: Duration,
    /// A response body that pauses longer than this is given up on: the
    /// connection is closed, the client sees the body end early.
    #[serde(with = "duration")]
    pub response_body_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_uri_length: DEFAULT_MAX_URI_LENGTH,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            request_body_idle_timeout: DEFAULT_REQUEST_BODY_IDLE_TIMEOUT,
            response_body_idle_timeout: DEFAULT_RESPONSE_BODY_IDLE_TIMEOUT,
        }
    }
}
