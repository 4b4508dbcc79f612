//! The headers of a proxied request and of its response: hop-by-hop headers
//! removed both ways; `X-Forwarded-For`, `-Proto`, `-Host` and `X-Request-Id` set
//! for the upstream; Host kept, or rewritten to the upstream's address for tunnels
//! that ask for `rewrite_host`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::super::ConnCtx;
use crate::protocol::{FORWARD_PATH_HEADER, REQUEST_ID_HEADER, TUNNEL_HEADER};

// Header names as constants: a `&str` name is parsed and validated on every use,
// which showed in the profile of small requests.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// The settings of an `h2c` upgrade: never forwarded, since that upgrade is not.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers that `Connection` cannot make hop-by-hop: the message's framing and
/// Host, and those the gateway sets for the upstream. Naming them there would
/// otherwise let a client remove what the upstream relies on.
const PROTECTED: &[&str] = &[
    "host",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-request-id",
];

/// Removes the hop-by-hop headers (those of [`HOP_BY_HOP`], `Keep-Alive`,
/// `Proxy-Connection`, and any that `Connection` names but [`PROTECTED`]), those
/// of `also`, and with `drop_underscores` those whose names contain `_`.
///
/// One pass finds which are present: most messages carry none or one of them, and
/// removing a name that is absent costs a hash lookup all the same (with ~15 such
/// names, that was ~3 % of the gateway's CPU on small requests).
pub(crate) fn strip_headers(headers: &mut HeaderMap, also: &[HeaderName], drop_underscores: bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        if name == header::CONNECTION
            && let Ok(v) = value.to_str()
        {
            for token in v.split(',') {
                if let Ok(named) = HeaderName::from_bytes(token.trim().as_bytes())
                    && !PROTECTED.contains(&named.as_str())
                {
                    doomed.push(named);
                }
            }
        }
        let hop = HOP_BY_HOP.contains(name)
            || name == KEEP_ALIVE
            || name == PROXY_CONNECTION
            || name == HTTP2_SETTINGS
            || also.contains(name)
            || (drop_underscores && name.as_str().contains('_'));
        if hop && !doomed.contains(name) {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        headers.remove(name);
    }
}

/// The request headers for the upstream: hop-by-hop and our own headers removed
/// (and the client's forwarding claims, unless `trust_forwarded`; and names with
/// `_`, unless `forward_underscores`), the upgrade kept when one is asked for, the
/// forwarding headers and the request ID set.
pub(crate) fn prepare_request_headers(
    headers: &mut HeaderMap,
    ctx: &ConnCtx,
    id: &HeaderValue,
    upgrade: bool,
    trust_forwarded: bool,
    forward_underscores: bool,
) {
    let upgrade_value = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    // Ours to set, and the client's claims about earlier hops, which cannot be
    // checked (unless the operator says they come from a trusted proxy).
    let removed = [
        TUNNEL_HEADER,
        FORWARD_PATH_HEADER,
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        X_FORWARDED_HOST,
        header::FORWARDED,
    ];
    strip_headers(
        headers,
        if trust_forwarded {
            &removed[..2]
        } else {
            &removed
        },
        !forward_underscores,
    );
    if let Some(u) = upgrade_value {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", ctx.peer.ip())).ok(),
        None => Some(ctx.peer_ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !headers.contains_key(&X_FORWARDED_HOST)
        && let Some(h) = headers.get(header::HOST).cloned()
    {
        headers.insert(X_FORWARDED_HOST, h);
    }
    headers.insert(REQUEST_ID_HEADER, id.clone());
}

/// Sets the Host the upstream sees: the agent's upstream address when the tunnel
/// rewrites it (and the agent named one), else the client's.
pub(crate) fn set_host(headers: &mut HeaderMap, rewrite_to: Option<&str>, original: &HeaderValue) {
    let host = rewrite_to
        .and_then(upstream_authority)
        .and_then(|h| HeaderValue::from_str(h).ok())
        .unwrap_or_else(|| original.clone());
    headers.insert(header::HOST, host);
}

/// `host:port` of an upstream URL such as `http://127.0.0.1:8000`.
fn upstream_authority(upstream: &str) -> Option<&str> {
    let rest = upstream.split_once("://").map_or(upstream, |(_, r)| r);
    rest.split('/').next().filter(|s| !s.is_empty())
}

/// The response headers for the client: hop-by-hop removed, the request ID set.
pub(crate) fn prepare_response_headers(headers: &mut HeaderMap, id: &HeaderValue) {
    strip_headers(headers, &[], false);
    headers.insert(REQUEST_ID_HEADER, id.clone());
}
