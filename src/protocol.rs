//! What the tunnel promises on the wire: every name, limit and message that the
//! gateway, the agent and third-party agents share.
//!
//! Nothing else defines a header name, a wire limit or a message format, so the
//! two ends cannot drift apart; `docs/PROTOCOL.md` describes the same items for
//! other implementations.

use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Serialize};

/// The WebSocket subprotocol of this version of the tunnel protocol.
pub const SUBPROTOCOL: &str = "gateway-tunnel.v1";
/// Protocol version carried in the hello.
pub const PROTOCOL_VERSION: u32 = 1;
/// Path of the agents' WebSocket endpoint.
pub const WS_PATH: &str = "/ws";

/// Request header naming the tunnel an agent serves (and, on public requests, the
/// tunnel a client wants).
pub const TUNNEL_HEADER: HeaderName = HeaderName::from_static("x-tunnel-id");
/// Request header in which an agent names its upstream, for display only.
pub const UPSTREAM_HEADER: HeaderName = HeaderName::from_static("x-agent-upstream");
/// Response header carrying the one-line reason of a refused handshake.
pub const REASON_HEADER: HeaderName = HeaderName::from_static("x-gateway-reason");
/// Request/response header correlating a request across logs.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// Response header with the stable code of an error the gateway (or the agent)
/// answered itself, such as `no_agent` or `upstream_unreachable`.
pub const GATEWAY_ERROR_HEADER: HeaderName = HeaderName::from_static("x-gateway-error");
/// `POST /forward`: request header with the path to request upstream.
pub const FORWARD_PATH_HEADER: HeaderName = HeaderName::from_static("x-forward-path");

/// Characters of [`UPSTREAM_HEADER`] kept for display.
pub const MAX_UPSTREAM_NAME: usize = 256;
/// Longest client `X-Request-Id` kept; longer (or empty) ones are replaced.
pub const MAX_REQUEST_ID: usize = 128;

/// Heartbeat intervals with nothing received after which either end gives the
/// session up as dead.
pub const HEARTBEAT_MISSES: u32 = 3;
/// Longest heartbeat interval: the gateway's `timeouts.heartbeat` at most, and
/// what an agent takes of a hello that says more.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(3600);
/// Largest WebSocket message either end sends; larger ones are refused on receipt.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Largest text message accepted (text messages are small JSON control messages).
pub const MAX_TEXT: usize = 64 * 1024;
/// Bytes of yamux output gathered into one WebSocket message at most.
pub const WRITE_BATCH: usize = 64 * 1024;
/// Initial yamux window of each direction of a stream (the yamux spec's default).
pub const MUX_WINDOW: u32 = 256 * 1024;
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
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Unique ID of this agent connection, as listed by `/connections`.
    pub connection_id: String,
    /// The tunnel the agent serves.
    pub tunnel: String,
    /// The gateway's ping interval in seconds; the agent may use it to detect a dead
    /// gateway (no ping for [`HEARTBEAT_MISSES`] intervals).
    pub heartbeat_secs: u64,
}

impl Hello {
    /// The hello for a new connection.
    pub fn new(connection_id: &str, tunnel: &str, heartbeat: Duration) -> Self {
        Hello {
            kind: "hello".into(),
            version: PROTOCOL_VERSION,
            connection_id: connection_id.to_owned(),
            tunnel: tunnel.to_owned(),
            // Rounded up: an agent that applies the missed-intervals rule to this
            // value must not give up before our pings are due.
            heartbeat_secs: heartbeat.as_secs_f64().ceil().max(1.0) as u64,
        }
    }

    /// The message as sent.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a received hello.
    pub fn parse(text: &str) -> Result<Hello, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Text messages either end may send after the hello (all other messages are binary
/// yamux bytes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Agent to gateway: open no new streams to me; I close once mine are done.
    Drain,
}

impl Control {
    /// The message as sent.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The control message in `text`; None for one this version does not know
    /// (ignored, so that later versions can add messages).
    pub fn parse(text: &str) -> Option<Control> {
        serde_json::from_str(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let hello = Hello::new("abc", "demo", Duration::from_millis(1500));
        assert_eq!(hello.heartbeat_secs, 2);
        assert_eq!(Hello::parse(&hello.to_text()).unwrap(), hello);
        assert_eq!(Control::Drain.to_text(), r#"{"type":"drain"}"#);
        assert_eq!(Control::parse(r#"{"type":"drain"}"#), Some(Control::Drain));
        assert_eq!(Control::parse(r#"{"type":"later"}"#), None);
    }
}
