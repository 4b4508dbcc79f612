//! The tunnel transport: a WebSocket in, "open a stream to this agent" out.
//!
//! - [`ws_io`] is the WebSocket codec: binary messages as one byte stream (it
//!   also batches flushes, pings the peer, reads control messages, and has the
//!   handshake's key functions);
//! - [`mux`] is the yamux protocol: streams with flow control over that byte
//!   stream, each a tokio `AsyncRead + AsyncWrite` ([`StreamIo`]) for hyper and
//!   for `copy_bidirectional`;
//! - [`session`] drives a session in one task: on the gateway it serves the
//!   streams opened on request, on the agent it hands out the streams the gateway
//!   opens; and it runs the drain.
//!
//! Nothing here knows HTTP. Replacing the multiplexer means changing this module
//! only.

pub mod mux;
pub mod session;
pub mod ws_io;

pub use mux::{StreamCount, StreamIo};
pub use session::{OpenQueue, Opener, Session, SessionEnd, TunnelError};
pub use ws_io::{Role, Signals, WsIo, close_code};
