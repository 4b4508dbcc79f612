//! Admission: whether a request may go on, in two steps. [`request::check`]
//! runs first for every public request: is it one the gateway can carry at all
//! (one valid Host, a bounded target, a known body framing, not `CONNECT`).
//! [`admit`] runs after routing: may this client reach this tunnel now, by the
//! tunnel's access policy (its methods and body size today; basic auth, IP
//! lists and rate limits to come), in one place that HTTP requests and, later, raw TCP
//! connections share. A refusal is answered by the gateway and never reaches the
//! agent.

pub(crate) mod request;

use http::{Method, Request, header};

use super::ConnCtx;
use super::error::ErrorKind;
use crate::config::TunnelConfig;

/// Admits `req`, from `client`, to `tunnel`, or says why not.
pub(crate) fn admit<B>(
    tunnel: &TunnelConfig,
    _client: &ConnCtx,
    req: &Request<B>,
) -> Result<(), ErrorKind> {
    if req.method() == Method::TRACE && !tunnel.allow_trace {
        return Err(ErrorKind::NotAllowed(Method::TRACE));
    }
    let limit = tunnel.max_request_body;
    if limit != 0
        && let Some(length) = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        && length > limit
    {
        // Refused before anything goes upstream; a chunked body is counted
        // as it streams (see proxy::body).
        return Err(ErrorKind::TooLarge(limit));
    }
    Ok(())
}
