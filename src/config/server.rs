//! `[server]`: where the gateway listens and how it routes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::diagnose::{expect_ip, expect_port};
use crate::auth::Secret;

/// Default listen address: loopback, so a try-out is never exposed by accident.
pub const DEFAULT_HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Default listen port, as in the original description.
pub const DEFAULT_PORT: u16 = 3000;

/// `[server]`: where to listen and how to route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on (restart-only).
    #[serde(deserialize_with = "expect_ip")]
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free one, logged at start (restart-only).
    #[serde(deserialize_with = "expect_port")]
    pub port: u16,
    /// When set, `<tunnel>.<public_domain>` in the Host header selects the tunnel.
    pub public_domain: Option<String>,
    /// Tunnel for requests that name none; defaults to the only tunnel, if one.
    pub default_tunnel: Option<String>,
    /// Keep the client's `X-Forwarded-For/-Proto/-Host` (extend, not replace). Only
    /// for a gateway reached solely through a proxy you run (nginx, a TLS load
    /// balancer): otherwise any client could claim any address or scheme.
    pub trust_forwarded: bool,
    /// The proxies in front (addresses or networks) whose `X-Forwarded-*`
    /// headers are believed; the client is the right-most address of
    /// `X-Forwarded-For` that is not one of them. `trust_forwarded = true`
    /// trusts every peer, one hop deep.
    pub trusted_proxies: Vec<String>,
    /// Connections start with a PROXY protocol header (v1 or v2) naming the
    /// client; accepted only from `trusted_proxies`.
    pub proxy_protocol: bool,
    /// When set, `GET /connections` requires `Authorization: Bearer <admin_token>`.
    pub admin_token: Option<Secret>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: DEFAULT_HOST,
            port: DEFAULT_PORT,
            public_domain: None,
            default_tunnel: None,
            trust_forwarded: false,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            admin_token: None,
        }
    }
}

impl ServerConfig {
    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}
