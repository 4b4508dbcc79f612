//! The gateway's metrics, in the Prometheus text format (`GET /metrics` on the
//! admin listener), kept with `prometheus-client`.
//!
//! Labels come only from the configuration (tunnel IDs) and from fixed sets
//! (method and status classes, error codes, reasons): never from what a client
//! sends, so the number of series is bounded by the configuration. A request
//! for a tunnel that is not configured is counted under `tunnel=""`.
//!
//! Recording is a few atomic additions per request; the series a request
//! touches are looked up once (routing), not per body frame.

mod process;

use std::fmt::Write as _;

use http::{Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::config::Config;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TunnelLabel {
    tunnel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    tunnel: String,
    method: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    tunnel: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

/// Time to the response head, from 1 ms to about 33 s.
fn duration_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 16,
    ))
}

/// Every metric of the gateway, and their registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<TunnelLabel, Histogram, fn() -> Histogram>,
    request_bytes: Family<TunnelLabel, Counter>,
    response_bytes: Family<TunnelLabel, Counter>,
    in_flight: Family<TunnelLabel, Gauge>,
    refusals: Family<ReasonLabels, Counter>,
    upgrades_open: Family<TunnelLabel, Gauge>,
    agents: Family<TunnelLabel, Gauge>,
    agent_connects: Family<TunnelLabel, Counter>,
    agent_disconnects: Family<ReasonLabels, Counter>,
    agent_refusals: Family<ReasonLabels, Counter>,
    pub(crate) connections_open: Gauge,
    connections_refused: Family<ReasonLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// The series one request records into, looked up once its tunnel is known.
#[derive(Clone)]
pub(crate) struct RequestMetrics {
    pub(crate) request_bytes: Counter,
    pub(crate) response_bytes: Counter,
    pub(crate) in_flight: Gauge,
}

