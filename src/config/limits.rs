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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_uri_length: DEFAULT_MAX_URI_LENGTH,
        }
    }
}
