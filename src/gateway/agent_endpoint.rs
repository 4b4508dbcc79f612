//! `GET /ws`: where agents connect. The tunnel ID and token are checked before the
//! upgrade, so a refused agent gets a plain HTTP status and a one-line reason; an
//! accepted one gets a connection ID, a hello, and a yamux session that lives until
//! either end closes it or the gateway shuts down.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State as AxState};
use http::{HeaderValue, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use super::{ConnCtx, State};
use crate::protocol::{self, Hello, REASON_HEADER, SUBPROTOCOL, TUNNEL_HEADER, UPSTREAM_HEADER};
use crate::registry::Agent;
use crate::shutdown::signalled;
use crate::transport::{Opener, Role, Session, SessionEnd, Signals, WsIo, close_code, ws_io};

fn refuse(status: StatusCode, reason: String) -> Response<Body> {
    tracing::warn!(status = status.as_u16(), %reason, "agent refused");
    let mut resp = Response::new(Body::from(format!("{reason}\n")));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&reason) {
        resp.headers_mut().insert(REASON_HEADER, v);
    }
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn header_str(req: &Request, name: impl header::AsHeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

pub(crate) async fn upgrade(
    AxState(state): AxState<Arc<State>>,
    mut req: Request,
) -> Response<Body> {
    let Some(ctx) = req.extensions().get::<ConnCtx>().cloned() else {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "missing connection context".into(),
        );
    };
    let is_ws = has_token(header_str(&req, header::CONNECTION), "upgrade")
        && has_token(header_str(&req, header::UPGRADE), "websocket");
    let key = header_str(&req, header::SEC_WEBSOCKET_KEY).map(str::to_owned);
    let (false, Some(key)) = (!is_ws, key) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade: /ws is where gateway agents connect".into(),
        );
    };
    if header_str(&req, header::SEC_WEBSOCKET_VERSION) != Some("13") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "unsupported WebSocket version: expected Sec-WebSocket-Version 13".into(),
        );
    }
    let offered = header_str(&req, header::SEC_WEBSOCKET_PROTOCOL);
    if offered.is_some() && !has_token(offered, SUBPROTOCOL) {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "unsupported tunnel protocol {:?}: this gateway speaks {SUBPROTOCOL}; upgrade the agent or the gateway",
                offered.unwrap_or_default()
            ),
        );
    }
    let echo_protocol = offered.is_some();
    if state.is_draining() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is shutting down; retry shortly".into(),
        );
    }
    let config = state.config();
    let Some(tunnel) = header_str(&req, TUNNEL_HEADER).map(|s| s.trim().to_owned()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "missing X-Tunnel-Id header: the agent must name its tunnel".into(),
        );
    };
    let Some(tunnel_cfg) = config.tunnel(&tunnel) else {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("unknown tunnel '{tunnel}': it is not configured on this gateway"),
        );
    };
    let presented = crate::auth::bearer_token(req.headers());
    if !tunnel_cfg.token_matches(presented) {
        let reason = if presented.is_none() {
            format!("tunnel '{tunnel}' requires a token: pass --token or set GATEWAY_AGENT_TOKEN")
        } else {
            format!("wrong token for tunnel '{tunnel}'")
        };
        return refuse(StatusCode::UNAUTHORIZED, reason);
    }
    let upstream = header_str(&req, UPSTREAM_HEADER).map(|s| {
        s.chars()
            .take(protocol::MAX_UPSTREAM_NAME)
            .collect::<String>()
    });

    let on_upgrade = hyper::upgrade::on(&mut req);
    let connection_id = uuid::Uuid::new_v4().simple().to_string();
    let span = tracing::info_span!("agent", %tunnel, conn_id = %connection_id, peer = %ctx.peer);
    let heartbeat = config.timeouts.heartbeat;
    let grace = config.timeouts.shutdown_grace;
    let session_state = state.clone();
    let mut shutdown = state.shutdown.subscribe();
    // Held until the session has closed its WebSocket: `stop` below drops its own
    // receiver as soon as draining starts, and the daemon exits once no receiver
    // is left, which would cut the close frame off.
    let drain_guard = state.shutdown.subscribe();
    let hello = Hello::new(&connection_id, &tunnel, heartbeat);
    tokio::spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(error = %e, "agent upgrade failed");
                    return;
                }
            };
            let signals = Arc::new(Signals::default());
            let mut io = WsIo::new(
                TokioIo::new(upgraded),
                Role::Server,
                Some(heartbeat),
                close_code::AWAY,
                signals.clone(),
            );
            let hello_text = hello.to_text();
            // Registered before the hello goes out, so that a request sent as soon
            // as the agent sees its hello finds it; streams asked for in between
            // wait in the queue until the session runs.
            let (opener, queue) = Opener::channel();
            let agent = Arc::new(Agent::new(
                connection_id.clone(),
                tunnel,
                ctx.peer,
                upstream,
                opener,
                signals.clone(),
            ));
            session_state.registry.insert(agent.clone());
            if let Err(e) = io.send_text(&hello_text).await {
                session_state.registry.remove(&connection_id);
                tracing::warn!(error = %e, "cannot send hello to agent");
                return;
            }
            let session = Session::client_with(io, signals.clone(), queue);
            tracing::info!(upstream = agent.upstream.as_deref().unwrap_or("-"), "agent connected");

            // The agent announces its departure: route nothing new to it.
            let watch_drain = {
                let agent = agent.clone();
                async move {
                    loop {
                        let notified = agent.signals.drained.notified();
                        if agent.signals.drain_received() {
                            break;
                        }
                        notified.await;
                    }
                    agent.set_draining();
                    tracing::info!("agent is draining");
                    std::future::pending::<()>().await
                }
            };
            let stop = {
                let agent = agent.clone();
                async move {
                    tokio::select! {
                        _ = signalled(&mut shutdown) => {}
                        _ = agent.evicted.notified() => tracing::info!("tunnel revoked by reload; closing agent session"),
                        _ = watch_drain => {}
                    }
                }
            };
            let end = session.run(stop, grace).await;
            agent.set_draining();
            session_state.registry.remove(&connection_id);
            match end {
                SessionEnd::Closed => tracing::info!("agent disconnected"),
                SessionEnd::Drained { unfinished_streams } => {
                    tracing::info!(unfinished_streams, "agent session closed")
                }
                SessionEnd::Failed(reason) => tracing::warn!(%reason, "agent session failed"),
            }
            drop(drain_guard);
        }
        .instrument(span),
    );

    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&ws_io::accept_key(&key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if echo_protocol {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    resp
}
