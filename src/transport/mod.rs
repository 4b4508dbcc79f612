//! The tunnel transport: a WebSocket in, "open a stream to this agent" out.
//!
//! - [`ws_io`] turns a WebSocket's binary messages into one byte stream (and
//!   batches flushes, pings the peer, reads control messages);
//! - [`session`] runs a yamux session over that byte stream: on the gateway it
//!   opens streams on request, on the agent it hands out the streams the gateway
//!   opens;
//! - [`stream_io`] adapts a yamux stream to tokio's I/O traits, for hyper and for
//!   `copy_bidirectional`.
//!
//! Nothing here knows HTTP. Replacing yamux with another multiplexer means changing
//! this module only.

pub mod session;
pub mod stream_io;
pub mod ws_io;

pub use session::{OpenQueue, Opener, Session, SessionEnd, TunnelError};
pub use stream_io::StreamIo;
pub use ws_io::{Signals, WsIo};

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::protocol;

/// WebSocket codec settings used by both ends (see PERFORMANCE.md: tungstenite
/// zero-fills its read buffer, so a small one is faster).
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(protocol::WS_READ_BUFFER)
        .write_buffer_size(protocol::WS_WRITE_BUFFER)
        .max_write_buffer_size(protocol::WS_WRITE_BUFFER * 8)
        .max_message_size(Some(protocol::MAX_MESSAGE))
        .max_frame_size(Some(protocol::MAX_MESSAGE))
}
