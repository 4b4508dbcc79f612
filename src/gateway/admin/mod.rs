//! The gateway's own read-only endpoints: `/health` for load balancers and
//! systemd checks, `/connections` (the connected agents: behind the admin token
//! when one is set, else only for this machine).

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::State as AxState;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

pub(crate) mod listener;

use super::{ConnCtx, State};
use crate::auth::{bearer_token, secret_matches};

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    uptime_secs: u64,
    agents: usize,
}

/// `GET /health`, the readiness a load balancer checks: 200 `ok` while
/// serving; 503 `starting` until the agents are back after a start (see
/// [`State::is_ready`]), and 503 `draining` once stopping.
pub(crate) async fn health(AxState(state): AxState<Arc<State>>) -> Response {
    let status = if state.is_draining() {
        "draining"
    } else if !state.is_ready() {
        "starting"
    } else {
        "ok"
    };
    let body = Health {
        status,
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: state.started.elapsed().as_secs(),
        agents: state.registry.len(),
    };
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// `GET /health/live`: the liveness a supervisor checks: 200 while the process
/// answers at all, starting and draining included (restarting a node that is
/// waiting for its agents would not bring them back sooner).
pub(crate) async fn live(AxState(state): AxState<Arc<State>>) -> Response {
    let body = serde_json::json!({
        "status": "alive",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
    });
    (StatusCode::OK, Json(body)).into_response()
}

/// `GET /connections`: the connected agents, oldest first. With
/// `server.admin_token`, for whoever presents it; without, for this machine
/// only (see [`from_this_machine`]).
pub(crate) async fn connections(
    AxState(state): AxState<Arc<State>>,
    Extension(client): Extension<ConnCtx>,
    headers: http::HeaderMap,
) -> Response {
    let config = state.config();
    match &config.server.admin_token {
        Some(expected) if !secret_matches(expected, bearer_token(&headers)) => {
            return (
                StatusCode::UNAUTHORIZED,
                [(http::header::WWW_AUTHENTICATE, "Bearer")],
                "/connections requires Authorization: Bearer <server.admin_token>\n",
            )
                .into_response();
        }
        None if !from_this_machine(client.peer, &headers) => {
            return (
                StatusCode::FORBIDDEN,
                "/connections is only open to this machine: set server.admin_token to reach it from elsewhere\n",
            )
                .into_response();
        }
        _ => {}
    }
    Json(state.registry.list()).into_response()
}

/// Whether a request comes from this machine: a loopback peer that is not a
/// proxy passing on someone else's request (it would say so in
/// `X-Forwarded-For` or `Forwarded`, whether or not the gateway trusts those).
fn from_this_machine(peer: std::net::SocketAddr, headers: &http::HeaderMap) -> bool {
    peer.ip().to_canonical().is_loopback()
        && !headers.contains_key("x-forwarded-for")
        && !headers.contains_key(http::header::FORWARDED)
}
