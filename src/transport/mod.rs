//! The tunnel transport: a WebSocket in, "open a stream to this agent" out.
//!
//! - [`ws_io`] is the WebSocket codec: binary messages as one byte stream (it
//!   also batches flushes, pings the peer, reads control messages, and has the
//!   handshake's key functions);
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
pub use ws_io::{Role, Signals, WsIo, close_code};
