//! Admission: whether a request may go on, in two steps. [`request::check`]
//! runs first for every public request: is it one the gateway can carry at all
//! (one valid Host, a bounded target, a known body framing, not `CONNECT`).
//! [`admit`] runs after routing: may this client reach this tunnel now, by the
//! tunnel's access policy, in one place that HTTP requests and, later, raw TCP
//! connections share. A refusal is answered by the gateway and never reaches the
//! agent.
//!
//! The checks run cheapest first, as nginx's phases do: the method, the
//! client's address (`deny_ips`, `allow_ips`), its rate (`rate_limit`: before
//! the password, so that guessing one is throttled too), its credentials
//! (`basic_auth`), the declared body size, and last a place among the
//! tunnel's requests in flight (`max_concurrent_requests`), held until the
//! response's last byte.
//!
//! The compiled form of every tunnel's policy ([`Policies`]) is built with the
//! configuration and rebuilt on reload; rate-limit buckets and in-flight counts
//! carry over a reload that keeps them.

mod basic_auth;
pub(crate) mod connections;
mod rate;
pub(crate) mod request;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Method, Request, header};
use ipnet::IpNet;

pub use self::basic_auth::hash_password;
use self::basic_auth::{Credentials, Refusal};
use self::rate::Limiter;
use super::ConnCtx;
use super::error::ErrorKind;
use super::metrics::GaugeGuard;
use super::proxy::headers::X_FORWARDED_FOR;
use crate::config::{Config, TunnelConfig, parse_net};

/// Every tunnel's compiled policy, by tunnel ID.
#[derive(Default)]
pub(crate) struct Policies {
    by_tunnel: HashMap<String, Arc<TunnelPolicy>>,
    /// `server.trusted_proxies`.
    trusted: Vec<IpNet>,
    /// `server.trust_forwarded`: every peer is a trusted proxy, one hop deep.
    trust_all: bool,
}

/// One tunnel's policy, ready to check.
#[derive(Default)]
pub(crate) struct TunnelPolicy {
    credentials: Option<Credentials>,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    rate: Option<Arc<Limiter>>,
    max_in_flight: usize,
    in_flight: Arc<AtomicUsize>,
}

impl Policies {
    /// The policies of `config`, keeping from `previous` the rate-limit buckets
    /// whose limit did not change and every tunnel's count of requests in flight.
    pub(crate) fn build(config: &Config, previous: Option<&Policies>) -> Policies {
        let by_tunnel = config
            .tunnels
            .iter()
            .map(|t| {
                let before = previous.and_then(|p| p.by_tunnel.get(&t.id));
                (t.id.clone(), Arc::new(TunnelPolicy::build(t, before)))
            })
            .collect();
        Policies {
            by_tunnel,
            trusted: nets(&config.server.trusted_proxies),
            trust_all: config.server.trust_forwarded,
        }
    }

    /// Whether `peer` is a proxy whose forwarding headers are believed.
    pub(crate) fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trust_all || self.trusted.iter().any(|net| net.contains(&peer))
    }

    /// The client's address, for policy and limits: the peer's, or, when the
    /// peer is a trusted proxy, the right-most `X-Forwarded-For` address that
    /// is not one of `trusted_proxies` (with `trust_forwarded`, simply the
    /// right-most: the one the proxy added). Addresses left of it are the
    /// client's own claims and never believed.
    pub(crate) fn client_address<B>(&self, ctx: &ConnCtx, req: &Request<B>) -> IpAddr {
        let peer = ctx.peer.ip().to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        for value in req.headers().get_all(&X_FORWARDED_FOR).iter().rev() {
            let Ok(value) = value.to_str() else {
                return client;
            };
            for entry in value.rsplit(',') {
                let Some(ip) = parse_forwarded_address(entry) else {
                    return client;
                };
                client = ip.to_canonical();
                if !self.trusted.iter().any(|net| net.contains(&client)) {
                    return client;
                }
            }
        }
        client
    }

    pub(crate) fn of(&self, tunnel: &str) -> Option<Arc<TunnelPolicy>> {
        self.by_tunnel.get(tunnel).cloned()
    }
}

