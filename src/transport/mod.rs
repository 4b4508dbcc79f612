//! The tunnel transport: a WebSocket in, "open a stream to this agent" out.
//!
//! - [`ws`] is the WebSocket: the codec that turns binary messages into one byte
//!   stream (with pings, the heartbeat and the close handshake) and both halves of
//!   the opening handshake;
//! - [`mux`] is the yamux protocol: streams with flow control over that byte
//!   stream, each a tokio `AsyncRead + AsyncWrite` ([`StreamIo`]) for hyper and
//!   for `copy_bidirectional`;
//! - [`session`] drives a session in one task (and [`SessionHandle`] is what the
//!   gateway keeps of it): on the gateway it serves the
//!   streams opened on request, on the agent it hands out the streams the gateway
//!   opens; it acts on control messages and runs the drain.
//!
//! Nothing here knows what the streams carry, nor what the gateway does with the
//! agent. Replacing the multiplexer means changing this module only.

mod handle;
pub mod mux;
pub mod proxy_protocol;
pub mod session;
pub mod ws;

pub use handle::{OpenQueue, SessionHandle};
pub use mux::{MuxError, StreamCount, StreamIo};
pub use session::{Session, SessionEnd, TunnelError};
pub use ws::{Role, WsError, WsIo, close_code};