impl Metrics {
    /// The metrics of a gateway serving `config`.
    pub fn new(config: &Config) -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            in_flight: Family::default(),
            refusals: Family::default(),
            upgrades_open: Family::default(),
            agents: Family::default(),
            agent_connects: Family::default(),
            agent_disconnects: Family::default(),
            agent_refusals: Family::default(),
            connections_open: Gauge::default(),
            connections_refused: Family::default(),
            reloads: Family::default(),
            registry: Registry::default(),
        };
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: env!("GATEWAY_COMMIT"),
            })
            .set(1);
        let r = &mut registry;
        r.register(
            "gateway_build_info",
            "The running build: 1, with its version and commit",
            build,
        );
        r.register(
            "gateway_requests",
            "Public requests, by tunnel, method and status class (refusals included)",
            m.requests.clone(),
        );
        r.register(
            "gateway_request_duration_seconds",
            "Time from a request's arrival to the upstream's response head",
            m.durations.clone(),
        );
        r.register(
            "gateway_request_bytes",
            "Request body bytes sent upstream",
            m.request_bytes.clone(),
        );
        r.register(
            "gateway_response_bytes",
            "Response body bytes sent to clients",
            m.response_bytes.clone(),
        );
        r.register(
            "gateway_requests_in_flight",
            "Requests admitted and not finished (response bodies included)",
            m.in_flight.clone(),
        );
        r.register(
            "gateway_refusals",
            "Requests the gateway answered itself, by tunnel and error code",
            m.refusals.clone(),
        );
        r.register(
            "gateway_upgrades_open",
            "Upgraded connections (WebSockets) open",
            m.upgrades_open.clone(),
        );
        r.register(
            "gateway_agents_connected",
            "Agents connected, by tunnel",
            m.agents.clone(),
        );
        r.register(
            "gateway_agent_connects",
            "Agent sessions started",
            m.agent_connects.clone(),
        );
        r.register(
            "gateway_agent_disconnects",
            "Agent sessions ended, by reason",
            m.agent_disconnects.clone(),
        );
        r.register(
            "gateway_agent_refusals",
            "Agents refused at the handshake, by reason",
            m.agent_refusals.clone(),
        );
        r.register(
            "gateway_connections_open",
            "Public connections open (agents' included)",
            m.connections_open.clone(),
        );
        r.register(
            "gateway_connections_refused",
            "Connections closed at accept, by reason",
            m.connections_refused.clone(),
        );
        r.register(
            "gateway_reloads",
            "Configuration reloads, by result",
            m.reloads.clone(),
        );
        registry.register_collector(Box::new(process::ProcessCollector));
        let m = Metrics { registry, ..m };
        m.configured(config);
        m
    }

    /// Creates the per-tunnel series of a (new) configuration, at zero, so
    /// that "no agent" is a 0 and not a missing series.
    pub(crate) fn configured(&self, config: &Config) {
        for t in &config.tunnels {
            let label = TunnelLabel {
                tunnel: t.id.clone(),
            };
            let _ = self.agents.get_or_create(&label);
            let _ = self.in_flight.get_or_create(&label);
            let _ = self.upgrades_open.get_or_create(&label);
        }
    }

    /// Drops the gauges of a tunnel a reload removed, so that it does not look
    /// like a configured tunnel without an agent forever. (Its counters stay:
    /// Prometheus reads them as they were.)
    pub(crate) fn forget(&self, tunnel: &str) {
        let label = TunnelLabel {
            tunnel: tunnel.to_owned(),
        };
        self.agents.remove(&label);
        self.in_flight.remove(&label);
        self.upgrades_open.remove(&label);
    }

    /// The series of a request to `tunnel`.
    pub(crate) fn request(&self, tunnel: &str) -> RequestMetrics {
        let label = TunnelLabel {
            tunnel: tunnel.to_owned(),
        };
        RequestMetrics {
            request_bytes: self.request_bytes.get_or_create_owned(&label),
            response_bytes: self.response_bytes.get_or_create_owned(&label),
            in_flight: self.in_flight.get_or_create_owned(&label),
        }
    }

    /// A request ended with `status` (and, when the gateway answered it, its
    /// error code); `head` is the time to the upstream's response head.
    pub(crate) fn observe(
        &self,
        tunnel: &str,
        method: &Method,
        status: StatusCode,
        error: Option<&'static str>,
        head: Option<std::time::Duration>,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                tunnel: tunnel.to_owned(),
                method: method_class(method),
                status: status_class(status),
            })
            .inc();
        if let Some(reason) = error {
            self.refusals
                .get_or_create(&ReasonLabels {
                    tunnel: tunnel.to_owned(),
                    reason,
                })
                .inc();
        }
        if let Some(d) = head {
            self.durations
                .get_or_create(&TunnelLabel {
                    tunnel: tunnel.to_owned(),
                })
                .observe(d.as_secs_f64());
        }
    }

    /// An upgraded connection opened on `tunnel`; closed when the gauge the
    /// caller keeps is decremented.
    pub(crate) fn upgrade(&self, tunnel: &str) -> Gauge {
        self.upgrades_open.get_or_create_owned(&TunnelLabel {
            tunnel: tunnel.to_owned(),
        })
    }

    pub(crate) fn agent_connected(&self, tunnel: &str) {
        let label = TunnelLabel {
            tunnel: tunnel.to_owned(),
        };
        self.agents.get_or_create(&label).inc();
        self.agent_connects.get_or_create(&label).inc();
    }

    /// An agent session of `tunnel` ended; `configured`: the tunnel is still in
    /// the configuration (else its gauge is gone, see [`Metrics::forget`]).
    pub(crate) fn agent_disconnected(&self, tunnel: &str, reason: &'static str, configured: bool) {
        if configured {
            self.agents
                .get_or_create(&TunnelLabel {
                    tunnel: tunnel.to_owned(),
                })
                .dec();
        }
        self.agent_disconnects
            .get_or_create(&ReasonLabels {
                tunnel: tunnel.to_owned(),
                reason,
            })
            .inc();
    }

    /// An agent refused at the handshake; `tunnel` only when it is configured.
    pub(crate) fn agent_refused(&self, tunnel: Option<&str>, reason: &'static str) {
        self.agent_refusals
            .get_or_create(&ReasonLabels {
                tunnel: tunnel.unwrap_or_default().to_owned(),
                reason,
            })
            .inc();
    }

    pub(crate) fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub(crate) fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// The scrape, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# the metrics could not be encoded");
        }
        out
    }
}

/// The `Content-Type` of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

fn method_class(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

fn status_class(s: StatusCode) -> &'static str {
    match s.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// A gauge decremented when dropped (an upgraded connection, a request in
/// flight).
pub(crate) struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub(crate) fn new(gauge: Gauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_has_every_family_and_the_process() {
        let m = Metrics::new(&Config::defaults());
        m.observe(
            "demo",
            &Method::GET,
            StatusCode::OK,
            None,
            Some(std::time::Duration::from_millis(3)),
        );
        m.observe(
            "",
            &Method::from_bytes(b"BREW").unwrap(),
            StatusCode::NOT_FOUND,
            Some("unknown_tunnel"),
            None,
        );
        let text = m.encode();
        for line in [
            "gateway_requests_total{tunnel=\"demo\",method=\"GET\",status=\"2xx\"} 1",
            "gateway_refusals_total{tunnel=\"\",reason=\"unknown_tunnel\"} 1",
            "gateway_agents_connected{tunnel=\"demo\"} 0",
            "gateway_request_duration_seconds_count{tunnel=\"demo\"} 1",
            "process_resident_memory_bytes ",
            "process_open_fds ",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        // A tunnel a reload removed has no gauge left to say it lacks an agent.
        m.forget("demo");
        assert!(!m.encode().contains("gateway_agents_connected{"));
    }
}
