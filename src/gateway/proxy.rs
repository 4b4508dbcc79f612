//! The reverse proxy: a public request, routed to a tunnel, sent as HTTP/1.1 over a
//! yamux stream to one of its agents, the answer streamed back.
//!
//! - **Routing**: Host `<tunnel>.<public_domain>`, then `X-Tunnel-Id` (or, for
//!   `/forward`, the `tunnel` query parameter), then the default tunnel.
//! - **Bound streams**: a stream is an upstream keep-alive connection. It is bound
//!   to the public connection that opened it ([`BoundSlot`]) and reused for that
//!   connection's next requests to the same tunnel, while its agent is available.
//! - **Timeouts**: `timeouts.direct` / `timeouts.forward` bound everything up to the
//!   response head (choosing an agent, opening a stream, sending, waiting). Bodies
//!   are streamed, never buffered, and not cut off while they flow.
//! - **Headers**: hop-by-hop headers are removed both ways; `X-Forwarded-For`,
//!   `-Proto`, `-Host` and `X-Request-Id` are set; Host is kept unless the tunnel
//!   asks for `rewrite_host`.
//! - **Upgrades** (WebSocket and others): forwarded on a fresh stream; after the
//!   upstream's `101` the two sides are joined byte for byte.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use super::error::ErrorKind;
use super::{ConnCtx, State};
use crate::config::Config;
use crate::protocol;
use crate::registry::{Agent, IdleHolder, InFlight};
use crate::shutdown::signalled;

/// Which timeout applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Any path: `timeouts.direct`.
    Direct,
    /// `POST /forward`: `timeouts.forward`, path from `X-Forward-Path` or `?path=`.
    Forward,
}

/// What the Host header says about routing.
pub enum HostRoute {
    /// Not a tunnel host: the gateway's own routes apply.
    Gateway,
    Tunnel(String),
    UnknownTunnel(String),
}

// Header names as constants: a `&str` name is parsed and validated on every use,
// which showed in the profile of small requests.
const FORWARD_PATH_HEADER: HeaderName = HeaderName::from_static("x-forward-path");
const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(protocol::REQUEST_ID_HEADER);
const TUNNEL_HEADER: HeaderName = HeaderName::from_static(protocol::TUNNEL_HEADER);
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The upstream connection bound to one public connection.
#[derive(Default)]
pub struct BoundSlot(Mutex<Option<Bound>>);

struct Bound {
    tunnel: String,
    agent: Arc<Agent>,
    sender: SendRequest<Incoming>,
}

impl BoundSlot {
    fn take_for(&self, tunnel: &str) -> Option<Bound> {
        let mut slot = self.0.lock().ok()?;
        match slot.take() {
            Some(b) if b.tunnel == tunnel && b.agent.is_available() && !b.sender.is_closed() => {
                Some(b)
            }
            // Another tunnel, or an agent that is leaving: drop it (closes the stream).
            _ => None,
        }
    }

    fn put(&self, bound: Bound) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(bound);
        }
    }
}

impl IdleHolder for BoundSlot {
    /// Drops the bound connection if it belongs to an agent that is leaving. Dropping
    /// the sender closes the stream once its response (if any) is complete.
    fn release_if_unavailable(&self) {
        if let Ok(mut slot) = self.0.lock()
            && slot.as_ref().is_some_and(|b| !b.agent.is_available())
        {
            *slot = None;
        }
    }
}

pub fn route_by_host<B>(config: &Config, req: &Request<B>) -> HostRoute {
    let Some(domain) = config.server.public_domain.as_deref() else {
        return HostRoute::Gateway;
    };
    let Some(host) = host_of(req) else {
        return HostRoute::Gateway;
    };
    let host = host.to_ascii_lowercase();
    match host
        .strip_suffix(domain)
        .and_then(|rest| rest.strip_suffix('.'))
    {
        Some(label) if config.tunnel(label).is_some() => HostRoute::Tunnel(label.to_owned()),
        Some(label) => HostRoute::UnknownTunnel(label.to_owned()),
        None => HostRoute::Gateway,
    }
}

/// Host without port, from the Host header or the absolute URI.
fn host_of<B>(req: &Request<B>) -> Option<&str> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())?;
    Some(match raw.find(']') {
        Some(end) => &raw[..=end], // [::1]:3000
        None => raw.split(':').next().unwrap_or(raw),
    })
}

/// A new request ID: 32 hex digits, a random per-process prefix and a counter.
/// Unique without a random draw (a syscall) per request.
fn new_request_id() -> HeaderValue {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&prefix.to_be_bytes());
    raw[8..].copy_from_slice(&n.to_be_bytes());
    let mut text = [0u8; 32];
    match hex::encode_to_slice(raw, &mut text) {
        Ok(()) => HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("-")),
        Err(_) => HeaderValue::from_static("-"),
    }
}

