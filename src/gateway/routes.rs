//! The gateway's own endpoints: `/health`, `/connections` and the agents' `/ws`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State as AxState;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use serde::Serialize;

use super::State;
use crate::registry::AgentInfo;

pub fn router(state: Arc<State>) -> axum::Router {
    axum::Router::new()
        .route("/health", get(health))
        .route("/connections", get(connections))
        .route(crate::protocol::WS_PATH, get(super::agents::upgrade))
        .with_state(state)
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    uptime_secs: u64,
    agents: usize,
}

async fn health(AxState(state): AxState<Arc<State>>) -> Response {
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

async fn connections(AxState(state): AxState<Arc<State>>) -> Json<Vec<AgentInfo>> {
    Json(state.registry.list())
}
