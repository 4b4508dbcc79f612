//! The admin listener (`[admin]`, 127.0.0.1:3001 by default): `/metrics`,
//! `/health` and `/connections`, apart from the public traffic.
//!
//! Open to this machine (a loopback peer that does not say it forwards someone
//! else's request); from elsewhere, `Authorization: Bearer <server.admin_token>`
//! is needed, and without an admin token nothing is served to other machines.
//! Every page answers at its path under any prefix a reverse proxy adds
//! (`/gateway/metrics` is `/metrics`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State as AxState};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use tokio::net::TcpListener;

use super::super::State;
use super::{from_this_machine, health, live};
use crate::auth::{bearer_token, secret_matches};
use crate::gateway::metrics::CONTENT_TYPE;
use crate::shutdown::Shutdown;

/// Serves the admin pages on `listener` until `shutdown` fires.
pub(crate) async fn serve(state: Arc<State>, listener: TcpListener, shutdown: Shutdown) {
    let app = axum::Router::new()
        .fallback(page)
        .with_state(state)
        .into_make_service_with_connect_info::<SocketAddr>();
    let stop = shutdown.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.stopped().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the admin listener failed");
    }
}

/// Which page a path asks for, whatever prefix comes before it.
fn page_of(path: &str) -> Option<&'static str> {
    let last = path.trim_end_matches('/').rsplit('/').next()?;
    ["metrics", "health", "live", "connections"]
        .into_iter()
        .find(|p| *p == last)
}

async fn page(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let Some(which) = page_of(req.uri().path()) else {
        return (
            StatusCode::NOT_FOUND,
            "no such page: try /metrics, /health or /connections\n",
        )
            .into_response();
    };
    if which == "health" {
        return health(AxState(state)).await;
    }
    if which == "live" {
        return live(AxState(state)).await;
    }
    let local = from_this_machine(peer, req.headers());
    let config = state.config();
    match &config.server.admin_token {
        _ if local => {}
        Some(expected) if secret_matches(expected, bearer_token(req.headers())) => {}
        Some(_) => {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "the admin pages need Authorization: Bearer <server.admin_token> from other machines\n",
            )
                .into_response();
        }
        None => {
            return (
                StatusCode::FORBIDDEN,
                "the admin pages are open to this machine only: set server.admin_token to reach them from elsewhere\n",
            )
                .into_response();
        }
    }
    match which {
        "metrics" => {
            let mut resp = state.metrics.encode().into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            resp
        }
        _ => Json(state.registry.list()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_under_a_prefix() {
        assert_eq!(page_of("/metrics"), Some("metrics"));
        assert_eq!(page_of("/gateway/admin/metrics/"), Some("metrics"));
        assert_eq!(page_of("/health"), Some("health"));
        assert_eq!(page_of("/"), None);
        assert_eq!(page_of("/metricsx"), None);
    }
}
