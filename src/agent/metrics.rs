//! The agent's own metrics (`gateway-agent --metrics 127.0.0.1:9101`): streams,
//! upstream connect failures, bytes, reconnects, and whether each gateway is
//! connected, in the Prometheus text format.
//!
//! They are kept for the whole process (one agent process serves one tunnel,
//! on one or several gateways) and cost a few atomic additions per stream;
//! they are served only when asked for. Labels come from the configuration
//! (the gateway URLs) and fixed sets.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GatewayLabel {
    gateway: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// Every metric of the agent.
pub struct AgentMetrics {
    registry: Registry,
    pub(crate) streams: Counter,
    pub(crate) streams_open: Gauge,
    pub(crate) upstream_failures: Counter,
    bytes: Family<DirectionLabel, Counter>,
    reconnects: Family<GatewayLabel, Counter>,
    connected: Family<GatewayLabel, Gauge>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentMetrics")
    }
}

/// The process's agent metrics.
pub fn metrics() -> &'static AgentMetrics {
    static METRICS: OnceLock<AgentMetrics> = OnceLock::new();
    METRICS.get_or_init(AgentMetrics::new)
}

impl AgentMetrics {
    fn new() -> AgentMetrics {
        let m = AgentMetrics {
            registry: Registry::default(),
            streams: Counter::default(),
            streams_open: Gauge::default(),
            upstream_failures: Counter::default(),
            bytes: Family::default(),
            reconnects: Family::default(),
            connected: Family::default(),
        };
        let mut r = Registry::default();
        r.register(
            "agent_streams",
            "Streams the gateway opened (requests and upgrades)",
            m.streams.clone(),
        );
        r.register(
            "agent_streams_open",
            "Streams open now",
            m.streams_open.clone(),
        );
        r.register(
            "agent_upstream_connect_failures",
            "Streams answered 502 because the upstream refused or did not answer the connection",
            m.upstream_failures.clone(),
        );
        r.register(
            "agent_upstream_bytes",
            "Bytes copied to (up) and from (down) the upstream",
            m.bytes.clone(),
        );
        r.register(
            "agent_reconnects",
            "Sessions to a gateway lost and dialled again",
            m.reconnects.clone(),
        );
        r.register(
            "agent_gateway_connected",
            "1 while the session to this gateway is up",
            m.connected.clone(),
        );
        AgentMetrics { registry: r, ..m }
    }

    /// The byte counters, to the upstream and from it.
    pub(crate) fn byte_counters(&self) -> (Counter, Counter) {
        (
            self.bytes
                .get_or_create_owned(&DirectionLabel { direction: "up" }),
            self.bytes
                .get_or_create_owned(&DirectionLabel { direction: "down" }),
        )
    }

    /// The session to `gateway` is up (`true`) or down.
    pub(crate) fn connected(&self, gateway: &str, up: bool) {
        self.connected
            .get_or_create(&GatewayLabel {
                gateway: gateway.to_owned(),
            })
            .set(i64::from(up));
    }

    /// The session to `gateway` was lost and is dialled again.
    pub(crate) fn reconnecting(&self, gateway: &str) {
        self.reconnects
            .get_or_create(&GatewayLabel {
                gateway: gateway.to_owned(),
            })
            .inc();
    }

    /// The scrape, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).is_err() {
            out = "# the metrics could not be encoded\n".to_owned();
        }
        out
    }
}

/// The upstream connection, its bytes counted as they pass (a stream that
/// ends in a reset has still moved them).
pub(crate) struct Counted<T> {
    inner: T,
    up: Counter,
    down: Counter,
}

impl<T> Counted<T> {
    pub(crate) fn new(inner: T) -> Self {
        let (up, down) = metrics().byte_counters();
        Counted { inner, up, down }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.down.inc_by(read as u64);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &polled {
            self.up.inc_by(*n as u64);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `GET /metrics` on `addr` until the process ends; a port that cannot
/// be bound is logged, and the agent serves its tunnel without it.
pub async fn serve(addr: SocketAddr) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot serve --metrics there; the agent runs on without it");
            return;
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(%bound, "metrics on http://{bound}/metrics");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    http::header::CONTENT_TYPE,
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                )],
                metrics().encode(),
            )
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics listener failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape() {
        let m = AgentMetrics::new();
        m.streams.inc();
        let (_, down) = m.byte_counters();
        down.inc_by(20);
        m.connected("ws://127.0.0.1:3000/ws", true);
        let text = m.encode();
        for line in [
            "agent_streams_total 1",
            "agent_upstream_bytes_total{direction=\"down\"} 20",
            "agent_gateway_connected{gateway=\"ws://127.0.0.1:3000/ws\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
