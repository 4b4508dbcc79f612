//! The gateway's own read-only endpoints: `/health` for load balancers and
//! systemd checks, `/connections` (the connected agents, behind the admin token
//! when one is set).

use std::sync::Arc;

use axum::Json;
use axum::extract::State as AxState;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

use super::State;
use crate::auth::{bearer_token, secret_matches};

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    uptime_secs: u64,
    agents: usize,
}

/// `GET /health`: 200 while serving, 503 while draining.
pub(crate) async fn health(AxState(state): AxState<Arc<State>>) -> Response {
    let draining = state.is_draining();
    let body = Health {
        status: if draining { "draining" } else { "ok" },
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: state.started.elapsed().as_secs(),
        agents: state.registry.len(),
    };
    let code = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body)).into_response()
}

/// `GET /connections`: the connected agents, oldest first.
pub(crate) async fn connections(
    AxState(state): AxState<Arc<State>>,
    headers: http::HeaderMap,
) -> Response {
    let config = state.config();
    if let Some(expected) = &config.server.admin_token
        && !secret_matches(expected, bearer_token(&headers))
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(http::header::WWW_AUTHENTICATE, "Bearer")],
            "/connections requires Authorization: Bearer <server.admin_token>\n",
        )
            .into_response();
    }
    Json(state.registry.list()).into_response()
}
