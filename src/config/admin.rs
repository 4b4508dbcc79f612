//! `[admin]`: the admin listener, where `/metrics`, `/health` and
//! `/connections` are served apart from the public traffic.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::diagnose::{expect_ip, expect_port};

/// The admin listener's default address: this machine only.
pub const DEFAULT_ADMIN_HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The admin listener's default port.
pub const DEFAULT_ADMIN_PORT: u16 = 3001;

/// `[admin]`: the admin listener (restart only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Whether to listen at all.
    pub enabled: bool,
    /// Address to listen on.
    #[serde(deserialize_with = "expect_ip")]
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free one, logged at start.
    #[serde(deserialize_with = "expect_port")]
    pub port: u16,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            host: DEFAULT_ADMIN_HOST,
            port: DEFAULT_ADMIN_PORT,
        }
    }
}

impl AdminConfig {
    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}
