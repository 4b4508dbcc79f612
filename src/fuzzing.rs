//! Entry points for the fuzz targets in `fuzz/` (see `docs/FUZZING.md`): every
//! parser of bytes that someone else controls, each fed arbitrary input, each
//! asserting what must hold whatever the input. Compiled for `cargo fuzz`
//! (`--cfg fuzzing`) and for this crate's unit tests, which run the committed
//! seed corpora through them so that the entry points cannot rot.
//!
//! | target | what it feeds | what it asserts |
//! |---|---|---|
//! | `ws_read_server`, `ws_read_client` | bytes, cut at arbitrary points, into the WebSocket codec in each role | no panic or hang; never more data out than in; no reply larger than about twice the input |
//! | `mux_input` | frames, cut anywhere, into a yamux session as gateway and as agent, interleaved with reads, writes, half-closes and drops of its streams | the live-stream count matches the streams held and returns to zero; queued output stays bounded |
//! | `handshake` | the `/ws` upgrade request's headers, the client's own request built from arbitrary values, and text as hello/control messages | an accepted offer's `101` is accepted by the client check; messages round-trip |
//! | `config` | TOML text and `GATEWAY_*` variables into the loader | an accepted configuration validates, and loads again from its own `--check` output |
//! | `request_head` | a request line and headers into routing, `/forward` targets and header rewriting | no CR/LF/NUL in any outgoing header, no hop-by-hop header forwarded, the upstream target stays a path |

use std::cell::Cell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::{Config, Overrides};
use crate::gateway::ConnCtx;
use crate::gateway::proxy::{headers, upgrade};
use crate::gateway::routing::{self, Kind};
use crate::protocol::{self, Control, Hello};
use crate::transport::mux::{Mode, Parser, Shared};
use crate::transport::ws::handshake;
use crate::transport::{Role, StreamIo, WsIo, close_code};

/// Reads fuzz input a byte or a slice at a time; runs dry as zeros.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// A connection that delivers `input` in pieces of 1 to `max_piece` bytes, then
/// EOF, and takes whatever is written, counting it.
struct Scripted<'a> {
    input: &'a [u8],
    pieces: Input<'a>,
    max_piece: usize,
    written: Rc<Cell<usize>>,
}

impl AsyncRead for Scripted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let piece = 1 + usize::from(self.pieces.byte().unwrap_or(255)) % self.max_piece;
        let n = piece.min(self.input.len()).min(buf.remaining());
        let (head, rest) = self.input.split_at(n);
        buf.put_slice(head);
        self.input = rest;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.set(self.written.get() + buf.len());
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

thread_local! {
    /// The codec arms timers (the close deadline), which need a runtime.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}

/// `ws_read_server` and `ws_read_client`: the first byte says how the rest is cut
/// into socket reads, the second how large the reader's reads are.
pub fn ws_read(role: Role, data: &[u8]) {
    let mut input = Input(data);
    let cut = usize::from(input.byte().unwrap_or(0)) + 1;
    let sizes = usize::from(input.byte().unwrap_or(0));
    let payload = input.0;
    let written = Rc::new(Cell::new(0));
    let io = Scripted {
        input: payload,
        pieces: Input(payload),
        max_piece: cut,
        written: written.clone(),
    };
    let mut ws = WsIo::new(io, role, None, close_code::NORMAL);
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let mut buf = [0u8; 8192];
            let mut got = 0usize;
            for round in 0usize.. {
                let want = 1 + (sizes * 257 + round * 131) % buf.len();
                let mut rb = ReadBuf::new(&mut buf[..want]);
                let read = if round % 3 == 2 {
                    poll_fn(|cx| ws.poll_data_ready(cx)).await.map(|_| ())
                } else {
                    poll_fn(|cx| ws.poll_read_into(cx, &mut rb)).await
                };
                match read {
                    Ok(()) if rb.filled().is_empty() && round % 3 != 2 => break,
                    Ok(()) => got += rb.filled().len(),
                    Err(_) => break,
                }
                assert!(got <= payload.len(), "more data out than in");
                while ws.take_text().is_some() {}
            }
        })
    });
    drop(ws);
    let written = written.get();
    assert!(
        written <= 2 * payload.len() + 256,
        "{written} bytes of replies to {} bytes",
        payload.len()
    );
}

