//! The tunnel protocol's wire constants, shared by the gateway and the agent.
//!
//! Every name, limit and message of the protocol lives here, so that the two ends
//! cannot drift apart; `docs/PROTOCOL.md` describes them for other implementations.

use serde::{Deserialize, Serialize};

/// The WebSocket subprotocol of this version of the tunnel protocol.
pub const SUBPROTOCOL: &str = "gateway-tunnel.v1";
/// Protocol version carried in the hello.
pub const PROTOCOL_VERSION: u32 = 1;
/// Path of the agents' WebSocket endpoint.
pub const WS_PATH: &str = "/ws";
/// Request header naming the tunnel an agent serves (and, on public requests, the
/// tunnel a client wants).
pub const TUNNEL_HEADER: &str = "x-tunnel-id";
/// Request header in which an agent names its upstream, for display only.
pub const UPSTREAM_HEADER: &str = "x-agent-upstream";
/// Response header carrying the one-line reason of a refused handshake.
pub const REASON_HEADER: &str = "x-gateway-reason";
/// Request/response header correlating a request across logs.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Largest WebSocket message either end sends; larger ones are refused on receipt.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Bytes of yamux output gathered into one WebSocket message at most.
pub const WRITE_BATCH: usize = 64 * 1024;
/// Upper bound on streams per agent session.
pub const MAX_STREAMS: usize = 2048;
/// Copy buffer per direction in the agent's splice.
pub const COPY_BUFFER: usize = 32 * 1024;

/// The first message of a session, text, from the gateway to the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hello {
    /// Always "hello".
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    /// Unique ID of this agent connection, as listed by `/connections`.
    pub connection_id: String,
    pub tunnel: String,
    /// The gateway's ping interval in seconds; the agent may use it to detect a dead
    /// gateway (no ping for three intervals).
    pub heartbeat_secs: u64,
}

/// Text messages either end may send after the hello (all other messages are binary
/// yamux bytes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Agent to gateway: open no new streams to me; I close once mine are done.
    Drain,
}
