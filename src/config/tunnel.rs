//! `[[tunnels]]`: the tunnels agents may serve, with their credentials and, as
//! the access policy grows, who may reach them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::access::{RateLimit, expect_rate_limit};
use super::diagnose::{duration, size};
use crate::auth::{Secret, digest_matches, secret_matches};

/// Requests that may wait for an agent of one tunnel at a time, by default;
/// beyond it they get 503 at once.
pub const DEFAULT_MAX_WAITING: usize = 256;

/// `[[tunnels]]`: one tunnel that agents may serve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// Tunnel ID: `^[a-z0-9][a-z0-9-]{0,62}$` (it may be used as a DNS label).
    /// Required: an entry without one is refused by validation.
    #[serde(default)]
    pub id: String,
    /// Shared secret the agent presents as `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Hex SHA-256 of the token, so the file need not hold the secret itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// Send the agent's upstream address as Host instead of the public one.
    #[serde(default)]
    pub rewrite_host: bool,
    /// This tunnel's `timeouts.agent_wait`, when it differs.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub agent_wait: Option<Duration>,
    /// Requests that may wait for an agent at a time; beyond it, 503 at once.
    #[serde(default = "default_max_waiting")]
    pub max_waiting: usize,
    /// The protocols a request may upgrade to (the `Upgrade` header), which then
    /// turn the connection into a byte pipe past the gateway; any other upgrade
    /// is refused and the request proxied as a plain one.
    #[serde(default = "default_upgrades")]
    pub upgrades: Vec<String>,
    /// Pass `TRACE` requests on; off, they get 405 (an app that echoes the
    /// request back would show a browser's cookies to a script).
    #[serde(default)]
    pub allow_trace: bool,
    /// Pass on request headers whose names contain `_`; off, they are dropped
    /// (CGI-style apps read `X_Real_IP` and `X-Real-IP` as the same variable,
    /// so a client could forge one the gateway or a proxy set).
    #[serde(default)]
    pub forward_underscore_headers: bool,
    /// Request bodies larger than this get 413 (0: no limit): at once when
    /// `Content-Length` says so, else once the streamed body passes it.
    #[serde(default = "default_max_request_body", with = "size")]
    pub max_request_body: u64,
    /// HTTP Basic credentials for the public side, `"user:hash"` (argon2 from
    /// `gateway hash-password`, or bcrypt from `htpasswd -nB`); empty: none asked.
    #[serde(default)]
    pub basic_auth: Vec<String>,
    /// Path prefixes that need no credentials (webhook receivers).
    #[serde(default)]
    pub auth_exempt: Vec<String>,
    /// Pass the client's `Authorization` header upstream; off, it is removed
    /// once basic auth has read it.
    #[serde(default)]
    pub forward_authorization: bool,
    /// Only clients in these networks may reach the tunnel (empty: anyone).
    #[serde(default)]
    pub allow_ips: Vec<String>,
    /// Clients in these networks may not (this wins over `allow_ips`).
    #[serde(default)]
    pub deny_ips: Vec<String>,
    /// Requests per client address (or per tunnel) and period; beyond it, 429.
    #[serde(
        default,
        deserialize_with = "expect_rate_limit",
        skip_serializing_if = "Option::is_none"
    )]
    pub rate_limit: Option<RateLimit>,
    /// Requests in flight on the tunnel at once; beyond it, 503 (0: no limit).
    #[serde(default)]
    pub max_concurrent_requests: usize,
    /// Agents connected for the tunnel at once; beyond it, the handshake is
    /// refused (0: no limit).
    #[serde(default)]
    pub max_agents: usize,
}

/// Request bodies up to 100 MiB by default, as Cloudflare's tunnels allow.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 100 * 1024 * 1024;

fn default_max_request_body() -> u64 {
    DEFAULT_MAX_REQUEST_BODY
}

fn default_max_waiting() -> usize {
    DEFAULT_MAX_WAITING
}

/// The upgrades allowed by default: WebSocket only. `h2c`, in particular, would
/// let every later request on the connection bypass the gateway.
pub const DEFAULT_UPGRADES: [&str; 1] = ["websocket"];

fn default_upgrades() -> Vec<String> {
    DEFAULT_UPGRADES.iter().map(|s| (*s).to_owned()).collect()
}

impl TunnelConfig {
    /// A tunnel with no token: any agent that names it is accepted.
    pub fn open(id: &str) -> Self {
        TunnelConfig {
            id: id.to_owned(),
            token: None,
            token_sha256: None,
            rewrite_host: false,
            agent_wait: None,
            max_waiting: DEFAULT_MAX_WAITING,
            upgrades: default_upgrades(),
            allow_trace: false,
            forward_underscore_headers: false,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            basic_auth: Vec::new(),
            auth_exempt: Vec::new(),
            forward_authorization: false,
            allow_ips: Vec::new(),
            deny_ips: Vec::new(),
            rate_limit: None,
            max_concurrent_requests: 0,
            max_agents: 0,
        }
    }

    /// Whether agents must present a token.
    pub fn requires_token(&self) -> bool {
        self.token.is_some() || self.token_sha256.is_some()
    }

    /// Checks a presented token, in time independent of where it differs.
    pub fn token_matches(&self, presented: Option<&str>) -> bool {
        match (&self.token, &self.token_sha256) {
            (None, None) => true,
            (Some(expected), _) => secret_matches(expected, presented),
            (None, Some(hex_digest)) => digest_matches(hex_digest, presented),
        }
    }

    /// Whether an agent with `other`'s credentials may no longer serve this
    /// tunnel (a reload changed the token).
    pub fn credentials_differ(&self, other: &TunnelConfig) -> bool {
        self.token != other.token || self.token_sha256 != other.token_sha256
    }
}

#[cfg(test)]
mod tests {
    use sha2::Digest;

    use super::*;

    #[test]
    fn tokens_compare_plain_and_hashed() {
        let mut t = TunnelConfig::open("x");
        assert!(t.token_matches(None));
        t.token = Some(Secret::new("s3cret"));
        assert!(t.token_matches(Some("s3cret")));
        assert!(!t.token_matches(Some("s3cre")));
        assert!(!t.token_matches(None));
        t.token = None;
        t.token_sha256 = Some(hex::encode(sha2::Sha256::digest(b"s3cret")));
        assert!(t.token_matches(Some("s3cret")));
        assert!(!t.token_matches(Some("other")));
    }
}