impl TunnelPolicy {
    fn build(t: &TunnelConfig, before: Option<&Arc<TunnelPolicy>>) -> TunnelPolicy {
        let rate = t.rate_limit.as_ref().and_then(|wanted| {
            let kept = before
                .and_then(|b| b.rate.clone())
                .filter(|r| &r.config == wanted);
            kept.or_else(|| Limiter::new(wanted).map(Arc::new))
        });
        TunnelPolicy {
            credentials: Credentials::of(t),
            allow: nets(&t.allow_ips),
            deny: nets(&t.deny_ips),
            rate,
            max_in_flight: t.max_concurrent_requests,
            in_flight: before.map_or_else(Default::default, |b| b.in_flight.clone()),
        }
    }
}

/// The valid entries of an address list (validation reported the others).
fn nets(list: &[String]) -> Vec<IpNet> {
    list.iter().filter_map(|e| parse_net(e).ok()).collect()
}

/// A request's place among its tunnel's requests in flight, given back when
/// dropped (with the response's last byte), and its count in the metrics.
#[derive(Default)]
pub(crate) struct Admitted {
    slot: Option<Arc<AtomicUsize>>,
    /// `gateway_requests_in_flight` for the tunnel, set by the proxy.
    pub(crate) gauge: Option<GaugeGuard>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(count) = &self.slot {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Admits `req`, from `client`, to `tunnel`, or says why not. The
/// `Authorization` header is removed once basic auth has read it, unless the
/// tunnel forwards it.
pub(crate) async fn admit<B>(
    tunnel: &TunnelConfig,
    policy: &TunnelPolicy,
    client: IpAddr,
    req: &mut Request<B>,
) -> Result<Admitted, ErrorKind> {
    if req.method() == Method::TRACE && !tunnel.allow_trace {
        return Err(ErrorKind::NotAllowed(Method::TRACE));
    }
    let listed = |list: &[IpNet]| list.iter().any(|net| net.contains(&client));
    if listed(&policy.deny) || (!policy.allow.is_empty() && !listed(&policy.allow)) {
        return Err(ErrorKind::Forbidden);
    }
    if let Some(rate) = &policy.rate {
        rate.check(client).map_err(ErrorKind::RateLimited)?;
    }
    if let Some(credentials) = &policy.credentials
        && !credentials.exempts(req.uri().path())
    {
        match credentials.check(req.headers()).await {
            Ok(()) => {}
            Err(Refusal::Missing) => return Err(ErrorKind::Unauthorized(tunnel.id.clone(), false)),
            Err(Refusal::Wrong) => return Err(ErrorKind::Unauthorized(tunnel.id.clone(), true)),
        }
        if !tunnel.forward_authorization {
            req.headers_mut().remove(header::AUTHORIZATION);
        }
    }
    let limit = tunnel.max_request_body;
    if limit != 0
        && let Some(length) = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        && length > limit
    {
        // Refused before anything goes upstream; a chunked body is counted
        // as it streams (see proxy::body).
        return Err(ErrorKind::TooLarge(limit));
    }
    if policy.max_in_flight == 0 {
        return Ok(Admitted::default());
    }
    let count = &policy.in_flight;
    if count.fetch_add(1, Ordering::AcqRel) >= policy.max_in_flight {
        count.fetch_sub(1, Ordering::AcqRel);
        return Err(ErrorKind::Busy(tunnel.id.clone()));
    }
    Ok(Admitted {
        slot: Some(count.clone()),
        gauge: None,
    })
}

/// `192.0.2.7`, `2001:db8::1`, `[2001:db8::1]:443` or `192.0.2.7:80`.
fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses() {
        for (entry, ip) in [
            (" 192.0.2.7", Some("192.0.2.7")),
            ("[2001:db8::1]:443", Some("2001:db8::1")),
            ("192.0.2.7:80", Some("192.0.2.7")),
            ("unknown", None),
            ("_hidden", None),
        ] {
            assert_eq!(
                parse_forwarded_address(entry),
                ip.map(|s| s.parse().unwrap()),
                "{entry}"
            );
        }
    }
}
