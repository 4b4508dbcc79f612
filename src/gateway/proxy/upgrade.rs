//! Upgraded connections (WebSocket and others): the request goes upstream on a
//! fresh stream; once the upstream answers `101`, the client's connection and the
//! stream are joined byte for byte until either side closes or the gateway shuts
//! down.

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Response, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use std::sync::Arc;

use super::super::metrics::GaugeGuard;
use super::super::policy::connections::ConnSlot;
use super::super::registry::InFlight;
use crate::protocol::REQUEST_ID_HEADER;
use crate::shutdown::Shutdown;

/// Whether the request asks for an upgrade the tunnel allows: `upgrade` among
/// the `Connection` tokens, and one `Upgrade` header whose protocols are all in
/// `allowed` (case-insensitively; a version such as `websocket/13` counts as its
/// name). Anything else is proxied as a plain request, its upgrade headers
/// removed as hop-by-hop.
pub(crate) fn requested(headers: &HeaderMap, allowed: &[String]) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let mut upgrades = headers.get_all(header::UPGRADE).iter();
    let (Some(upgrade), None) = (upgrades.next(), upgrades.next()) else {
        return false;
    };
    let Ok(protocols) = upgrade.to_str() else {
        return false;
    };
    connection_upgrade
        && protocols.split(',').all(|p| {
            let name = p.trim().split('/').next().unwrap_or_default();
            allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
        })
}

/// Passes the upstream's `101` on to the client (with the request ID), and joins
/// the two upgraded connections in a task of their own (counted in flight on the
/// agent while it runs).
pub(crate) fn switch(
    mut resp: Response<Incoming>,
    client: OnUpgrade,
    in_flight: InFlight,
    open: GaugeGuard,
    conn: &Arc<ConnSlot>,
    shutdown: &Shutdown,
    id: &HeaderValue,
) -> Response<Body> {
    let upstream = hyper::upgrade::on(&mut resp);
    conn.upgraded();
    // The connection's place is held while the pipe is open.
    let conn = conn.clone();
    let stop = shutdown.clone();
    let joined = async move {
        join(client, upstream, in_flight.upgraded(), stop).await;
        drop((conn, open));
    };
    shutdown.spawn(joined.instrument(tracing::Span::current()));
    let (mut parts, _) = resp.into_parts();
    parts.headers.insert(REQUEST_ID_HEADER, id.clone());
    Response::from_parts(parts, Body::empty())
}

async fn join(client: OnUpgrade, upstream: OnUpgrade, in_flight: InFlight, shutdown: Shutdown) {
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
        _ = shutdown.stopped() => tracing::debug!("upgraded connection closed by shutdown"),
        _ = in_flight.agent().release_upgrades.cancelled() => {
            tracing::debug!("upgraded connection closed: its agent is leaving");
        }
    }
}
