//! The opening handshake (RFC 6455 section 4) of the tunnel's WebSocket, both
//! halves in one place so that they are tested against each other:
//!
//! - the agent's upgrade request ([`client_request`]) and its check of the
//!   gateway's `101` ([`check_response`]);
//! - the gateway's check of that request ([`check_request`], which also reads
//!   the tunnel, the token and the upstream the agent names) and its `101`
//!   ([`accept_response`]).
//!
//! What a refusal for a *tunnel* reason (unknown tunnel, wrong token) looks like
//! is the gateway's business; here are the refusals of the WebSocket itself.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Empty;

use crate::auth::{Secret, bearer_token};
use crate::protocol::{MAX_UPSTREAM_NAME, SUBPROTOCOL, TUNNEL_HEADER, UPSTREAM_HEADER};

/// The GUID of RFC 6455 section 1.3, hashed with the client's key.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What is wrong with one half of the handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The request is not a WebSocket upgrade (or has no key).
    #[error("expected a WebSocket upgrade: /ws is where gateway agents connect")]
    NotWebSocket,
    /// The request asks for another WebSocket version than 13.
    #[error("unsupported WebSocket version: expected Sec-WebSocket-Version 13")]
    Version,
    /// The request offers subprotocols, none of them ours.
    #[error(
        "unsupported tunnel protocol {0:?}: this gateway speaks {SUBPROTOCOL}; upgrade the agent or the gateway"
    )]
    Subprotocol(String),
    /// A value the agent was given cannot be sent in a header.
    #[error("{0:?} cannot be sent as a header")]
    BadHeader(String),
    /// The `101`'s accept key is not the one for our key.
    #[error(
        "the WebSocket handshake is invalid (Sec-WebSocket-Accept does not match); is --gateway a gateway?"
    )]
    AcceptMismatch,
    /// The `101` names another subprotocol than ours.
    #[error("the gateway chose protocol {0:?}, not {SUBPROTOCOL}")]
    OtherProtocol(String),
}

/// An agent's upgrade request, as the gateway reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// `Sec-WebSocket-Key`.
    pub key: String,
    /// Whether the agent offered our subprotocol (then the `101` names it too).
    pub echo_protocol: bool,
    /// `X-Tunnel-Id`, trimmed.
    pub tunnel: Option<String>,
    /// The bearer token, if any.
    pub token: Option<Secret>,
    /// `X-Agent-Upstream`, cut to [`MAX_UPSTREAM_NAME`] characters.
    pub upstream: Option<String>,
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 section 4.2.2).
pub fn accept_key(key: &str) -> String {
    use base64::Engine;
    use sha1::Digest;
    let mut sha = sha1::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
pub fn client_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>())
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn header_lossy(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    let value = headers.get(name)?;
    Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// Whether the comma-separated `value` lists `token` (case-insensitively).
fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// The agent's upgrade request: `GET path_and_query` to `authority`, for `tunnel`,
/// with `token` as a bearer token and `upstream` named for display.
pub fn client_request(
    authority: &str,
    path_and_query: &str,
    tunnel: &str,
    token: Option<&Secret>,
    upstream: &str,
    key: &str,
) -> Result<Request<Empty<Bytes>>, HandshakeError> {
    // Visible ASCII only: the gateway reads these headers as text, and would
    // take anything else for a missing header.
    let value = |v: &str| {
        let ascii = v.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
        ascii
            .then(|| HeaderValue::from_str(v).ok())
            .flatten()
            .ok_or_else(|| HandshakeError::BadHeader(v.to_owned()))
    };
    let mut request = Request::get(path_and_query)
        .header(header::HOST, value(authority)?)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, value(key)?)
        .header(header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL)
        .header(
            header::USER_AGENT,
            concat!("gateway-agent/", env!("CARGO_PKG_VERSION")),
        )
        .header(TUNNEL_HEADER, value(tunnel)?)
        .header(UPSTREAM_HEADER, value(upstream)?)
        .body(Empty::new())
        .map_err(|_| HandshakeError::BadHeader(path_and_query.to_owned()))?;
    if let Some(token) = token {
        // Checked here rather than with `value`, so that a bad token is not echoed.
        let bearer = value(&format!("Bearer {}", token.expose()))
            .map_err(|_| HandshakeError::BadHeader("the token".to_owned()))?;
        request.headers_mut().insert(header::AUTHORIZATION, bearer);
    }
    Ok(request)
}

