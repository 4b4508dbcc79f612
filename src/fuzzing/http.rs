//! The HTTP-side targets: `handshake`, `config`, `request_head`.

use std::sync::{Arc, OnceLock};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request};

use super::Input;
use crate::config::{Config, Overrides};
use crate::gateway::ConnCtx;
use crate::gateway::proxy::{headers, upgrade};
use crate::gateway::routing::{self, Kind};
use crate::gateway::{policy, request_id};
use crate::protocol::{self, Control, Hello};
use crate::transport::ws::handshake;

/// `handshake`: the input is header lines (`name: value`), then, after a NUL, text
/// for the messages.
pub fn handshake(data: &[u8]) {
    let (head, text) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let headers = header_lines(head);
    if let Ok(offer) = handshake::check_request(&headers) {
        let resp: http::Response<()> = handshake::accept_response(&offer);
        assert_eq!(
            handshake::check_response(resp.headers(), &offer.key),
            Ok(()),
            "our client refuses our own 101"
        );
        if let Some(up) = &offer.upstream {
            assert!(up.chars().count() <= protocol::MAX_UPSTREAM_NAME);
        }
    }
    let text = String::from_utf8_lossy(text);
    if let Ok(hello) = Hello::parse(&text) {
        assert_eq!(Hello::parse(&hello.to_text()).ok(), Some(hello));
    }
    if let Some(control) = Control::parse(&text) {
        assert_eq!(Control::parse(&control.to_text()), Some(control));
    }
    // The agent's own request, from arbitrary values, is accepted by the gateway.
    let mut parts = text.splitn(3, '\n');
    let (tunnel, token, upstream) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let secret = crate::auth::Secret::new(token);
    let key = handshake::client_key();
    if let Ok(req) = handshake::client_request("gw", "/ws", tunnel, Some(&secret), upstream, &key) {
        let offer = handshake::check_request(req.headers()).expect("our request is accepted");
        assert_eq!(offer.tunnel.as_deref(), Some(tunnel.trim()));
        assert_eq!(offer.key, key);
    }
}

/// Header lines `name: value`; lines that are not headers are skipped.
fn header_lines(head: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    headers
}

/// `config`: TOML text, then after a NUL, `KEY=VALUE` lines, each read as
/// `GATEWAY_<KEY>`.
pub fn config(data: &[u8]) {
    let (toml_part, env_part) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(toml_part);
    let env = String::from_utf8_lossy(env_part)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (format!("GATEWAY_{k}"), v.to_owned()))
        .collect();
    let overrides = Overrides::default();
    let Ok(config) = Config::load_str(Some(&text), None, &env, &overrides) else {
        return;
    };
    assert_eq!(config.validate(), Vec::<String>::new());
    let shown = config.to_masked_toml();
    let again = Config::load_str(Some(&shown), None, &Default::default(), &overrides);
    assert!(
        again.is_ok(),
        "--check output does not load again: {again:?}\n{shown}"
    );
}

/// The configuration `request_head` routes with: a public domain, two tunnels.
fn routing_config(trust_forwarded: bool) -> &'static Arc<Config> {
    static CONFIGS: OnceLock<[Arc<Config>; 2]> = OnceLock::new();
    let configs = CONFIGS.get_or_init(|| {
        let load = |trust: bool| {
            let text = format!(
                "[server]\npublic_domain = \"tunnels.example.com\"\ndefault_tunnel = \"app\"\ntrust_forwarded = {trust}\ntrusted_proxies = [\"192.0.2.0/24\", \"10.0.0.0/8\", \"2001:db8::/32\"]\n[[tunnels]]\nid = \"app\"\n[[tunnels]]\nid = \"api\"\n"
            );
            let env = Default::default();
            Arc::new(Config::load_str(Some(&text), None, &env, &Overrides::default()).expect("valid"))
        };
        [load(false), load(true)]
    });
    &configs[usize::from(trust_forwarded)]
}

