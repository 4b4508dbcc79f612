//! The reverse proxy: a public request, routed to a tunnel, sent as HTTP/1.1 over a
//! yamux stream to one of its agents, the answer streamed back.
//!
//! [`handle`] runs the phases of one request, each a short function:
//!
//! 1. **route** ([`super::routing`]): which tunnel;
//! 2. **admit** ([`super::policy`]): may this client reach it now;
//! 3. **acquire** ([`pool`]): which agent, which stream;
//! 4. **send** ([`headers`], [`body`]): the rewritten request, upstream;
//! 5. **respond**: the answer, or the upgrade ([`upgrade`]), downstream;
//! 6. **observe** ([`super::observe`]): once, at the end.
//!
//! `timeouts.direct` / `timeouts.forward` bound acquire and send, up to the
//! response head; bodies are streamed, never buffered, and not cut off while they
//! flow.

mod body;
pub(crate) mod headers;
mod pool;
pub(crate) mod upgrade;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tracing::Instrument;

pub(crate) use self::pool::BoundSlot;
use super::error::{ErrorKind, wants_json};
use super::observe::{Outcome, observe};
use super::registry::{Agent, InFlight};
use super::request_id::request_id;
use super::routing::{self, Kind};
use super::{ConnCtx, State, policy};
use crate::config::{Config, TunnelConfig};

/// Proxies one request. `host_tunnel` is the tunnel the Host header named, if any.
pub(crate) async fn handle(
    state: &Arc<State>,
    config: &Arc<Config>,
    ctx: &ConnCtx,
    req: Request<Incoming>,
    kind: Kind,
    host_tunnel: Option<String>,
) -> Response<Body> {
    let id = request_id(&req);
    let span = tracing::info_span!(
        "request",
        request_id = %id.to_str().unwrap_or("-"),
        method = %req.method(),
        path = %req.uri().path(),
        peer = %ctx.peer,
        // Declared empty here and recorded once routing has chosen the tunnel: a
        // field that a span does not declare is silently dropped by `record`.
        tunnel = tracing::field::Empty,
    );
    let started = Instant::now();
    async move {
        let json = wants_json(req.headers());
        match proxy(state, config, ctx, req, kind, host_tunnel, &id).await {
            Ok((resp, agent)) => {
                let status = resp.status();
                observe(
                    &Outcome::Answered {
                        status,
                        agent: &agent.connection_id,
                    },
                    started,
                );
                resp
            }
            Err(e) => {
                let resp = e.response_as(json, &id);
                let status = resp.status();
                observe(
                    &Outcome::Refused {
                        status,
                        error: e.code(),
                    },
                    started,
                );
                resp
            }
        }
    }
    .instrument(span)
    .await
}

async fn proxy(
    state: &Arc<State>,
    config: &Arc<Config>,
    ctx: &ConnCtx,
    mut req: Request<Incoming>,
    kind: Kind,
    host_tunnel: Option<String>,
    id: &HeaderValue,
) -> Result<(Response<Body>, Arc<Agent>), ErrorKind> {
    let tunnel = route(config, &req, kind, host_tunnel)?;
    policy::admit(tunnel, ctx)?;

    let upgrade = upgrade::requested(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let original_host = req.headers().get(header::HOST).cloned();
    *req.uri_mut() = routing::upstream_uri(&req, kind)?;
    *req.version_mut() = http::Version::HTTP_11;
    headers::prepare_request_headers(
        req.headers_mut(),
        ctx,
        id,
        upgrade,
        config.server.trust_forwarded,
    );

    let timeout = match kind {
        Kind::Direct => config.timeouts.direct,
        Kind::Forward => config.timeouts.forward,
    };
    let sent = send(state, ctx, tunnel, req, original_host, upgrade);
    let (resp, bound, in_flight) = match tokio::time::timeout(timeout, sent).await {
        Ok(result) => result?,
        Err(_) => return Err(ErrorKind::Timeout(timeout)),
    };
    let agent = bound.agent.clone();
    let resp = match client_upgrade {
        Some(client) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            upgrade::switch(resp, client, in_flight, &state.shutdown, id)
        }
        _ => {
            if !upgrade {
                ctx.bound.put(bound);
            }
            respond(resp, in_flight, ctx, id)
        }
    };
    Ok((resp, agent))
}

/// Route: the configured tunnel the request is for.
fn route<'c>(
    config: &'c Config,
    req: &Request<Incoming>,
    kind: Kind,
    host_tunnel: Option<String>,
) -> Result<&'c TunnelConfig, ErrorKind> {
    let tunnel = routing::choose_tunnel(config, req, kind, host_tunnel)?;
    // Display, like the span's other fields (`tunnel=demo`, not `tunnel="demo"`).
    tracing::Span::current().record("tunnel", tracing::field::display(&tunnel.id));
    Ok(tunnel)
}

/// Acquire and send: the request on a stream to one of the tunnel's agents, until
/// the response head is back.
async fn send(
    state: &Arc<State>,
    ctx: &ConnCtx,
    tunnel: &TunnelConfig,
    mut req: Request<Incoming>,
    original_host: Option<HeaderValue>,
    upgrade: bool,
) -> Result<(Response<Incoming>, pool::Bound, InFlight), ErrorKind> {
    // One retry: a reused keep-alive stream may have been closed by the upstream
    // just as we picked it; hyper then hands the request back unsent.
    for _ in 0..2 {
        let (mut bound, fresh) = pool::acquire(state, ctx, &tunnel.id, upgrade).await?;
        let rewrite_to = tunnel
            .rewrite_host
            .then(|| bound.agent.upstream.as_deref())
            .flatten();
        headers::set_host(req.headers_mut(), rewrite_to, original_host.as_ref());
        let in_flight = bound.agent.begin_request();
        match bound.sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, bound, in_flight)),
            Err(mut e) => match e.take_message() {
                Some(back) if !fresh => req = back,
                _ => {
                    tracing::warn!(error = %e.into_error(), agent = %bound.agent.connection_id, "upstream request failed");
                    return Err(ErrorKind::AgentLost);
                }
            },
        }
    }
    Err(ErrorKind::AgentLost)
}

/// Respond: the upstream's answer, its body streamed to the client.
fn respond(
    resp: Response<Incoming>,
    in_flight: InFlight,
    ctx: &ConnCtx,
    id: &HeaderValue,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    parts.version = http::Version::HTTP_11;
    headers::prepare_response_headers(&mut parts.headers, id);
    let body = body::TrackedBody::new(body, in_flight, ctx.bound.clone());
    Response::from_parts(parts, Body::new(body))
}
