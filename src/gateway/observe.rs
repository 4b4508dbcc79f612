//! Observation: what happened to a request, recorded once, when its answer's
//! head is ready (from the upstream, or the gateway's own refusal): the access
//! log (target `gateway::access`) today; metrics and the inspector hook in here,
//! for HTTP requests and, later, raw TCP connections alike. The body streams on
//! after that; what happens to it is not observed yet.

use std::time::Instant;

use http::StatusCode;

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

/// Records the outcome of a request that started at `started`.
pub(crate) fn observe(outcome: &Outcome<'_>, started: Instant) {
    let ms = started.elapsed().as_millis() as u64;
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
