//! gateway: a self-hosted HTTP tunnel.
//!
//! Agents next to private web apps dial out to the gateway over WebSocket; the
//! gateway checks their tunnel IDs and tokens, and proxies public HTTP requests to
//! them over yamux streams carried by that WebSocket. The gateway is the only end
//! that understands HTTP; the agent splices bytes to its local upstream.
//!
//! # Layout
//!
//! - [`config`]: the TOML/env/flag layers, typed and validated (timeouts live here).
//! - [`gateway`]: the daemon, the listener, its own endpoints, `/ws`, the registry
//!   of agents, and the proxy with its phases (route, admit, acquire, send,
//!   respond, observe).
//! - [`transport`]: the WebSocket as a byte stream, yamux sessions, stream I/O.
//! - [`agent`]: the other end, `gateway-agent`.
//! - [`protocol`]: every wire name, limit and message both ends share.
//! - [`auth`]: secrets and their constant-time checks.
//! - [`cli`]: both programs' flags; [`telemetry`], [`systemd`], [`shutdown`],
//!   [`rt`]: logs, readiness, stop and done, the runtime.
//!
//! The binaries in `src/bin/` only parse flags, load the config, call into here and
//! turn errors into one line and an exit code.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod auth;
pub mod cli;
pub mod config;
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
pub mod gateway;
pub mod protocol;
pub mod rt;
pub mod shutdown;
pub mod systemd;
pub mod telemetry;
pub mod transport;

pub use config::Config;
pub use gateway::Gateway;
pub use rt::runtime;
pub use shutdown::Shutdown;

/// The version and the commit the binaries were built from, as `--version` says.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("GATEWAY_COMMIT"),
    ")"
);

/// Exit code for a bad configuration (EX_CONFIG).
pub const EXIT_CONFIG: i32 = 78;
/// Exit code for bad command-line usage (EX_USAGE).
pub const EXIT_USAGE: i32 = 64;
