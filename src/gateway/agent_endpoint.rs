//! `GET /ws`: where agents connect. The WebSocket handshake, the tunnel ID and the
//! token are checked before the upgrade, so a refused agent gets a plain HTTP
//! status and a one-line reason; an accepted one gets its `101`, and its session
//! runs in a task of its own ([`super::agent_session`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State as AxState};
use http::{HeaderValue, Response, StatusCode, header};

use super::agent_session::{self, Accepted};
use super::{ConnCtx, State};
use crate::protocol::REASON_HEADER;
use crate::transport::ws::handshake;

/// Refuses an agent: counted by `code` (and its tunnel, when configured) and
/// logged with the reason.
fn refuse(
    state: &State,
    tunnel: Option<&str>,
    code: &'static str,
    status: StatusCode,
    reason: String,
) -> Response<Body> {
    state.metrics.agent_refused(tunnel, code);
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

/// Refuses the agent, or answers `101` and starts its session.
pub(crate) async fn upgrade(
    AxState(state): AxState<Arc<State>>,
    mut req: Request,
) -> Response<Body> {
    let Some(ctx) = req.extensions().get::<ConnCtx>().cloned() else {
        return refuse(
            &state,
            None,
            "internal",
            StatusCode::INTERNAL_SERVER_ERROR,
            "missing connection context".into(),
        );
    };
    let offer = match handshake::check_request(req.headers()) {
        Ok(offer) => offer,
        Err(e) => {
            return refuse(
                &state,
                None,
                "bad_handshake",
                StatusCode::BAD_REQUEST,
                e.to_string(),
            );
        }
    };
    if state.is_draining() {
        return refuse(
            &state,
            None,
            "draining",
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is shutting down; retry shortly".into(),
        );
    }
    let config = state.config();
    let Some(tunnel) = offer.tunnel.clone() else {
        return refuse(
            &state,
            None,
            "missing_tunnel",
            StatusCode::BAD_REQUEST,
            "missing X-Tunnel-Id header: the agent must name its tunnel".into(),
        );
    };
    let Some(tunnel_cfg) = config.tunnel(&tunnel) else {
        return refuse(
            &state,
            None,
            "unknown_tunnel",
            StatusCode::FORBIDDEN,
            format!("unknown tunnel '{tunnel}': it is not configured on this gateway"),
        );
    };
    let presented = offer.token.as_ref().map(|t| t.expose());
    if !tunnel_cfg.token_matches(presented) {
        let reason = if presented.is_none() {
            format!("tunnel '{tunnel}' requires a token: pass --token or set GATEWAY_AGENT_TOKEN")
        } else {
            format!("wrong token for tunnel '{tunnel}'")
        };
        return refuse(
            &state,
            Some(&tunnel),
            "bad_token",
            StatusCode::UNAUTHORIZED,
            reason,
        );
    }
    let max = tunnel_cfg.max_agents;
    if max != 0 && state.registry.agents_of(&tunnel).len() >= max {
        // 429: the agent retries with its backoff, and gets in once one leaves
        // (or a dead one's heartbeat runs out).
        return refuse(
            &state,
            Some(&tunnel),
            "too_many_agents",
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many agents for tunnel '{tunnel}': it takes {max} at once"),
        );
    }
    ctx.conn.upgraded();
    let accepted = Accepted {
        conn: ctx.conn.clone(),
        tunnel,
        upstream: offer.upstream.clone(),
        peer: ctx.peer,
        heartbeat: config.timeouts.heartbeat,
        grace: config.timeouts.shutdown_grace,
    };
    agent_session::start(&state, accepted, hyper::upgrade::on(&mut req));
    handshake::accept_response(&offer)
}
