//! Which tunnel a public request is for, and what to ask of its upstream.
//!
//! A request reaches a tunnel by, in order: its Host (`<tunnel>.<public_domain>`
//! when a public domain is configured), for `POST /forward` the `tunnel` query
//! parameter, the `X-Tunnel-Id` header, and the default tunnel.

use http::{Method, Request, Uri, header};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use super::error::ErrorKind;
use crate::config::{Config, TunnelConfig};
use crate::protocol::{FORWARD_PATH_HEADER, TUNNEL_HEADER};

/// How a request reached the proxy, which decides its timeout and its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Any path: `timeouts.direct`.
    Direct,
    /// `POST /forward`: `timeouts.forward`, path from `X-Forward-Path` or `?path=`.
    Forward,
}

/// What the Host header says about routing.
pub(crate) enum HostRoute {
    /// Not a tunnel host: the gateway's own routes apply.
    Gateway,
    /// A configured tunnel.
    Tunnel(String),
    /// Under the public domain, but no such tunnel.
    UnknownTunnel(String),
}

/// The tunnel the Host header names, if it is under `server.public_domain`.
pub(crate) fn route_by_host<B>(config: &Config, req: &Request<B>) -> HostRoute {
    let Some(domain) = config.server.public_domain.as_deref() else {
        return HostRoute::Gateway;
    };
    let Some(host) = host_of(req) else {
        return HostRoute::Gateway;
    };
    // Letter case and the root's trailing dot do not change the name.
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    let label = host
        .len()
        .checked_sub(domain.len())
        .filter(|&at| {
            host.get(at..)
                .is_some_and(|d| d.eq_ignore_ascii_case(domain))
        })
        .and_then(|at| host[..at].strip_suffix('.'));
    match label {
        Some(label) if config.tunnel(label).is_some() => HostRoute::Tunnel(label.to_owned()),
        Some(label) => HostRoute::UnknownTunnel(label.to_owned()),
        None => HostRoute::Gateway,
    }
}

/// Host without port, from the Host header or the absolute URI.
fn host_of<B>(req: &Request<B>) -> Option<&str> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())?;
    Some(match raw.find(']') {
        Some(end) => &raw[..=end], // [::1]:3000
        None => raw.split(':').next().unwrap_or(raw),
    })
}

/// The tunnel a request is for: the one its Host named (`host_tunnel`), else (for
/// `/forward`) the `tunnel` query parameter, else `X-Tunnel-Id`, else the default.
pub(crate) fn choose_tunnel<'c, B>(
    config: &'c Config,
    req: &Request<B>,
    kind: Kind,
    host_tunnel: Option<String>,
) -> Result<&'c TunnelConfig, ErrorKind> {
    let tunnel = host_tunnel
        .or_else(|| match kind {
            Kind::Forward => query_param(req.uri(), "tunnel"),
            Kind::Direct => None,
        })
        .or_else(|| {
            req.headers()
                .get(&TUNNEL_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_ascii_lowercase())
        })
        .or_else(|| config.default_tunnel().map(str::to_owned));
    let Some(tunnel) = tunnel else {
        return Err(ErrorKind::NoTunnel);
    };
    config
        .tunnel(&tunnel)
        .ok_or(ErrorKind::UnknownTunnel(tunnel))
}

/// The origin-form URI to request upstream: the request's own path and query, or
/// for `/forward` the path it names. `*` is a target for `OPTIONS` only.
pub(crate) fn upstream_uri<B>(req: &Request<B>, kind: Kind) -> Result<Uri, ErrorKind> {
    let target = match kind {
        Kind::Direct => req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned()),
        Kind::Forward => forward_target(req),
    };
    let asterisk = target == "*" && req.method() == Method::OPTIONS;
    match Uri::try_from(target.as_str()) {
        Ok(uri) if uri.path().starts_with('/') || asterisk => Ok(uri),
        _ => Err(ErrorKind::BadRequest(format!(
            "Invalid target path {target:?}: use an absolute path such as /api/items?id=1"
        ))),
    }
}

/// The value of query parameter `name`, decoded as forms encode it (`+` for a
/// space, then `%XX` escapes).
fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            let spaced = v.replace('+', " ");
            percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
        })
    })
}

/// What cannot stay as it is in a request target: controls, space, non-ASCII
/// (always escaped by the encoder), `"`, `#`, `<`, `>`, `\`, `^`, `` ` ``, `{`, `|`,
/// `}`. Escaped, a decoded `?path=` or an `X-Forward-Path` with any of them still
/// makes a valid request line; `%`, `/`, `?`, `&` and `=` keep their meaning.
const TARGET_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// `POST /forward`: the upstream path, from `X-Forward-Path` or `?path=`, as an
/// absolute path.
fn forward_target<B>(req: &Request<B>) -> String {
    let from_header = req
        .headers()
        .get(&FORWARD_PATH_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let path = from_header
        .or_else(|| query_param(req.uri(), "path"))
        .unwrap_or_else(|| "/".to_owned());
    let path = utf8_percent_encode(&path, TARGET_ESCAPES).to_string();
    if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    }
}