/// The gateway's check of an upgrade request's WebSocket headers, and what the
/// agent says about itself.
pub fn check_request(headers: &HeaderMap) -> Result<Offer, HandshakeError> {
    let is_ws = has_token(header_str(headers, header::CONNECTION), "upgrade")
        && has_token(header_str(headers, header::UPGRADE), "websocket");
    let key = header_str(headers, header::SEC_WEBSOCKET_KEY);
    let (true, Some(key)) = (is_ws, key) else {
        return Err(HandshakeError::NotWebSocket);
    };
    if header_str(headers, header::SEC_WEBSOCKET_VERSION) != Some("13") {
        return Err(HandshakeError::Version);
    }
    let offered = header_str(headers, header::SEC_WEBSOCKET_PROTOCOL);
    if let Some(offered) = offered
        && !has_token(Some(offered), SUBPROTOCOL)
    {
        return Err(HandshakeError::Subprotocol(offered.to_owned()));
    }
    Ok(Offer {
        key: key.to_owned(),
        echo_protocol: offered.is_some(),
        // Read even when not ASCII: a tunnel that is named, however badly, is an
        // unknown tunnel, not a missing header.
        tunnel: header_lossy(headers, TUNNEL_HEADER).map(|s| s.trim().to_owned()),
        token: bearer_token(headers).map(Secret::new),
        upstream: header_lossy(headers, UPSTREAM_HEADER)
            .map(|s| s.chars().take(MAX_UPSTREAM_NAME).collect()),
    })
}

/// The gateway's `101 Switching Protocols` for an accepted offer.
pub fn accept_response<B: Default>(offer: &Offer) -> Response<B> {
    let mut resp = Response::new(B::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept_key(&offer.key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if offer.echo_protocol {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    resp
}

/// The agent's check of the gateway's `101` to the request made with `key`.
pub fn check_response(headers: &HeaderMap, key: &str) -> Result<(), HandshakeError> {
    if header_str(headers, header::SEC_WEBSOCKET_ACCEPT) != Some(accept_key(key).as_str()) {
        return Err(HandshakeError::AcceptMismatch);
    }
    match header_str(headers, header::SEC_WEBSOCKET_PROTOCOL) {
        Some(p) if p != SUBPROTOCOL => Err(HandshakeError::OtherProtocol(p.to_owned())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: Option<&str>) -> Request<Empty<Bytes>> {
        let token = token.map(Secret::new);
        client_request(
            "gw.example.com:3000",
            "/ws",
            "demo",
            token.as_ref(),
            "http://127.0.0.1:8000",
            &client_key(),
        )
        .expect("a valid request")
    }

    #[test]
    fn accept_key_matches_the_rfc_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    /// What the agent sends, the gateway accepts, and the gateway's answer the
    /// agent accepts.
    #[test]
    fn the_two_halves_agree() {
        let req = request(Some("s3cret"));
        let offer = check_request(req.headers()).expect("the gateway accepts the agent's request");
        assert_eq!(offer.tunnel.as_deref(), Some("demo"));
        assert_eq!(offer.token, Some(Secret::new("s3cret")));
        assert_eq!(offer.upstream.as_deref(), Some("http://127.0.0.1:8000"));
        assert!(offer.echo_protocol);
        let resp: Response<()> = accept_response(&offer);
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        let key = req.headers()[header::SEC_WEBSOCKET_KEY].to_str().unwrap();
        assert_eq!(check_response(resp.headers(), key), Ok(()));
        // The answer to another request's key is refused.
        assert_eq!(
            check_response(resp.headers(), &client_key()),
            Err(HandshakeError::AcceptMismatch)
        );
        assert_eq!(check_request(request(None).headers()).unwrap().token, None);
    }

    #[test]
    fn the_gateway_refuses_what_is_not_our_websocket() {
        let mut req = request(None);
        req.headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, "other.v9".parse().unwrap());
        assert_eq!(
            check_request(req.headers()),
            Err(HandshakeError::Subprotocol("other.v9".into()))
        );
        req.headers_mut()
            .insert(header::SEC_WEBSOCKET_VERSION, "8".parse().unwrap());
        assert_eq!(check_request(req.headers()), Err(HandshakeError::Version));
        req.headers_mut().remove(header::SEC_WEBSOCKET_KEY);
        assert_eq!(
            check_request(req.headers()),
            Err(HandshakeError::NotWebSocket)
        );
        assert_eq!(
            check_request(&HeaderMap::new()),
            Err(HandshakeError::NotWebSocket)
        );
        // No subprotocol offered (a minimal client): accepted, none echoed.
        let mut req = request(None);
        req.headers_mut().remove(header::SEC_WEBSOCKET_PROTOCOL);
        let offer = check_request(req.headers()).unwrap();
        let resp: Response<()> = accept_response(&offer);
        assert!(!resp.headers().contains_key(header::SEC_WEBSOCKET_PROTOCOL));
    }

    #[test]
    fn the_agent_refuses_another_protocol_and_bad_values() {
        let key = client_key();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            accept_key(&key).parse().unwrap(),
        );
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, "other.v9".parse().unwrap());
        assert_eq!(
            check_response(&headers, &key),
            Err(HandshakeError::OtherProtocol("other.v9".into()))
        );
        for bad in ["bad\ntunnel", "dëmo"] {
            let err = client_request("gw", "/ws", bad, None, "x", &key).unwrap_err();
            assert_eq!(err, HandshakeError::BadHeader(bad.into()));
        }
        let token = Secret::new("line\nbreak");
        let err = client_request("gw", "/ws", "t", Some(&token), "x", &key).unwrap_err();
        assert!(!err.to_string().contains("line"), "{err}");
    }
}