/// The client's `X-Request-Id` when it is sane, else a new one.
pub fn request_id<B>(req: &Request<B>) -> HeaderValue {
    req.headers()
        .get(&REQUEST_ID_HEADER)
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .cloned()
        .unwrap_or_else(new_request_id)
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Proxies one request. `host_tunnel` is the tunnel the Host header named, if any.
pub async fn handle(
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
        let (resp, agent) = match proxy(state, config, ctx, req, kind, host_tunnel, &id).await {
            Ok(ok) => ok,
            Err((kind, wants_json)) => {
                let resp = kind.response_as(wants_json, &id);
                tracing::info!(
                    target: "gateway::access",
                    status = resp.status().as_u16(),
                    error = kind.code(),
                    ms = started.elapsed().as_millis() as u64,
                    "request failed"
                );
                return resp;
            }
        };
        tracing::info!(
            target: "gateway::access",
            status = resp.status().as_u16(),
            agent = %agent.connection_id,
            ms = started.elapsed().as_millis() as u64,
            "request"
        );
        resp
    }
    .instrument(span)
    .await
}

/// The error, and whether the client wants it as JSON.
type Failure = (ErrorKind, bool);

async fn proxy(
    state: &Arc<State>,
    config: &Arc<Config>,
    ctx: &ConnCtx,
    mut req: Request<Incoming>,
    kind: Kind,
    host_tunnel: Option<String>,
    id: &HeaderValue,
) -> Result<(Response<Body>, Arc<Agent>), Failure> {
    let json = super::error::wants_json(req.headers());
    let fail = |e: ErrorKind| (e, json);

    let tunnel = host_tunnel
        .or_else(|| match kind {
            Kind::Forward => query_param(req.uri(), "tunnel"),
            Kind::Direct => None,
        })
        .or_else(|| {
            req.headers()
                .get(&TUNNEL_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_ascii_lowercase())
        })
        .or_else(|| config.default_tunnel().map(str::to_owned));
    let Some(tunnel) = tunnel else {
        return Err(fail(ErrorKind::NoTunnel));
    };
    let Some(tunnel_cfg) = config.tunnel(&tunnel) else {
        return Err(fail(ErrorKind::UnknownTunnel(tunnel)));
    };
    // Display, like the span's other fields (`tunnel=demo`, not `tunnel="demo"`).
    tracing::Span::current().record("tunnel", tracing::field::display(&tunnel));

    let timeout = match kind {
        Kind::Direct => config.timeouts.direct,
        Kind::Forward => config.timeouts.forward,
    };
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    // The upstream request: origin-form URI, headers for the next hop.
    let target = match kind {
        Kind::Direct => req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned()),
        Kind::Forward => forward_target(&req),
    };
    let Ok(uri) = Uri::try_from(target.as_str()) else {
        return Err(fail(ErrorKind::BadRequest(format!(
            "Invalid target path {target:?}: use an absolute path such as /api/items?id=1"
        ))));
    };
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_11;
    let original_host = req.headers().get(header::HOST).cloned();
    prepare_request_headers(
        req.headers_mut(),
        ctx,
        id,
        upgrade,
        config.server.trust_forwarded,
    );

    let rewrite_host = tunnel_cfg.rewrite_host;
    let attempt = async {
        let mut req = req;
        // One retry: a reused keep-alive stream may have been closed by the upstream
        // just as we picked it; hyper then hands the request back unsent.
        for _ in 0..2 {
            let (mut bound, fresh) = acquire(state, ctx, &tunnel, upgrade).await?;
            if rewrite_host
                && let Some(h) = bound.agent.upstream.as_deref().and_then(upstream_authority)
                && let Ok(v) = HeaderValue::from_str(h)
            {
                req.headers_mut().insert(header::HOST, v);
            } else if let Some(h) = &original_host {
                req.headers_mut().insert(header::HOST, h.clone());
            }
            let in_flight = bound.agent.begin_request();
            match bound.sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, bound, in_flight)),
                Err(mut e) => match e.take_message() {
                    Some(back) if !fresh => {
                        req = back;
                        continue;
                    }
                    _ => {
                        tracing::warn!(error = %e.into_error(), agent = %bound.agent.connection_id, "upstream request failed");
                        return Err(ErrorKind::AgentLost);
                    }
                },
            }
        }
        Err(ErrorKind::AgentLost)
    };
    let (mut resp, bound, in_flight) = match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(fail(e)),
        Err(_) => return Err(fail(ErrorKind::Timeout(timeout))),
    };
    let agent = bound.agent.clone();

    if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let shutdown = state.shutdown.subscribe();
            tokio::spawn(
                join_upgraded(client_upgrade, upstream_upgrade, in_flight, shutdown)
                    .instrument(tracing::Span::current()),
            );
        }
        let (parts, _) = resp.into_parts();
        let mut out = Response::from_parts(parts, Body::empty());
        out.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
        return Ok((out, agent));
    }

    if !upgrade {
        ctx.bound.put(bound);
    }
    let (mut parts, body) = resp.into_parts();
    parts.version = http::Version::HTTP_11;
    strip_headers(&mut parts.headers, &[]);
    parts.headers.insert(REQUEST_ID_HEADER, id.clone());
    let body = TrackedBody {
        inner: body,
        _in_flight: in_flight,
        slot: ctx.bound.clone(),
    };
    Ok((Response::from_parts(parts, Body::new(body)), agent))
}

