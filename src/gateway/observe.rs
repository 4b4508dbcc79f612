//! Observation: what happened to a request, recorded once, when its answer's
//! head is ready (from the upstream, or the gateway's own refusal): the access
//! log (target `gateway::access`) and the metrics ([`super::metrics`]); the
//! inspector hooks in here too, for HTTP requests and, later, raw TCP
//! connections alike. The body streams on after that; its bytes are counted
//! as they pass (`proxy::body`).

use std::time::Instant;

use http::{Method, StatusCode};

use super::metrics::Metrics;

/// How a request ended.
pub(crate) enum Outcome<'a> {
    /// The upstream answered `status`, through the agent with this connection ID.
    Answered { status: StatusCode, agent: &'a str },
    /// The gateway answered `status` itself, with its error code.
    Refused {
        status: StatusCode,
        error: &'static str,
    },
}

/// What is known of a request when it is observed: its tunnel ("" when none
/// configured matched) and method.
pub(crate) struct Seen<'a> {
    pub(crate) metrics: &'a Metrics,
    pub(crate) tunnel: &'a str,
    pub(crate) method: &'a Method,
}

/// Records the outcome of a request that started at `started`.
pub(crate) fn observe(seen: &Seen<'_>, outcome: &Outcome<'_>, started: Instant) {
    let elapsed = started.elapsed();
    let (status, error, head) = match outcome {
        Outcome::Answered { status, .. } => (*status, None, Some(elapsed)),
        Outcome::Refused { status, error } => (*status, Some(*error), None),
    };
    seen.metrics
        .observe(seen.tunnel, seen.method, status, error, head);
    let ms = elapsed.as_millis() as u64;
    match outcome {
        Outcome::Answered { status, agent } => tracing::info!(
            target: "gateway::access",
            status = status.as_u16(),
            agent = %agent,
            ms,
            "request"
        ),
        Outcome::Refused { status, error } => tracing::info!(
            target: "gateway::access",
            status = status.as_u16(),
            error,
            ms,
            "request failed"
        ),
    }
}
