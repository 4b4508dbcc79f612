//! One table: which requests the gateway answers itself, and which it proxies.
//!
//! In order: a Host naming a tunnel (`<tunnel>.<public_domain>`) is always
//! proxied; the paths of [`OWN`] go to the gateway's own endpoints; `POST
//! /forward` is proxied with the forward timeout; everything else is proxied with
//! the direct timeout.

use std::sync::Arc;

use axum::body::Body;
use axum::routing::{MethodRouter, get};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use tower::ServiceExt;
use tracing::Instrument;

use super::error::ErrorKind;
use super::request_id::request_id;
use super::routing::{self, HostRoute, Kind};
use super::{ConnCtx, State, admin, agent_endpoint, policy, proxy};
use crate::protocol::{REQUEST_ID_HEADER, WS_PATH};

/// The gateway's own endpoints on the public listener. The router is built from
/// this list, and [`dispatch`] sends exactly these paths to it.
const OWN: [(&str, Own); 4] = [
    ("/health", Own::Health),
    ("/health/live", Own::Live),
    ("/connections", Own::Connections),
    (WS_PATH, Own::Agents),
];

#[derive(Clone, Copy)]
enum Own {
    Health,
    Live,
    Connections,
    Agents,
}

impl Own {
    fn handler(self) -> MethodRouter<Arc<State>> {
        match self {
            Own::Health => get(admin::health),
            Own::Live => get(admin::live),
            Own::Connections => get(admin::connections),
            Own::Agents => get(agent_endpoint::upgrade),
        }
    }
}

/// The router of the gateway's own endpoints.
pub(crate) fn router(state: Arc<State>) -> axum::Router {
    OWN.iter()
        .fold(axum::Router::new(), |router, (path, own)| {
            router.route(path, own.handler())
        })
        .with_state(state)
}

/// Serves one request of a public connection.
pub(crate) async fn dispatch(
    state: &Arc<State>,
    router: &axum::Router,
    ctx: ConnCtx,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let config = state.config();
    if let Err(e) = policy::request::check(&mut req, &config.limits) {
        return proxy::refuse(state, &ctx, &req, &e);
    }
    let kind = match routing::route_by_host(&config, &req) {
        HostRoute::Tunnel(tunnel) => {
            return proxy::handle(state, &config, &ctx, req, Kind::Direct, Some(tunnel)).await;
        }
        HostRoute::UnknownTunnel(name) => {
            return proxy::refuse(state, &ctx, &req, &ErrorKind::UnknownTunnel(name));
        }
        HostRoute::Gateway => match req.uri().path() {
            path if OWN.iter().any(|(own, _)| *own == path) => {
                return own_endpoint(router, ctx, req).await;
            }
            "/forward" if req.method() == Method::POST => Kind::Forward,
            _ => Kind::Direct,
        },
    };
    proxy::handle(state, &config, &ctx, req, kind, None).await
}

async fn own_endpoint(
    router: &axum::Router,
    ctx: ConnCtx,
    req: Request<Incoming>,
) -> Response<Body> {
    let id = request_id(&req);
    let mut req = req.map(Body::new);
    let span = tracing::debug_span!("api", path = %req.uri().path(), peer = %ctx.peer);
    req.extensions_mut().insert(ctx);
    let mut resp = match router.clone().oneshot(req).instrument(span).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    resp.headers_mut().insert(REQUEST_ID_HEADER, id);
    resp
}