/// `mux_input`: a script of operations on one session. Each step is a byte: feed
/// the next bytes as input, read from, write to, half-close or drop a stream, or
/// take the output (and, as the gateway, open a stream).
pub fn mux_input(data: &[u8]) {
    let mut input = Input(data);
    let mode = match input.byte().unwrap_or(0) & 1 {
        0 => Mode::Client,
        _ => Mode::Server,
    };
    let shared = Shared::new(mode);
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut streams: Vec<StreamIo> = Vec::new();
    let mut rbuf = BytesMut::new();
    let mut parser = Parser::default();
    let mut scratch = vec![0u8; 4096];
    while let Some(op) = input.byte() {
        let pick = usize::from(input.byte().unwrap_or(0));
        match op % 8 {
            0..=2 => {
                rbuf.extend_from_slice(input.take(pick));
                match shared.on_input(&mut rbuf, &mut parser) {
                    Ok(opened) => streams.extend(opened),
                    Err(_) => shared.end("protocol error"),
                }
            }
            3..=6 if !streams.is_empty() => {
                let i = pick % streams.len();
                let s = Pin::new(&mut streams[i]);
                match op % 8 {
                    3 => {
                        let mut rb = ReadBuf::new(&mut scratch[..1 + pick * 16]);
                        let _ = s.poll_read(&mut cx, &mut rb);
                    }
                    4 => {
                        let _ = s.poll_write(&mut cx, &scratch[..1 + pick * 16]);
                    }
                    5 => {
                        let _ = s.poll_shutdown(&mut cx);
                    }
                    _ => drop(streams.swap_remove(i)),
                }
            }
            _ => {
                let out = shared.take_output(waker);
                assert!(out.len() <= 1 << 20, "{} bytes of output queued", out.len());
                if mode == Mode::Client
                    && let Ok(s) = shared.open()
                {
                    streams.push(s);
                }
            }
        }
        assert_eq!(
            shared.count().get(),
            streams.len(),
            "live streams miscounted"
        );
    }
    drop(streams);
    assert_eq!(shared.count().get(), 0, "a dropped stream is still counted");
}

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
                "[server]\npublic_domain = \"tunnels.example.com\"\ndefault_tunnel = \"app\"\ntrust_forwarded = {trust}\n[[tunnels]]\nid = \"app\"\n[[tunnels]]\nid = \"api\"\n"
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
    let trust = input.byte().unwrap_or(0) & 1 == 1;
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
    };
    let id = HeaderValue::from_static("0123456789abcdef");
    let upgrade = upgrade::requested(req.headers());
    let mut out = req.headers().clone();
    headers::prepare_request_headers(&mut out, &ctx, &id, upgrade, trust);
    assert_clean(&out);
    for name in [
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every committed seed, and a few degenerate inputs, through every entry point.
    #[test]
    fn seeds_pass_every_target() {
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        type Target = (&'static str, fn(&[u8]));
        let targets: [Target; 6] = [
            ("ws_read_server", |d| ws_read(Role::Server, d)),
            ("ws_read_client", |d| ws_read(Role::Client, d)),
            ("mux_input", mux_input),
            ("handshake", handshake),
            ("config", config),
            ("request_head", request_head),
        ];
        for (name, run) in targets {
            run(b"");
            run(&[0xff; 64]);
            let dir = seeds.join(name);
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let mut count = 0;
            for entry in entries {
                let path = entry.expect("a directory entry").path();
                run(&std::fs::read(&path).expect("a readable seed"));
                count += 1;
            }
            assert!(count > 0, "no seeds for {name}");
        }
    }
}
