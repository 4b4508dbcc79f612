//! Errors a proxied request can end in, and how each is shown to the client.
//!
//! The body is short and stable: a code a script can match and one sentence for a
//! person, as JSON when the client accepts JSON and as plain text otherwise. Causes
//! (I/O errors, agent internals) are logged in the request's span, never sent.

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};

use crate::protocol::{GATEWAY_ERROR_HEADER, REQUEST_ID_HEADER};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// The request names no tunnel and there is no default.
    NoTunnel,
    /// The Host or X-Tunnel-Id names a tunnel that is not configured.
    UnknownTunnel(String),
    /// The tunnel has no connected agent.
    NoAgent(String),
    /// The upstream did not send its response head in time.
    Timeout(std::time::Duration),
    /// The agent's session ended, or the stream failed, before the response head.
    AgentLost,
    /// The request cannot be forwarded as it is (e.g. an invalid X-Forward-Path).
    BadRequest(String),
    /// The upstream answered something the gateway cannot pass on.
    BadUpstream(String),
    /// The tunnel does not take this method (`TRACE`, unless allowed).
    NotAllowed(http::Method),
    /// The request needs what the gateway does not do (`CONNECT`, a transfer
    /// coding other than chunked).
    NotImplemented(&'static str),
    /// The request target is longer than `limits.max_uri_length`.
    UriTooLong(u64),
    /// The request body is larger than the tunnel's `max_request_body`.
    TooLarge(u64),
    /// The tunnel asks for credentials (its ID is the realm) and none were
    /// sent, or (`true`) wrong ones.
    Unauthorized(String, bool),
    /// The client's address may not reach the tunnel (`allow_ips`, `deny_ips`).
    Forbidden,
    /// The client (or the tunnel) is over its `rate_limit`; a token is back in
    /// this long.
    RateLimited(std::time::Duration),
    /// The tunnel has `max_concurrent_requests` in flight already.
    Busy(String),
    /// The client's request body paused longer than
    /// `limits.request_body_idle_timeout`.
    BodyTimeout,
}

/// The methods a tunnel takes, for the `Allow` header of a 405.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

impl ErrorKind {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ErrorKind::NoTunnel | ErrorKind::UnknownTunnel(_) => StatusCode::NOT_FOUND,
            ErrorKind::NoAgent(_) => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::AgentLost | ErrorKind::BadUpstream(_) => StatusCode::BAD_GATEWAY,
            ErrorKind::BadRequest(_) => StatusCode::BAD_REQUEST,
            ErrorKind::NotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ErrorKind::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ErrorKind::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Unauthorized(..) => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// Stable machine-readable code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ErrorKind::NoTunnel => "no_tunnel",
            ErrorKind::UnknownTunnel(_) => "unknown_tunnel",
            ErrorKind::NoAgent(_) => "no_agent",
            ErrorKind::Timeout(_) => "upstream_timeout",
            ErrorKind::AgentLost => "agent_lost",
            ErrorKind::BadRequest(_) => "bad_request",
            ErrorKind::BadUpstream(_) => "bad_upstream_response",
            ErrorKind::NotAllowed(_) => "method_not_allowed",
            ErrorKind::NotImplemented(_) => "not_implemented",
            ErrorKind::UriTooLong(_) => "uri_too_long",
            ErrorKind::TooLarge(_) => "body_too_large",
            ErrorKind::Unauthorized(..) => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::RateLimited(_) => "rate_limited",
            ErrorKind::Busy(_) => "tunnel_busy",
            ErrorKind::BodyTimeout => "body_timeout",
        }
    }

    pub(crate) fn message(&self) -> String {
        match self {
            ErrorKind::NoTunnel => {
                "No tunnel named: use the tunnel's host name or an X-Tunnel-Id header".to_owned()
            }
            ErrorKind::UnknownTunnel(t) => format!("Unknown tunnel '{t}'"),
            ErrorKind::NoAgent(t) => format!("No agents available for tunnel '{t}'"),
            ErrorKind::Timeout(d) => format!(
                "The upstream did not answer within {}",
                humantime::format_duration(*d)
            ),
            ErrorKind::AgentLost => {
                "The agent's connection was lost before the upstream answered".to_owned()
            }
            ErrorKind::BadRequest(why) | ErrorKind::BadUpstream(why) => why.clone(),
            ErrorKind::NotAllowed(method) => format!("{method} is not allowed on this tunnel"),
            ErrorKind::NotImplemented(why) => (*why).to_owned(),
            ErrorKind::UriTooLong(limit) => format!(
                "The request target is longer than {}",
                crate::config::show_size(*limit)
            ),
            ErrorKind::TooLarge(limit) => format!(
                "The request body is larger than {}",
                crate::config::show_size(*limit)
            ),
            ErrorKind::Unauthorized(_, false) => {
                "This tunnel needs a user name and password".to_owned()
            }
            ErrorKind::Unauthorized(_, true) => "The user name or password is wrong".to_owned(),
            ErrorKind::Forbidden => "Your address may not reach this tunnel".to_owned(),
            ErrorKind::RateLimited(_) => "Too many requests: slow down and retry later".to_owned(),
            ErrorKind::Busy(t) => {
                format!("Tunnel '{t}' has too many requests in flight: retry shortly")
            }
            ErrorKind::BodyTimeout => "The request body stopped arriving".to_owned(),
        }
    }

    /// The response for `req`, in the format it accepts.
    pub(crate) fn response<B>(&self, req: &Request<B>, request_id: &HeaderValue) -> Response<Body> {
        self.response_as(wants_json(req.headers()), request_id)
    }

    /// The response, as JSON or as plain text.
    pub(crate) fn response_as(&self, wants_json: bool, request_id: &HeaderValue) -> Response<Body> {
        let (body, content_type) = if wants_json {
            let body = serde_json::json!({
                "error": self.code(),
                "message": self.message(),
                "request_id": request_id.to_str().unwrap_or_default(),
            });
            (body.to_string(), "application/json")
        } else {
            (format!("{}\n", self.message()), "text/plain; charset=utf-8")
        };
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(REQUEST_ID_HEADER, request_id.clone());
        h.insert(GATEWAY_ERROR_HEADER, HeaderValue::from_static(self.code()));
        match self {
            ErrorKind::NotAllowed(_) => {
                h.insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
            }
            // The rest of the body is not read: the connection cannot be reused.
            ErrorKind::TooLarge(_) | ErrorKind::BodyTimeout => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ErrorKind::Unauthorized(realm, _) => {
                // Tunnel IDs are [a-z0-9-]: nothing to escape in the quotes.
                if let Ok(v) =
                    HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
                {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            ErrorKind::RateLimited(wait) => {
                // Whole seconds, rounded up: a client that waits that long gets in.
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            ErrorKind::Busy(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

/// Whether a client with these headers prefers JSON error bodies.
pub(crate) fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
}
