//! Admission: whether a client may reach a tunnel now. The access policy of each
//! tunnel (basic auth, IP lists, rate limits, sizes) is checked here, in one place
//! that HTTP requests and, later, raw TCP connections share. The phase runs after
//! routing and before anything is sent upstream; a refusal is answered by the
//! gateway and never reaches the agent.
//!
//! No rule is configured yet: every client is admitted.

use super::ConnCtx;
use super::error::ErrorKind;
use crate::config::TunnelConfig;

/// Admits a client of `tunnel`, or says why not.
pub(crate) fn admit(_tunnel: &TunnelConfig, _client: &ConnCtx) -> Result<(), ErrorKind> {
    Ok(())
}
