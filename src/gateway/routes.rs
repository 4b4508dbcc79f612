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

async fn connections(AxState(state): AxState<Arc<State>>, headers: http::HeaderMap) -> Response {
    let config = state.config();
    if let Some(expected) = &config.server.admin_token {
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        if !crate::config::secret_matches(expected, presented) {
            return (
                StatusCode::UNAUTHORIZED,
                [(http::header::WWW_AUTHENTICATE, "Bearer")],
                "/connections requires Authorization: Bearer <server.admin_token>\n",
            )
                .into_response();
        }
    }
    let list: Vec<AgentInfo> = state.registry.list();
    Json(list).into_response()
}