/// `request_head`: the first byte picks the settings, then a request line
/// (`METHOD TARGET`) and header lines.
pub fn request_head(data: &[u8]) {
    let mut input = Input(data);
    let settings = input.byte().unwrap_or(0);
    let trust = settings & 1 == 1;
    let forward_underscores = settings & 2 == 2;
    let config = routing_config(trust);
    let mut lines = input.0.splitn(2, |&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut words = first.splitn(2, |&b| b == b' ');
    let (Ok(method), Some(target)) = (
        Method::from_bytes(words.next().unwrap_or_default()),
        words.next(),
    ) else {
        return;
    };
    let Ok(mut req) = Request::builder().method(method).uri(target).body(()) else {
        return;
    };
    *req.headers_mut() = header_lines(lines.next().unwrap_or_default());
    // Only what the first check lets through is routed and forwarded.
    if policy::request::check(&mut req, &config.limits).is_err() {
        return;
    }
    assert!(
        req.headers().get_all(header::HOST).iter().count() == 1,
        "checked, yet not one Host"
    );
    let client_id = request_id::request_id(&req);
    assert!(
        client_id
            .as_bytes()
            .iter()
            .copied()
            .all(request_id::is_id_char),
        "{client_id:?}"
    );

    let _ = routing::route_by_host(config, &req);
    for kind in [Kind::Direct, Kind::Forward] {
        let _ = routing::choose_tunnel(config, &req, kind, None);
        if let Ok(uri) = routing::upstream_uri(&req, kind) {
            assert!(uri.scheme().is_none() && uri.authority().is_none(), "{uri}");
            let star = uri.path() == "*" && req.method() == Method::OPTIONS;
            assert!(uri.path().starts_with('/') || star, "not a path: {uri}");
        }
    }

    let peer = "192.0.2.7:4000".parse().expect("an address");
    let ctx = ConnCtx {
        peer,
        peer_ip: HeaderValue::from_static("192.0.2.7"),
        bound: Arc::default(),
        conn: crate::gateway::policy::connections::ConnSlot::detached(),
    };
    // Whom the X-Forwarded-For chain names (trusted proxies walk it).
    let policies = crate::gateway::policy::Policies::build(config, None);
    let _ = policies.client_address(&ctx, &req);
    let id = HeaderValue::from_static("0123456789abcdef");
    let allowed = crate::config::DEFAULT_UPGRADES.map(str::to_owned);
    let upgrade = upgrade::requested(req.headers(), &allowed);
    let mut out = req.headers().clone();
    headers::prepare_request_headers(&mut out, &ctx, &id, upgrade, trust, forward_underscores);
    assert_clean(&out);
    if !forward_underscores {
        assert!(
            !out.keys().any(|k| k.as_str().contains('_')),
            "a name with _ forwarded"
        );
    }
    assert!(out.contains_key(header::HOST) || !req.headers().contains_key(header::HOST));
    for name in [
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        HeaderName::from_static("http2-settings"),
        protocol::TUNNEL_HEADER,
        protocol::FORWARD_PATH_HEADER,
    ] {
        assert!(!out.contains_key(&name), "{name} forwarded");
    }
    match upgrade {
        true => assert_eq!(out.get_all(header::CONNECTION).iter().count(), 1),
        false => {
            assert!(!out.contains_key(header::CONNECTION) && !out.contains_key(header::UPGRADE))
        }
    }
    assert_eq!(out.get(protocol::REQUEST_ID_HEADER), Some(&id));
    if !trust {
        assert_eq!(
            out.get("x-forwarded-for"),
            Some(&HeaderValue::from_static("192.0.2.7")),
            "a client's claim believed"
        );
    }
    let mut back = req.headers().clone();
    headers::prepare_response_headers(&mut back, &id);
    assert_clean(&back);
    assert!(
        !back.contains_key(header::CONNECTION) && !back.contains_key(header::TRANSFER_ENCODING)
    );
}

fn assert_clean(headers: &HeaderMap) {
    for (name, value) in headers {
        assert!(
            !value
                .as_bytes()
                .iter()
                .any(|b| matches!(b, b'\r' | b'\n' | 0)),
            "{name} carries CR, LF or NUL"
        );
    }
}