/// A sender to the tunnel's upstream: the one bound to this connection when it can
/// be reused, else a new stream on the least busy agent. `true` when new.
async fn acquire(
    state: &Arc<State>,
    ctx: &ConnCtx,
    tunnel: &str,
    upgrade: bool,
) -> Result<(Bound, bool), ErrorKind> {
    if !upgrade
        && let Some(mut bound) = ctx.bound.take_for(tunnel)
        && bound.sender.ready().await.is_ok()
    {
        return Ok((bound, false));
    }
    let agent = state
        .registry
        .select(tunnel)
        .ok_or_else(|| ErrorKind::NoAgent(tunnel.to_owned()))?;
    let mut stream = agent.opener.open().await.map_err(|e| {
        tracing::warn!(error = %e, agent = %agent.connection_id, "cannot open a stream");
        ErrorKind::AgentLost
    })?;
    if !upgrade {
        // Plain HTTP needs no half-close; an upgraded connection may (raw
        // protocols signal the end of their input with it).
        stream.abort_unfinished();
    }
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "upstream handshake failed");
            ErrorKind::AgentLost
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    if !upgrade {
        // This stream will be kept in the connection's slot between requests: when
        // the agent drains, the slot must let go of it (see `Agent::set_draining`).
        let slot: Arc<dyn IdleHolder> = ctx.bound.clone();
        agent.watch_idle(Arc::downgrade(&slot));
    }
    Ok((
        Bound {
            tunnel: tunnel.to_owned(),
            agent,
            sender,
        },
        true,
    ))
}

fn forward_target(req: &Request<Incoming>) -> String {
    let from_header = req
        .headers()
        .get(&FORWARD_PATH_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let path = from_header
        .or_else(|| query_param(req.uri(), "path"))
        .unwrap_or_else(|| "/".to_owned());
    if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes the hop-by-hop headers (those of [`HOP_BY_HOP`], `Keep-Alive`,
/// `Proxy-Connection`, and any that `Connection` names) and those of `also`.
///
/// One pass finds which are present: most messages carry none or one of them, and
/// removing a name that is absent costs a hash lookup all the same (with ~15 such
/// names, that was ~3 % of the gateway's CPU on small requests).
fn strip_headers(headers: &mut HeaderMap, also: &[HeaderName]) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        if name == header::CONNECTION
            && let Ok(v) = value.to_str()
        {
            for token in v.split(',') {
                if let Ok(named) = HeaderName::from_bytes(token.trim().as_bytes()) {
                    doomed.push(named);
                }
            }
        }
        let hop = HOP_BY_HOP.contains(name)
            || name == KEEP_ALIVE
            || name == PROXY_CONNECTION
            || also.contains(name);
        if hop && !doomed.contains(name) {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        headers.remove(name);
    }
}

fn prepare_request_headers(
    headers: &mut HeaderMap,
    ctx: &ConnCtx,
    id: &HeaderValue,
    upgrade: bool,
    trust_forwarded: bool,
) {
    let upgrade_value = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    // Ours to set, and the client's claims about earlier hops, which cannot be
    // checked (unless the operator says they come from a trusted proxy).
    let removed = [
        TUNNEL_HEADER,
        FORWARD_PATH_HEADER,
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        X_FORWARDED_HOST,
        header::FORWARDED,
    ];
    strip_headers(
        headers,
        if trust_forwarded {
            &removed[..2]
        } else {
            &removed
        },
    );
    if let Some(u) = upgrade_value {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", ctx.peer.ip())).ok(),
        None => Some(ctx.peer_ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !headers.contains_key(&X_FORWARDED_HOST)
        && let Some(h) = headers.get(header::HOST).cloned()
    {
        headers.insert(X_FORWARDED_HOST, h);
    }
    headers.insert(REQUEST_ID_HEADER, id.clone());
}

/// `host:port` of an upstream URL such as `http://127.0.0.1:8000`.
fn upstream_authority(upstream: &str) -> Option<&str> {
    let rest = upstream.split_once("://").map_or(upstream, |(_, r)| r);
    rest.split('/').next().filter(|s| !s.is_empty())
}

async fn join_upgraded(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _in_flight: InFlight,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        res = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match res {
            Ok((up, down)) => tracing::debug!(bytes_up = up, bytes_down = down, "upgraded connection closed"),
            Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
        },
        _ = signalled(&mut shutdown) => tracing::debug!("upgraded connection closed by shutdown"),
    }
}

/// The upstream's response body, passed through frame by frame. While it lives the
/// request counts as in flight on its agent; when it ends, a bound stream to an
/// agent that has started draining is released, so the agent can finish.
struct TrackedBody {
    inner: Incoming,
    _in_flight: InFlight,
    slot: Arc<BoundSlot>,
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.slot.release_if_unavailable();
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
