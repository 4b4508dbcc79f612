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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::body::Body;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tracing::Instrument;

use self::body::{BodyVerdict, ClientBody, RequestBody};
pub(crate) use self::pool::BoundSlot;
use super::error::{ErrorKind, wants_json};
use super::metrics::{GaugeGuard, RequestMetrics};
use super::observe::{Outcome, Seen, observe};
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
    let span = request_span(state, ctx, &req, &id);
    let started = Instant::now();
    let method = req.method().clone();
    async move {
        let json = wants_json(req.headers());
        let routed = route(config, &req, kind, host_tunnel);
        let tunnel = routed.as_ref().map_or("", |t| t.id.as_str());
        let result = match routed {
            Ok(t) => proxy(state, config, ctx, req, kind, t, &id).await,
            Err(e) => Err(e),
        };
        let seen = Seen {
            metrics: &state.metrics,
            tunnel,
            method: &method,
        };
        match result {
            Ok((resp, agent)) => {
                let status = resp.status();
                observe(
                    &seen,
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
                    &seen,
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

/// The span of one public request: the fields of every line logged for it.
/// `client` is the address access policy judges: the peer, or the client a
/// trusted proxy names in `X-Forwarded-For`.
fn request_span<B>(
    state: &State,
    ctx: &ConnCtx,
    req: &Request<B>,
    id: &HeaderValue,
) -> tracing::Span {
    let client = state.policies.load().client_address(ctx, req);
    tracing::info_span!(
        "request",
        request_id = %id.to_str().unwrap_or("-"),
        client = %client,
        method = %req.method(),
        path = %req.uri().path(),
        peer = %ctx.peer,
        // Declared empty here and recorded once routing has chosen the tunnel: a
        // field that a span does not declare is silently dropped by `record`.
        tunnel = tracing::field::Empty,
    )
}

/// The gateway's answer to a request it refuses before routing it (see
/// [`super::policy::request`]), observed like any other.
pub(crate) fn refuse<B>(
    state: &State,
    ctx: &ConnCtx,
    req: &Request<B>,
    e: &ErrorKind,
) -> Response<Body> {
    let id = request_id(req);
    let _span = request_span(state, ctx, req, &id).entered();
    let resp = e.response(req, &id);
    let seen = Seen {
        metrics: &state.metrics,
        tunnel: "",
        method: req.method(),
    };
    observe(
        &seen,
        &Outcome::Refused {
            status: resp.status(),
            error: e.code(),
        },
        Instant::now(),
    );
    resp
}

async fn proxy(
    state: &Arc<State>,
    config: &Arc<Config>,
    ctx: &ConnCtx,
    mut req: Request<Incoming>,
    kind: Kind,
    tunnel: &TunnelConfig,
    id: &HeaderValue,
) -> Result<(Response<Body>, Arc<Agent>), ErrorKind> {
    let counted = state.metrics.request(&tunnel.id);
    // A tunnel the configuration has has a policy: the two are swapped together.
    let policies = state.policies.load_full();
    let rules = policies.of(&tunnel.id).unwrap_or_default();
    let client = policies.client_address(ctx, &req);
    let mut admitted = policy::admit(tunnel, &rules, client, &mut req).await?;
    admitted.gauge = Some(GaugeGuard::new(counted.in_flight.clone()));

    let upgrade = upgrade::requested(req.headers(), &tunnel.upgrades);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    // Only an HTTP/1.0 request gets this far without a Host, and none is
    // forwarded without one.
    let original_host = req.headers().get(header::HOST).cloned().ok_or_else(|| {
        ErrorKind::BadRequest(
            "The Host header is missing: the gateway forwards no request without one".to_owned(),
        )
    })?;
    *req.uri_mut() = routing::upstream_uri(&req, kind)?;
    *req.version_mut() = http::Version::HTTP_11;
    headers::prepare_request_headers(
        req.headers_mut(),
        ctx,
        id,
        upgrade,
        policies.trusts(ctx.peer.ip()),
        tunnel.forward_underscore_headers,
    );

    let timeout = match kind {
        Kind::Direct => config.timeouts.direct,
        Kind::Forward => config.timeouts.forward,
    };
    // Whether an agent was found: a request whose time runs out while it waits
    // for one is told that no agent is there, not that the upstream was slow.
    let found = AtomicBool::new(false);
    let target = Target {
        state,
        ctx,
        tunnel,
        wait: config.agent_wait(tunnel),
        upgrade,
        body_idle: config.limits.request_body_idle_timeout,
        counted: &counted,
    };
    let sent = send(&target, req, original_host, &found);
    let (resp, bound, in_flight) = match tokio::time::timeout(timeout, sent).await {
        Ok(result) => result?,
        Err(_) if !found.load(Ordering::Relaxed) => {
            return Err(ErrorKind::NoAgent(tunnel.id.clone()));
        }
        Err(_) => return Err(ErrorKind::Timeout(timeout)),
    };
    let agent = bound.agent.clone();
    let resp = match client_upgrade {
        Some(client) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            let open = GaugeGuard::new(state.metrics.upgrade(&tunnel.id));
            upgrade::switch(
                resp,
                client,
                in_flight,
                open,
                &ctx.conn,
                &state.shutdown,
                id,
            )
        }
        // The upstream switched protocols unasked: passing that on would make
        // the connection something the gateway no longer understands.
        None if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            tracing::warn!(agent = %agent.connection_id, "the upstream answered 101 to a request that asked for no upgrade");
            return Err(ErrorKind::BadUpstream(
                "The upstream switched protocols without being asked to".into(),
            ));
        }
        _ => {
            if !upgrade {
                ctx.bound.put(bound);
            }
            let idle = config.limits.response_body_idle_timeout;
            let bytes = counted.response_bytes.clone();
            respond(resp, bytes, in_flight, admitted, idle, ctx, id)
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
///
/// A request that fails before any byte of its response came back is sent once
/// more, to another agent when there is one (or to one that connects within the
/// wait), when that is safe: hyper handed it back unsent (the stream was closed
/// or refused before the upstream saw anything: a keep-alive stream the upstream
/// just closed, an agent that just went away), or it is idempotent and had no
/// body. Never a request whose upstream may have acted on it.
async fn send(
    target: &Target<'_>,
    req: Request<Incoming>,
    original_host: HeaderValue,
    found: &AtomicBool,
) -> Result<(Response<Incoming>, pool::Bound, InFlight), ErrorKind> {
    let replay = Replay::of(&req);
    let verdict = Arc::new(BodyVerdict::default());
    let limit = target.tunnel.max_request_body;
    let mut req = req.map(|body| {
        RequestBody::Client(ClientBody::new(
            body,
            target.counted.request_bytes.clone(),
            limit,
            target.body_idle,
            verdict.clone(),
        ))
    });
    let mut failed_on: Option<String> = None;
    loop {
        let mut bound = pool::acquire(target, failed_on.as_deref()).await?;
        found.store(true, Ordering::Relaxed);
        let rewrite_to = target
            .tunnel
            .rewrite_host
            .then(|| bound.agent.upstream.as_deref())
            .flatten();
        headers::set_host(req.headers_mut(), rewrite_to, &original_host);
        let in_flight = bound.agent.begin_request();
        let mut failed = match bound.sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, bound, in_flight)),
            Err(failed) => failed,
        };
        let again = failed
            .take_message()
            .or_else(|| replay.as_ref().map(Replay::request));
        let error = failed.into_error();
        let agent = &bound.agent.connection_id;
        if verdict.too_large() {
            return Err(ErrorKind::TooLarge(limit));
        }
        if verdict.stalled() {
            return Err(ErrorKind::BodyTimeout);
        }
        if verdict.malformed() {
            tracing::debug!(%error, %agent, "the client's request body could not be read");
            return Err(ErrorKind::BadRequest(
                "The request body is malformed or ended early".to_owned(),
            ));
        }
        match again {
            Some(again) if failed_on.is_none() => {
                tracing::debug!(%error, %agent, "upstream request failed before an answer; sending it again");
                failed_on = Some(agent.clone());
                req = again;
            }
            _ => {
                tracing::warn!(%error, %agent, "upstream request failed");
                return Err(ErrorKind::AgentLost);
            }
        }
    }
}

/// Where a request goes: the tunnel, how long to wait for one of its agents, and
/// whether it asks for an upgrade (then its stream is its own).
pub(crate) struct Target<'a> {
    pub(crate) state: &'a Arc<State>,
    pub(crate) ctx: &'a ConnCtx,
    pub(crate) tunnel: &'a TunnelConfig,
    pub(crate) wait: std::time::Duration,
    pub(crate) upgrade: bool,
    /// `limits.request_body_idle_timeout`.
    pub(crate) body_idle: std::time::Duration,
    /// The tunnel's series in the metrics.
    pub(crate) counted: &'a RequestMetrics,
}

/// The head of a request that may be sent again after its agent failed: an
/// idempotent method (RFC 9110 section 9.2.2) without a body.
struct Replay {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl Replay {
    fn of(req: &Request<Incoming>) -> Option<Replay> {
        use hyper::body::Body as _;
        (req.method().is_idempotent() && req.body().is_end_stream()).then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        })
    }

    fn request(&self) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::Empty);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Respond: the upstream's answer, its body streamed to the client.
fn respond(
    resp: Response<Incoming>,
    bytes: prometheus_client::metrics::counter::Counter,
    in_flight: InFlight,
    admitted: policy::Admitted,
    idle: std::time::Duration,
    ctx: &ConnCtx,
    id: &HeaderValue,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    parts.version = http::Version::HTTP_11;
    headers::prepare_response_headers(&mut parts.headers, id);
    let body = body::TrackedBody::new(
        body,
        bytes,
        in_flight,
        admitted,
        ctx.conn.busy(),
        idle,
        ctx.bound.clone(),
    );
    Response::from_parts(parts, Body::new(body))
}
