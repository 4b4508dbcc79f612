//! A corpus of malformed and ambiguous HTTP/1.x requests, each written raw on
//! one TCP connection to a real gateway, with a real agent in front of a
//! *recording* upstream that keeps every byte the tunnel delivers to it.
//!
//! Request smuggling happens when two HTTP parsers in a chain disagree about
//! where a message ends: the front end (here, the gateway) forwards what it
//! believes is one request, and the back end reads two. The cases below follow
//! the families described in the published research on the subject (CL.TE,
//! TE.CL and TE.TE, obfuscated `Transfer-Encoding`, duplicate or malformed
//! `Content-Length`, whitespace and line-ending tricks, chunk-size overflows,
//! early answers that leave a body unread, pipelining after a bad request) and
//! the message-length rules of RFC 9112 section 6, together with the gateway's
//! own edge rules: Host validation and routing, absolute-form targets, methods
//! it does not proxy, header-block limits, hop-by-hop headers and the headers
//! that it alone sets.
//!
//! Each case states what the client must read back (the status of each
//! response, or that the connection closed) and exactly what the upstream must
//! have received: nothing at all for a request the gateway refuses, and for one
//! it accepts, one well-formed HTTP/1.1 request per accepted request, framed
//! without ambiguity, with the expected request line and body, and never a
//! second request hidden in the first. Whatever the case, every request that
//! reaches the upstream is checked for the invariants in [`faults`].
//!
//! Some cases accept more than one outcome where the RFC leaves a choice (for
//! instance refusing `Transfer-Encoding` with `Content-Length`, or forwarding
//! it as chunked only); every accepted outcome is safe.
//!
//! Set `SMUGGLING_CASE=<part of a name>` to run only the matching cases.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout, timeout_at};

use common::*;

/// The bound of every wait in this file: a hang fails a case instead of the run.
const BOUND: Duration = Duration::from_secs(10);
/// What the recording upstream answers to each complete request it receives.
const UPSTREAM_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
/// Headers that describe one hop, or that only the gateway reads: none may
/// reach the upstream (no case here asks for an allowed WebSocket upgrade).
const NEVER_FORWARDED: [&str; 10] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "http2-settings",
    "x-tunnel-id",
    "x-forward-path",
];
/// A complete request, to hide in bodies and after other requests.
const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: h.test\r\n\r\n";
const SMUGGLED_APP: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: app.tunnels.example.com\r\n\r\n";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Bytes as escaped ASCII, cut short for failure messages.
fn esc(b: &[u8]) -> String {
    let s = b.escape_ascii().to_string();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}... ({} bytes)", &s[..i], b.len()),
        None => s,
    }
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A well-formed chunked body carrying `parts`, one chunk each.
fn chunked(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn is_tchar(b: &u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b)
}

// ---------------------------------------------------------------------------
// The recording upstream

/// One upstream TCP connection: which tunnel's agent opened it, and every byte
/// it carried.
struct Conn {
    tunnel: &'static str,
    bytes: Vec<u8>,
    closed: bool,
}

/// A raw TCP upstream per tunnel, all recording into one list of connections
/// (its tasks end with the test's runtime).
struct Recorder {
    addrs: Vec<(&'static str, SocketAddr)>,
    conns: Arc<Mutex<Vec<Arc<Mutex<Conn>>>>>,
}

impl Recorder {
    async fn start(tunnels: &[&'static str]) -> Recorder {
        let conns: Arc<Mutex<Vec<Arc<Mutex<Conn>>>>> = Arc::default();
        let mut addrs = Vec::new();
        for &tunnel in tunnels {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind the recording upstream");
            addrs.push((tunnel, listener.local_addr().expect("recorder address")));
            let conns = conns.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let conn = Arc::new(Mutex::new(Conn {
                        tunnel,
                        bytes: Vec::new(),
                        closed: false,
                    }));
                    lock(&conns).push(conn.clone());
                    tokio::spawn(record(tcp, conn));
                }
            });
        }
        Recorder { addrs, conns }
    }

    fn all_closed(&self) -> bool {
        lock(&self.conns).iter().all(|c| lock(c).closed)
    }

    /// The requests received so far, in connection order, leaving the record
    /// empty; the barrier's own probes are left out.
    fn take(&self) -> Vec<UpReq> {
        let conns = std::mem::take(&mut *lock(&self.conns));
        let mut out = Vec::new();
        for conn in conns {
            let conn = lock(&conn);
            let reqs = parse_requests(conn.tunnel, &conn.bytes);
            if !reqs
                .first()
                .is_some_and(|r| r.line.starts_with("GET /__probe "))
            {
                out.extend(reqs);
            }
        }
        out
    }
}

/// Records what arrives on `tcp`, answering each request once it is complete.
async fn record(mut tcp: TcpStream, conn: Arc<Mutex<Conn>>) {
    let mut answered = 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let complete = {
            let mut c = lock(&conn);
            c.bytes.extend_from_slice(&buf[..n]);
            let reqs = parse_requests(c.tunnel, &c.bytes);
            reqs.iter().filter(|r| r.complete).count()
        };
        while answered < complete {
            let _ = tcp.write_all(UPSTREAM_ANSWER).await;
            answered += 1;
        }
    }
    lock(&conn).closed = true;
}

/// A request as the upstream received it.
#[derive(Debug)]
struct UpReq {
    tunnel: &'static str,
    line: String,
    /// Lowercase names, values without surrounding whitespace.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    head_complete: bool,
    complete: bool,
    /// What is wrong with it on the wire (bare CR/LF, NUL, ambiguous framing...).
    defects: Vec<String>,
}

impl UpReq {
    fn new(tunnel: &'static str, line: &[u8], head_complete: bool) -> UpReq {
        UpReq {
            tunnel,
            line: String::from_utf8_lossy(line).into_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            head_complete,
            complete: false,
            defects: Vec::new(),
        }
    }

    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Splits what one upstream connection received into requests, strictly: a
/// head ends at CRLF CRLF, a body is framed by `Content-Length` or `chunked`.
/// The last request may be incomplete; bytes that cannot be framed end the
/// parse with a defect.
fn parse_requests(tunnel: &'static str, bytes: &[u8]) -> Vec<UpReq> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let Some(end) = find(rest, b"\r\n\r\n") else {
            let line_end = find(rest, b"\r\n").unwrap_or(rest.len());
            out.push(UpReq::new(tunnel, &rest[..line_end], false));
            break;
        };
        let mut req = parse_head(tunnel, &rest[..end]);
        let body = &rest[end + 4..];
        let te = req.values("transfer-encoding").len();
        let cl: Vec<String> = req
            .values("content-length")
            .iter()
            .map(|s| s.to_string())
            .collect();
        if te > 0 && !cl.is_empty() {
            req.defects
                .push("both Transfer-Encoding and Content-Length".into());
        }
        let used = if te > 0 {
            if req.values("transfer-encoding") != ["chunked"] {
                req.defects.push(format!(
                    "Transfer-Encoding {:?}",
                    req.values("transfer-encoding")
                ));
            }
            match dechunk(body) {
                Ok(Some((decoded, used))) => {
                    req.body = decoded;
                    Some(used)
                }
                Ok(None) => None,
                Err(e) => {
                    req.defects.push(e);
                    None
                }
            }
        } else if let Some(first) = cl.first() {
            if cl.len() > 1 {
                req.defects.push(format!("Content-Length {cl:?}"));
            }
            match first.parse::<usize>() {
                Ok(n) if first.bytes().all(|b| b.is_ascii_digit()) => {
                    req.body = body[..n.min(body.len())].to_vec();
                    (body.len() >= n).then_some(n)
                }
                _ => {
                    req.defects.push(format!("Content-Length {first:?}"));
                    None
                }
            }
        } else {
            Some(0)
        };
        req.complete = used.is_some() && req.defects.is_empty();
        let stop = !req.complete;
        out.push(req);
        match used {
            Some(used) if !stop => pos += end + 4 + used,
            _ => break,
        }
    }
    out
}

fn parse_head(tunnel: &'static str, head: &[u8]) -> UpReq {
    let mut lines = Vec::new();
    let mut rest = head;
    while let Some(i) = find(rest, b"\r\n") {
        lines.push(&rest[..i]);
        rest = &rest[i + 2..];
    }
    lines.push(rest);
    let line = lines[0];
    let mut req = UpReq::new(tunnel, line, true);
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let line_ok = parts.len() == 3
        && !parts[0].is_empty()
        && parts[0].iter().all(is_tchar)
        && !parts[1].is_empty()
        && parts[1].iter().all(|b| (0x21..=0x7e).contains(b))
        && parts[2] == b"HTTP/1.1";
    if !line_ok {
        req.defects.push(format!("request line {}", esc(line)));
    }
    for l in &lines[1..] {
        let bad_byte = l.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f);
        let colon = l.iter().position(|&b| b == b':');
        match colon {
            Some(c) if c > 0 && l[..c].iter().all(is_tchar) && !bad_byte => {
                let name = String::from_utf8_lossy(&l[..c]).to_ascii_lowercase();
                let value = String::from_utf8_lossy(l[c + 1..].trim_ascii()).into_owned();
                req.headers.push((name, value));
            }
            _ => req.defects.push(format!("header line {}", esc(l))),
        }
    }
    req
}

/// A strict chunked body at the start of `b`: the decoded bytes and how many
/// bytes it took; None while incomplete.
fn dechunk(b: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut pos = 0;
    let mut body = Vec::new();
    loop {
        let Some(eol) = find(&b[pos..], b"\r\n") else {
            return Ok(None);
        };
        let size_line = &b[pos..pos + eol];
        let size = std::str::from_utf8(size_line)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 16 && s.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| format!("chunk-size line {}", esc(size_line)))?;
        pos += eol + 2;
        if size == 0 {
            // Trailer fields, up to an empty line.
            loop {
                let Some(eol) = find(&b[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if b.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&b[pos..pos + size]);
        if &b[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        pos += size + 2;
    }
}

/// What is wrong with a request that reached the upstream, whatever the case:
/// its wire form, a missing or doubled Host, forwarding headers that are not
/// the gateway's, hop-by-hop headers, header names with `_`.
fn faults(r: &UpReq) -> Vec<String> {
    let mut f = r.defects.clone();
    if !r.head_complete {
        return f;
    }
    match r.values("host").as_slice() {
        [h] if !h.is_empty() => {}
        other => f.push(format!("Host {other:?} (expected exactly one)")),
    }
    if r.values("x-forwarded-for") != ["127.0.0.1"] {
        f.push(format!("X-Forwarded-For {:?}", r.values("x-forwarded-for")));
    }
    if r.values("x-forwarded-proto") != ["http"] {
        f.push(format!(
            "X-Forwarded-Proto {:?}",
            r.values("x-forwarded-proto")
        ));
    }
    if r.values("x-request-id").len() != 1 {
        f.push(format!("X-Request-Id {:?}", r.values("x-request-id")));
    }
    for (name, _) in &r.headers {
        if name.contains('_') || NEVER_FORWARDED.contains(&name.as_str()) {
            f.push(format!("header {name} forwarded"));
        }
    }
    f
}

fn describe(reqs: &[UpReq]) -> String {
    if reqs.is_empty() {
        return "nothing".into();
    }
    let all: Vec<String> = reqs
        .iter()
        .map(|r| {
            let state = if r.complete { "" } else { " (incomplete)" };
            let body = esc(&r.body);
            format!(
                "[{}] {:?}{state} {:?} body {body:?}",
                r.tunnel, r.line, r.headers
            )
        })
        .collect();
    let s = all.join("; ");
    match s.char_indices().nth(1500) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

// ---------------------------------------------------------------------------
// The client

/// A response the client read: its status and headers.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the client read back on its connection.
struct Client {
    /// Final responses, in order (1xx ones are skipped).
    responses: Vec<Resp>,
    closed: bool,
    raw: Vec<u8>,
}

impl Client {
    fn statuses(&self) -> Vec<u16> {
        self.responses.iter().map(|r| r.status).collect()
    }

    fn summary(&self) -> String {
        format!(
            "responses {:?}, connection {}; read: {}",
            self.statuses(),
            if self.closed { "closed" } else { "left open" },
            esc(&self.raw)
        )
    }
}

/// The complete final responses at the start of `b` (a body without framing
/// ends when the connection does).
fn parse_responses(b: &[u8], closed: bool) -> Vec<Resp> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(end) = find(&b[pos..], b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&b[pos..pos + end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                Some((n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            })
            .collect();
        let start = pos + end + 4;
        if (100..200).contains(&status) {
            pos = start;
            continue;
        }
        let resp = Resp { status, headers };
        let len = if status == 204 || status == 304 {
            Some(0)
        } else if resp.header("transfer-encoding").is_some() {
            dechunk(&b[start..]).ok().flatten().map(|(_, used)| used)
        } else if let Some(cl) = resp.header("content-length") {
            cl.parse::<usize>().ok().filter(|n| start + n <= b.len())
        } else {
            closed.then(|| b.len() - start)
        };
        let Some(len) = len else { break };
        out.push(resp);
        pos = start + len;
    }
    out
}

/// Writes `send` on a new connection to `addr` and reads until `want` responses
/// came back or the gateway closed; then half-closes and reads what is left
/// until the gateway closes too.
async fn talk(addr: SocketAddr, send: &[u8], want: usize) -> Client {
    let mut tcp = match timeout(BOUND, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        other => panic!("cannot connect to the gateway at {addr}: {other:?}"),
    };
    // The gateway may refuse a head and close before reading all of it: the
    // write then fails, and its answer is still there to read.
    let _ = timeout(BOUND, tcp.write_all(send)).await;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut closed = false;
    let mut deadline = Instant::now() + BOUND;
    let mut half_closed = false;
    loop {
        if !half_closed && parse_responses(&raw, false).len() >= want {
            // Nothing more to send: the gateway answers what it still has, then closes.
            let _ = tcp.shutdown().await;
            half_closed = true;
            deadline = Instant::now() + BOUND;
        }
        match timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Err(_) if half_closed => break,
            Err(_) => {
                let _ = tcp.shutdown().await;
                half_closed = true;
                deadline = Instant::now() + BOUND;
            }
        }
    }
    Client {
        responses: parse_responses(&raw, closed),
        closed,
        raw,
    }
}

// ---------------------------------------------------------------------------
// Cases

/// One response the client must read.
#[derive(Clone, Copy)]
enum Reply {
    /// A response with one of these statuses.
    Status(&'static [u16]),
    /// Such a response, or the connection closed before it.
    OrClose(&'static [u16]),
}

/// What the upstream must have received.
enum Up {
    /// Not one byte.
    Nothing,
    /// Exactly these complete requests, in order.
    Exactly(Vec<Want>),
    /// At most the unfinished start of one request with this line: never a
    /// request the upstream could act on.
    Unfinished(&'static str),
    /// One complete request, whatever its line (a check looks at it).
    One,
}

/// One request the upstream must receive.
struct Want {
    tunnel: &'static str,
    line: String,
    body: Vec<u8>,
    /// Header name and its only value, or None: absent.
    headers: Vec<(&'static str, Option<String>)>,
}

/// A request for tunnel `app` with this request line, no body.
fn to(line: &str) -> Want {
    Want {
        tunnel: "app",
        line: line.to_owned(),
        body: Vec::new(),
        headers: Vec::new(),
    }
}

impl Want {
    fn body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }

    fn on(mut self, tunnel: &'static str) -> Self {
        self.tunnel = tunnel;
        self
    }

    fn has(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, Some(value.into())));
        self
    }

    fn lacks(mut self, name: &'static str) -> Self {
        self.headers.push((name, None));
        self
    }

    fn matches(&self, r: &UpReq) -> Result<(), String> {
        if r.tunnel != self.tunnel {
            return Err(format!("reached tunnel {}, not {}", r.tunnel, self.tunnel));
        }
        if r.line != self.line {
            return Err(format!("request line {:?}, not {:?}", r.line, self.line));
        }
        if !r.complete {
            return Err(format!("{:?} arrived incomplete", r.line));
        }
        if r.body != self.body {
            return Err(format!("body {}, not {}", esc(&r.body), esc(&self.body)));
        }
        for (name, value) in &self.headers {
            let seen = r.values(name);
            match value {
                Some(v) if seen != [v.as_str()] => {
                    return Err(format!("{name}: {seen:?}, not {v:?}"));
                }
                None if !seen.is_empty() => return Err(format!("{name} forwarded: {seen:?}")),
                _ => {}
            }
        }
        Ok(())
    }
}

/// One acceptable outcome of a case.
struct Outcome {
    replies: Vec<Reply>,
    up: Up,
}

impl Outcome {
    fn matches(&self, client: &Client, reqs: &[UpReq]) -> Result<(), String> {
        let statuses = client.statuses();
        for (i, reply) in self.replies.iter().enumerate() {
            match (statuses.get(i), reply) {
                (Some(s), Reply::Status(codes) | Reply::OrClose(codes)) if codes.contains(s) => {}
                (Some(s), Reply::Status(codes) | Reply::OrClose(codes)) => {
                    return Err(format!(
                        "response {} is {s}, expected one of {codes:?}",
                        i + 1
                    ));
                }
                (None, Reply::OrClose(_)) if client.closed => {}
                (None, _) => return Err(format!("response {} never came", i + 1)),
            }
        }
        if statuses.len() > self.replies.len() {
            return Err(format!(
                "{} responses, expected {}",
                statuses.len(),
                self.replies.len()
            ));
        }
        match &self.up {
            Up::Nothing if reqs.is_empty() => Ok(()),
            Up::Nothing => Err("the upstream received bytes; expected nothing".into()),
            Up::One => match reqs {
                [r] if r.complete => Ok(()),
                _ => Err("expected one complete upstream request".into()),
            },
            Up::Unfinished(line) => match reqs {
                [] => Ok(()),
                [r] if r.line == *line && !r.complete => Ok(()),
                _ => Err(format!(
                    "expected at most the unfinished start of {line:?} upstream"
                )),
            },
            Up::Exactly(wants) => {
                if reqs.len() != wants.len() {
                    return Err(format!(
                        "{} upstream requests, expected {}",
                        reqs.len(),
                        wants.len()
                    ));
                }
                for (i, (w, r)) in wants.iter().zip(reqs).enumerate() {
                    w.matches(r)
                        .map_err(|e| format!("upstream request {}: {e}", i + 1))?;
                }
                Ok(())
            }
        }
    }
}

type Check = Box<dyn Fn(&Client, &[UpReq]) -> Result<(), String>>;

struct Case {
    name: &'static str,
    send: Vec<u8>,
    outcomes: Vec<Outcome>,
    check: Option<Check>,
}

fn case(name: &'static str, send: impl Into<Vec<u8>>) -> Case {
    Case {
        name,
        send: send.into(),
        outcomes: Vec::new(),
        check: None,
    }
}

impl Case {
    /// Answered by the gateway with one of `codes`; nothing upstream.
    fn refused(self, codes: &'static [u16]) -> Self {
        self.or(vec![Reply::Status(codes)], Up::Nothing)
    }

    /// A malformed body of `POST /x`: the gateway's 400 (not a 502), and
    /// upstream at most the unfinished start of that request.
    fn bad_body(self) -> Self {
        self.or(
            vec![Reply::Status(&[400])],
            Up::Unfinished("POST /x HTTP/1.1"),
        )
    }

    /// Each of `wants` forwarded and answered 200, in order, and nothing else.
    fn forwarded(self, wants: Vec<Want>) -> Self {
        let replies = wants.iter().map(|_| Reply::Status(&[200])).collect();
        self.or(replies, Up::Exactly(wants))
    }

    fn forwards(self, want: Want) -> Self {
        self.forwarded(vec![want])
    }

    fn or(mut self, replies: Vec<Reply>, up: Up) -> Self {
        self.outcomes.push(Outcome { replies, up });
        self
    }

    fn check(mut self, f: impl Fn(&Client, &[UpReq]) -> Result<(), String> + 'static) -> Self {
        self.check = Some(Box::new(f));
        self
    }
}

// ---------------------------------------------------------------------------
// The fixture

/// A gateway, one agent per tunnel, and the recording upstream behind them.
struct Fixture {
    gw: TestGateway,
    rec: Recorder,
    _agents: Vec<TestAgent>,
    /// One Host per tunnel, for the barrier's probes.
    probes: Vec<&'static str>,
}

/// Tunnel `app`, the default: any Host reaches it.
async fn default_tunnel() -> Fixture {
    let toml = "[server]\ndefault_tunnel = \"app\"\n[[tunnels]]\nid = \"app\"\n";
    Fixture::start(toml, &["app"], vec!["h.test"]).await
}

/// Tunnels `app` and `api` under `tunnels.example.com`, and no default.
async fn host_routing() -> Fixture {
    let toml = "[server]\npublic_domain = \"tunnels.example.com\"\n\
                [[tunnels]]\nid = \"app\"\n[[tunnels]]\nid = \"api\"\n";
    let probes = vec!["app.tunnels.example.com", "api.tunnels.example.com"];
    Fixture::start(toml, &["app", "api"], probes).await
}

impl Fixture {
    async fn start(toml: &str, tunnels: &[&'static str], probes: Vec<&'static str>) -> Fixture {
        let rec = Recorder::start(tunnels).await;
        let gw = TestGateway::start(config_from(toml)).await;
        let mut agents = Vec::new();
        for (tunnel, addr) in &rec.addrs {
            agents.push(TestAgent::start(&gw, tunnel, &format!("http://{addr}")).await);
            gw.wait_agents(tunnel, 1).await;
        }
        Fixture {
            gw,
            rec,
            _agents: agents,
            probes,
        }
    }

    /// Waits until everything a case sent has reached the upstream: a probe
    /// through each tunnel (its stream is opened after the case's, on the same
    /// agent sessions), then every upstream connection closed, which the
    /// gateway does once the client's connection is gone.
    async fn settle(&self) -> Result<(), String> {
        for host in &self.probes {
            let probe =
                format!("GET /__probe HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            let c = talk(self.gw.addr, probe.as_bytes(), 1).await;
            if c.statuses() != [200] {
                return Err(format!("the probe through {host} got {}", c.summary()));
            }
        }
        let deadline = Instant::now() + BOUND;
        while !self.rec.all_closed() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "an upstream connection was still open {BOUND:?} after its client left"
                ));
            }
            tokio::time::sleep(common::wait::INTERVAL).await;
        }
        Ok(())
    }

    async fn run(&self, case: &Case) -> Result<(), String> {
        // Wait for the replies an outcome requires; optional ones are read after
        // the half-close (waiting for them would stall until the bound).
        let want = case
            .outcomes
            .iter()
            .map(|o| {
                o.replies
                    .iter()
                    .filter(|r| matches!(r, Reply::Status(_)))
                    .count()
            })
            .max()
            .unwrap_or(1);
        let client = talk(self.gw.addr, &case.send, want).await;
        let settled = self.settle().await;
        let reqs = self.rec.take();
        let seen = format!(
            "client: {}\n    upstream: {}",
            client.summary(),
            describe(&reqs)
        );
        settled.map_err(|e| format!("{e}\n    {seen}"))?;
        let faults: Vec<String> = reqs.iter().flat_map(faults).collect();
        if !faults.is_empty() {
            return Err(format!(
                "the upstream received an unsafe request: {faults:?}\n    {seen}"
            ));
        }
        let mut misses = Vec::new();
        for outcome in &case.outcomes {
            match outcome.matches(&client, &reqs) {
                Ok(()) => {
                    return match &case.check {
                        Some(check) => {
                            check(&client, &reqs).map_err(|e| format!("{e}\n    {seen}"))
                        }
                        None => Ok(()),
                    };
                }
                Err(miss) => misses.push(miss),
            }
        }
        Err(format!("{}\n    {seen}", misses.join("; or: ")))
    }

    /// Runs every case (or those `SMUGGLING_CASE` names), then fails naming each
    /// case that failed.
    async fn run_all(&self, cases: Vec<Case>) {
        let only = std::env::var("SMUGGLING_CASE").ok();
        let mut names = std::collections::HashSet::new();
        let mut failures = Vec::new();
        let mut ran = 0;
        for case in &cases {
            assert!(
                names.insert(case.name),
                "two cases are named {:?}",
                case.name
            );
            assert!(
                !case.outcomes.is_empty(),
                "case {:?} expects nothing",
                case.name
            );
            if only.as_deref().is_some_and(|o| !case.name.contains(o)) {
                continue;
            }
            ran += 1;
            if let Err(why) = self.run(case).await {
                failures.push(format!("- {}: {why}", case.name));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {ran} cases failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// Checks used by several cases

/// The X-Request-Id the upstream saw, which the response must carry as well.
fn request_id(client: &Client, reqs: &[UpReq]) -> Result<String, String> {
    let [req] = reqs else {
        return Err(format!("{} upstream requests, expected one", reqs.len()));
    };
    let up = req.values("x-request-id").concat();
    match client
        .responses
        .first()
        .and_then(|r| r.header("x-request-id"))
    {
        Some(down) if down == up => Ok(up),
        down => Err(format!(
            "X-Request-Id {up:?} upstream, {down:?} in the response"
        )),
    }
}

fn id_kept(sent: impl Into<String>) -> impl Fn(&Client, &[UpReq]) -> Result<(), String> {
    let sent = sent.into();
    move |client, reqs| match request_id(client, reqs)? {
        id if id == sent => Ok(()),
        id => Err(format!("X-Request-Id {sent:?} was replaced by {id:?}")),
    }
}

fn id_replaced(sent: impl Into<String>) -> impl Fn(&Client, &[UpReq]) -> Result<(), String> {
    let sent = sent.into();
    move |client, reqs| {
        let id = request_id(client, reqs)?;
        if id != sent && id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err(format!(
                "X-Request-Id {sent:?} became {id:?}, not a fresh 32-hex-digit ID"
            ))
        }
    }
}

/// The recorder's parser on bytes whose reading is known: it must find a
/// request hidden behind another, and flag what an upstream could misread;
/// otherwise the corpus below could pass while a request is smuggled.
#[test]
fn the_recorder_finds_every_request_and_every_ambiguity() {
    // What the gateway adds, so that each sample has only its own fault.
    let ours =
        "Host: a\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Request-Id: 1\r\n";
    let req = |line: &str, headers: &str, body: &[u8]| {
        cat(&[format!("{line}\r\n{ours}{headers}\r\n").as_bytes(), body])
    };
    let seen = |bytes: &[u8]| -> Vec<(String, bool, Vec<String>)> {
        let reqs = parse_requests("app", bytes);
        reqs.into_iter()
            .map(|r| (r.line.clone(), r.complete, faults(&r)))
            .collect()
    };
    let fine = |line: &str| (line.to_owned(), true, Vec::<String>::new());
    let cl = req("POST / HTTP/1.1", "Content-Length: 5\r\n", b"hello");
    let te = req("POST / HTTP/1.1", TE, &chunked(&[b"he", b"llo"]));
    let hidden = req("GET /smuggled HTTP/1.1", "", b"");
    assert_eq!(seen(&cl), [fine("POST / HTTP/1.1")]);
    assert_eq!(
        seen(&cat(&[&cl, &hidden])),
        [fine("POST / HTTP/1.1"), fine("GET /smuggled HTTP/1.1")]
    );
    assert_eq!(
        seen(&cat(&[&te, &hidden])),
        [fine("POST / HTTP/1.1"), fine("GET /smuggled HTTP/1.1")]
    );
    assert_eq!(parse_requests("app", &te)[0].body, b"hello");
    assert!(!parse_requests("app", &cl[..cl.len() - 1])[0].complete);
    for sample in [
        req(
            "POST / HTTP/1.1",
            &format!("{TE}Content-Length: 5\r\n"),
            b"0\r\n\r\n",
        ),
        req(
            "POST / HTTP/1.1",
            "Content-Length: 5\r\nContent-Length: 5\r\n",
            b"hello",
        ),
        req(
            "POST / HTTP/1.1",
            "Transfer-Encoding: gzip, chunked\r\n",
            b"0\r\n\r\n",
        ),
        req("POST / HTTP/1.1", TE, b"5;x\r\nhello\r\n0\r\n\r\n"),
        req("GET / HTTP/1.1", "X: y\nZ: w\r\n", b""),
        req("GET / HTTP/1.1", "X: \x00\r\n", b""),
        req("GET /a b HTTP/1.1", "", b""),
        req("GET / HTTP/1.0", "", b""),
        req("GET / HTTP/1.1", "Connection: close\r\n", b""),
        req("GET / HTTP/1.1", "X_Y: 1\r\n", b""),
        req("GET / HTTP/1.1", "Host: b\r\n", b""),
    ] {
        let reqs = parse_requests("app", &sample);
        assert!(
            !faults(&reqs[0]).is_empty(),
            "no fault found in {}",
            esc(&sample)
        );
    }
}

// ---------------------------------------------------------------------------
// The corpus

const TE: &str = "Transfer-Encoding: chunked\r\n";
const TE_REFUSED: &[u16] = &[400, 501];

/// `POST /x` to the default tunnel with these extra header lines and body.
fn post(headers: &str, body: &[u8]) -> Vec<u8> {
    cat(&[
        b"POST /x HTTP/1.1\r\nHost: h.test\r\n",
        headers.as_bytes(),
        b"\r\n",
        body,
    ])
}

/// `GET /` to the default tunnel with these extra header lines.
fn get(headers: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: h.test\r\n{headers}\r\n").into_bytes()
}

/// `GET /` with this Host value.
fn host(value: &[u8]) -> Vec<u8> {
    cat(&[b"GET / HTTP/1.1\r\nHost: ", value, b"\r\n\r\n"])
}

/// Message framing (RFC 9112 section 6): Content-Length, Transfer-Encoding and
/// chunked bodies, the classic CL.TE / TE.CL / TE.TE desyncs, bodies left
/// unread, pipelining.
#[tokio::test]
async fn message_framing_is_never_ambiguous_upstream() {
    let fx = default_tunnel().await;
    let hello = &chunked(&[b"hello"]);
    let x = || to("POST /x HTTP/1.1");
    let x_hello = || x().body(b"hello");
    let then_400 = || vec![Reply::Status(&[200]), Reply::OrClose(&[400])];
    let health = format!(
        "GET /health HTTP/1.1\r\nHost: h.test\r\nContent-Length: {}\r\n\r\n",
        SMUGGLED.len()
    );
    // With both headers, chunked wins and the connection closes after the
    // answer (RFC 9112 6.1, 6.3); refusing the request is as safe.
    let closes = |client: &Client, _: &[UpReq]| match client.responses.first() {
        Some(r) if r.status == 200 && r.header("connection") != Some("close") => {
            Err("Transfer-Encoding with Content-Length answered without Connection: close".into())
        }
        _ => Ok(()),
    };
    #[rustfmt::skip]
    let cases = vec![
        case("CL body", post("Content-Length: 5\r\n", b"hello")).forwards(x_hello()),
        case("chunked body", post(TE, hello)).forwards(x_hello()),
        case("CL.TE", post(&format!("Content-Length: 6\r\n{TE}"), b"0\r\n\r\nG"))
            .forwards(x()).refused(&[400]).check(closes),
        case("CL.TE hiding a request after the last chunk",
             post(&format!("Content-Length: 45\r\n{TE}"), &cat(&[b"0\r\n\r\n", SMUGGLED])))
            .forwards(x()).refused(&[400]).check(closes),
        case("TE.CL hiding a request in a chunk", post(&format!("{TE}Content-Length: 4\r\n"), &chunked(&[SMUGGLED])))
            .forwards(x().body(SMUGGLED)).refused(&[400]).check(closes),
        case("two equal Content-Length", post("Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"))
            .forwards(x_hello()).refused(&[400]),
        case("two differing Content-Length", post("Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!")).refused(&[400]),
        case("Content-Length list 5, 5", post("Content-Length: 5, 5\r\n", b"hello")).forwards(x_hello()).refused(&[400]),
        case("Content-Length list 5, 6", post("Content-Length: 5, 6\r\n", b"hello!")).refused(&[400]),
        case("Content-Length +5", post("Content-Length: +5\r\n", b"hello")).refused(&[400]),
        case("Content-Length -1", post("Content-Length: -1\r\n", b"hello")).refused(&[400]),
        case("Content-Length 0x5", post("Content-Length: 0x5\r\n", b"hello")).refused(&[400]),
        case("Content-Length beyond u64", post("Content-Length: 18446744073709551616\r\n", b"hello")).refused(&[400]),
        case("Content-Length with space before the colon", post("Content-Length : 5\r\n", b"hello")).refused(&[400]),
        case("TE gzip, chunked", post("Transfer-Encoding: gzip, chunked\r\n", hello)).refused(TE_REFUSED),
        case("TE chunked, gzip", post("Transfer-Encoding: chunked, gzip\r\n", hello)).refused(TE_REFUSED),
        case("TE identity", post("Transfer-Encoding: identity\r\nContent-Length: 5\r\n", b"hello")).refused(TE_REFUSED),
        case("TE xchunked", post("Transfer-Encoding: xchunked\r\n", hello)).refused(TE_REFUSED),
        case("TE chunked, chunked", post("Transfer-Encoding: chunked, chunked\r\n", hello)).refused(TE_REFUSED),
        case("TE chunked, then TE identity", post(&format!("{TE}Transfer-Encoding: identity\r\n"), hello))
            .refused(TE_REFUSED),
        case("TE chunked twice", post(&format!("{TE}{TE}"), hello)).refused(TE_REFUSED),
        case("TE with space before the colon", post("Transfer-Encoding : chunked\r\nContent-Length: 5\r\n", b"hello"))
            .refused(&[400]),
        case("TE with a vertical tab", post("Transfer-Encoding:\x0bchunked\r\n", hello)).refused(&[400]),
        case("TE folded onto the next line", post("Transfer-Encoding:\r\n chunked\r\n", hello)).refused(&[400]),
        case("TE with trailing whitespace", post("Transfer-Encoding: chunked \t\r\n", hello)).forwards(x_hello()),
        // Coding names are case-insensitive (RFC 9112 7): either answer is safe.
        case("TE Chunked in capitals", post("Transfer-Encoding: Chunked\r\n", hello))
            .forwards(x_hello()).refused(TE_REFUSED),
        case("TE line ended by a bare LF", post("Transfer-Encoding: chunked\nContent-Length: 3\r\n", hello))
            .forwards(x_hello()).refused(&[400]).check(closes),
        case("TE in HTTP/1.0", cat(&[b"POST /x HTTP/1.0\r\nHost: h.test\r\n", TE.as_bytes(), b"\r\n", hello]))
            .refused(&[400]),
        case("chunk extension", post(TE, b"5;name=\"v\"\r\nhello\r\n0\r\n\r\n")).forwards(x_hello()),
        case("chunk sizes with leading zeros", post(TE, b"0005\r\nhello\r\n0000\r\n\r\n")).forwards(x_hello()),
        case("chunk extension with a bare LF", post(TE, b"5;a\nb\r\nhello\r\n0\r\n\r\n")).bad_body(),
        case("chunk extensions beyond 16 KiB", post(TE, &cat(&[b"5;", &[b'e'; 20_000], b"\r\nhello\r\n0\r\n\r\n"])))
            .bad_body(),
        case("chunk size overflowing u64", post(TE, b"1ffffffffffffffff\r\nhello\r\n0\r\n\r\n")).bad_body(),
        case("chunk size not hex", post(TE, b"zz\r\nhello\r\n0\r\n\r\n")).bad_body(),
        case("negative chunk size", post(TE, b"-5\r\nhello\r\n0\r\n\r\n")).bad_body(),
        case("chunk size with 0x", post(TE, b"0x5\r\nhello\r\n0\r\n\r\n")).bad_body(),
        case("chunk longer than its size", post(TE, b"3\r\nhello\r\n0\r\n\r\n")).bad_body(),
        case("chunk without CRLF after its data", post(TE, b"5\r\nhello0\r\n\r\n")).bad_body(),
        case("chunk lines ended by bare LF", post(TE, b"5\nhello\n0\n\n")).bad_body(),
        case("trailer field stays out of the head", post(TE, b"5\r\nhello\r\n0\r\nX-Evil: 1\r\n\r\n"))
            .forwards(x_hello().lacks("x-evil")),
        case("request line in the trailer section", post(TE, &cat(&[b"5\r\nhello\r\n0\r\n", SMUGGLED])))
            .forwards(x_hello()).bad_body(),
        case("GET whose body is a request",
             cat(&[get(&format!("Content-Length: {}\r\n", SMUGGLED.len())).as_slice(), SMUGGLED]))
            .forwards(to("GET / HTTP/1.1").body(SMUGGLED)),
        case("own endpoint leaves a body hiding a request unread", cat(&[health.as_bytes(), SMUGGLED]))
            .or(vec![Reply::Status(&[200])], Up::Nothing),
        case("POST without length, then stray bytes", post("", b"hello")).or(then_400(), Up::Exactly(vec![x()])),
        case("HTTP/1.0 POST without length", b"POST /x HTTP/1.0\r\nHost: h.test\r\n\r\nhello").forwards(x()),
        case("Expect: 100-continue", post("Expect: 100-continue\r\nContent-Length: 5\r\n", b"hello")).forwards(x_hello()),
        case("two pipelined requests", b"GET /1 HTTP/1.1\r\nHost: h.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: h.test\r\n\r\n")
            .forwarded(vec![to("GET /1 HTTP/1.1"), to("GET /2 HTTP/1.1")]),
        case("pipelined CL and chunked bodies",
             cat(&[&post("Content-Length: 3\r\n", b"one"), &post(TE, &chunked(&[b"tw", b"o"]))]))
            .forwarded(vec![x().body(b"one"), x().body(b"two")]),
        case("chunked body, then a pipelined request", cat(&[post(TE, hello).as_slice(), SMUGGLED]))
            .forwarded(vec![x_hello(), to("GET /smuggled HTTP/1.1")]),
        case("valid request, then garbage", cat(&[get("").as_slice(), b"GARBAGE\x00\r\n\r\n"]))
            .or(then_400(), Up::Exactly(vec![to("GET / HTTP/1.1")])),
        case("valid request, then a CL.CL request hiding another",
             cat(&[&get(""), &post("Content-Length: 5\r\nContent-Length: 45\r\n", SMUGGLED)]))
            .or(then_400(), Up::Exactly(vec![to("GET / HTTP/1.1")])),
        case("refused request, then a valid one", cat(&[b"GET /first HTTP/1.1\r\n\r\n", SMUGGLED]))
            .or(vec![Reply::Status(&[400]), Reply::Status(&[200])], Up::Exactly(vec![to("GET /smuggled HTTP/1.1")]))
            .refused(&[400]),
        case("HTTP/1.0 keep-alive pipelined",
             b"GET /1 HTTP/1.0\r\nHost: h.test\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\nHost: h.test\r\n\r\n")
            .forwarded(vec![to("GET /1 HTTP/1.1"), to("GET /2 HTTP/1.1")])
            .forwards(to("GET /1 HTTP/1.1")),
    ];
    fx.run_all(cases).await;
}

/// The request line and header block: syntax the gateway must refuse itself,
/// Host validation, methods it does not proxy, and the size limits.
#[tokio::test]
async fn malformed_heads_are_refused_at_the_edge() {
    let fx = default_tunnel().await;
    let pad = |n: usize, size: usize| -> String {
        (0..n)
            .map(|i| format!("X-Pad-{i}: {}\r\n", "p".repeat(size)))
            .collect()
    };
    let uri = |len: usize| format!("GET /{} HTTP/1.1\r\nHost: h.test\r\n\r\n", "a".repeat(len));
    let allow_without_trace =
        |client: &Client, _: &[UpReq]| match client.responses[0].header("allow") {
            Some(allow) if !allow.to_ascii_uppercase().contains("TRACE") => Ok(()),
            allow => Err(format!("405 with Allow {allow:?}")),
        };
    #[rustfmt::skip]
    let cases = vec![
        case("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n").refused(&[400]),
        case("two Host headers", get("Host: other.test\r\n")).refused(&[400]),
        case("Host with a space", host(b"h .test")).refused(&[400]),
        case("Host with a tab", host(b"h\t.test")).refused(&[400]),
        case("Host with a slash", host(b"h.test/x")).refused(&[400]),
        case("Host with a backslash", host(b"h.test\\x")).refused(&[400]),
        case("Host with userinfo", host(b"user@h.test")).refused(&[400]),
        case("Host with ..", host(b"h..test")).refused(&[400]),
        case("Host with a control character", host(b"h\x01.test")).refused(&[400]),
        case("empty Host", host(b"")).refused(&[400]),
        case("Host port not numeric", host(b"h.test:80a")).refused(&[400]),
        case("Host port above 65535", host(b"h.test:65536")).refused(&[400]),
        case("Host IPv6 literal with port", host(b"[::1]:8080")).forwards(to("GET / HTTP/1.1").has("host", "[::1]:8080")),
        case("Host with port", host(b"example.com:8080")).forwards(to("GET / HTTP/1.1").has("host", "example.com:8080")),
        case("HTTP/1.0 without Host", b"GET /old HTTP/1.0\r\n\r\n").refused(&[400]),
        case("HTTP/1.0 with Host", b"GET /old HTTP/1.0\r\nHost: h.test\r\n\r\n")
            .forwards(to("GET /old HTTP/1.1").has("host", "h.test")),
        case("space before a header's colon", get("X-Test : 1\r\n")).refused(&[400]),
        case("obs-fold", get("X-Test: a\r\n b\r\n")).refused(&[400]),
        case("bare LF line endings", b"GET /lf HTTP/1.1\nHost: h.test\n\n")
            .forwards(to("GET /lf HTTP/1.1")).refused(&[400]),
        case("bare CR in a header value", get("X-Test: a\rb\r\n")).refused(&[400]),
        case("NUL in a header value", get("X-Test: a\x00b\r\n")).refused(&[400]),
        case("NUL in the target", b"GET /a\x00b HTTP/1.1\r\nHost: h.test\r\n\r\n").refused(&[400]),
        case("header line without a colon", get("X-Test\r\n")).refused(&[400]),
        case("empty header name", get(": x\r\n")).refused(&[400]),
        case("two spaces in the request line", b"GET  / HTTP/1.1\r\nHost: h.test\r\n\r\n").refused(&[400]),
        case("HTTP/0.9 request line", b"GET /\r\n\r\n").or(vec![Reply::OrClose(&[400])], Up::Nothing),
        case("HTTP/2.0 request line", b"GET / HTTP/2.0\r\nHost: h.test\r\n\r\n")
            .or(vec![Reply::OrClose(&[400, 505])], Up::Nothing),
        case("lowercase method", b"get / HTTP/1.1\r\nHost: h.test\r\n\r\n")
            .forwards(to("get / HTTP/1.1")).refused(&[400, 405, 501]),
        case("GET *", b"GET * HTTP/1.1\r\nHost: h.test\r\n\r\n").refused(&[400]),
        case("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: h.test\r\n\r\n").forwards(to("OPTIONS * HTTP/1.1")),
        case("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n").refused(&[501]),
        case("TRACE", b"TRACE / HTTP/1.1\r\nHost: h.test\r\n\r\n").refused(&[405]).check(allow_without_trace),
        case("URI of 9 KiB", uri(9 * 1024)).refused(&[414]),
        case("URI of 40 KiB", uri(40 * 1024)).refused(&[414, 431]),
        case("one 40 KiB header", get(&format!("X-Big: {}\r\n", "b".repeat(40 * 1024)))).refused(&[431]),
        case("40 headers of 1 KiB", get(&pad(40, 1024))).refused(&[431]),
        case("120 headers", get(&pad(120, 1))).refused(&[431]),
        case("a 20 KiB head", get(&pad(20, 1000))).forwards(to("GET / HTTP/1.1").has("x-pad-19", "p".repeat(1000))),
    ];
    fx.run_all(cases).await;
}

/// Host routing under a public domain, absolute-form targets, and answers the
/// gateway gives without reading the body.
#[tokio::test]
async fn the_host_decides_the_tunnel_and_nothing_else() {
    let fx = host_routing().await;
    let app = |line: &str| to(line).has("host", "app.tunnels.example.com");
    let at = |host: &str| format!("GET /a HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let unread = |headers: &str, body: &[u8]| {
        cat(&[
            format!("POST / HTTP/1.1\r\nHost: nope.tunnels.example.com\r\n{headers}\r\n")
                .as_bytes(),
            body,
        ])
    };
    let cl = format!("Content-Length: {}\r\n", SMUGGLED_APP.len());
    #[rustfmt::skip]
    let cases = vec![
        case("tunnel host", at("app.tunnels.example.com")).forwards(app("GET /a HTTP/1.1")),
        case("other tunnel host", at("api.tunnels.example.com"))
            .forwards(to("GET /a HTTP/1.1").on("api").has("host", "api.tunnels.example.com")),
        case("tunnel host with port", at("app.tunnels.example.com:8080")).forwards(to("GET /a HTTP/1.1")),
        case("host letter case and a trailing dot", at("APP.Tunnels.Example.com.")).forwards(to("GET /a HTTP/1.1")),
        case("host with two trailing dots", at("app.tunnels.example.com..")).refused(&[400]),
        case("unknown tunnel", at("nope.tunnels.example.com")).refused(&[404]),
        case("two labels under the domain", at("app.api.tunnels.example.com")).refused(&[404]),
        case("host outside the domain, no default", at("other.example.org")).refused(&[404]),
        case("two Hosts naming two tunnels",
             b"GET /a HTTP/1.1\r\nHost: app.tunnels.example.com\r\nHost: api.tunnels.example.com\r\n\r\n").refused(&[400]),
        case("X-Tunnel-Id does not override Host",
             b"GET /a HTTP/1.1\r\nHost: app.tunnels.example.com\r\nX-Tunnel-Id: api\r\n\r\n")
            .forwards(app("GET /a HTTP/1.1")),
        case("/health under a tunnel host", b"GET /health HTTP/1.1\r\nHost: app.tunnels.example.com\r\n\r\n")
            .forwards(app("GET /health HTTP/1.1")),
        case("/ws under a tunnel host", b"GET /ws HTTP/1.1\r\nHost: app.tunnels.example.com\r\n\r\n")
            .forwards(app("GET /ws HTTP/1.1")),
        case("absolute-form target",
             b"GET http://app.tunnels.example.com/x?y=1 HTTP/1.1\r\nHost: app.tunnels.example.com\r\n\r\n")
            .forwards(app("GET /x?y=1 HTTP/1.1")),
        // RFC 9112 3.2.2: with an absolute-form target, its authority is the Host.
        case("absolute-form target over a different Host",
             b"GET http://app.tunnels.example.com/x HTTP/1.1\r\nHost: api.tunnels.example.com\r\n\r\n")
            .forwards(app("GET /x HTTP/1.1")),
        case("absolute-form target naming no tunnel",
             b"GET http://nope.tunnels.example.com/x HTTP/1.1\r\nHost: app.tunnels.example.com\r\n\r\n").refused(&[404]),
        case("HTTP/1.0 absolute-form without Host", b"GET http://app.tunnels.example.com/x HTTP/1.0\r\n\r\n")
            .forwards(app("GET /x HTTP/1.1")),
        // RFC 9112 3.2: an HTTP/1.1 request without Host is a 400, target or not.
        case("HTTP/1.1 absolute-form without Host", b"GET http://app.tunnels.example.com/x HTTP/1.1\r\n\r\n")
            .refused(&[400]),
        case("early 404, unread body hiding a request", unread(&cl, SMUGGLED_APP)).refused(&[404]),
        case("early 404, unread chunked body hiding a request", unread(TE, &chunked(&[SMUGGLED_APP]))).refused(&[404]),
        case("early 404, Expect: 100-continue and the body anyway",
             unread(&format!("Expect: 100-continue\r\n{cl}"), SMUGGLED_APP)).refused(&[404]),
    ];
    fx.run_all(cases).await;
}

/// Headers the upstream may rely on: the gateway's own cannot be removed or
/// forged, hop-by-hop ones do not pass, request IDs are sane, `/forward`
/// builds a valid request line.
#[tokio::test]
async fn the_upstream_sees_only_headers_it_can_trust() {
    let fx = default_tunnel().await;
    let ok = || to("GET / HTTP/1.1");
    let id = |value: &str| get(&format!("X-Request-Id: {value}\r\n"));
    let (max_id, long_id) = ("a".repeat(128), "a".repeat(129));
    let forward = |target: &str, headers: &[u8]| {
        let head = format!("POST {target} HTTP/1.1\r\nHost: h.test\r\n");
        cat(&[head.as_bytes(), headers, b"Content-Length: 2\r\n\r\nhi"])
    };
    let encoded = || to("POST /a%20b/%C3%BC?q=%22x%22 HTTP/1.1").body(b"hi");
    let crlf_escaped = |_: &Client, reqs: &[UpReq]| match reqs {
        [r] if !r
            .line
            .to_ascii_uppercase()
            .starts_with("POST /A%0D%0AX-INJECTED") =>
        {
            Err(format!(
                "request line {:?}: the CRLF is not percent-encoded",
                r.line
            ))
        }
        _ => Ok(()),
    };
    #[rustfmt::skip]
    let cases = vec![
        case("names with _ are dropped", get("X_Forwarded_For: 1.2.3.4\r\nApi_Key: x\r\nApi-Key: y\r\n"))
            .forwards(ok().has("api-key", "y")),
        case("Connection cannot remove the gateway's headers",
             post("Connection: X-Forwarded-For, Host, Content-Length, X-Request-Id\r\nContent-Length: 5\r\n", b"hello"))
            .forwards(to("POST /x HTTP/1.1").body(b"hello").has("host", "h.test")),
        case("hop-by-hop headers are dropped",
             get("Connection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-T\r\n\
                  Upgrade: foo/1\r\nProxy-Authorization: Basic eDp5\r\nProxy-Connection: keep-alive\r\n\
                  X-Secret: s\r\nX-Kept: k\r\n"))
            .forwards(ok().lacks("x-secret").has("x-kept", "k")),
        case("client forwarding claims are replaced",
             get("X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\n\
                  Forwarded: for=6.6.6.6\r\n"))
            .forwards(ok().has("x-forwarded-host", "h.test").lacks("forwarded")),
        case("h2c upgrade stripped, the next request routed again",
             cat(&[&get("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"),
                   SMUGGLED]))
            .forwarded(vec![ok(), to("GET /smuggled HTTP/1.1")]),
        case("request ID kept", id("abc-123")).forwards(ok()).check(id_kept("abc-123")),
        case("request ID with = kept", id("a=b")).forwards(ok()).check(id_kept("a=b")),
        case("request ID of 128 bytes kept", id(&max_id)).forwards(ok()).check(id_kept(max_id.clone())),
        case("request ID with a space replaced", id("abc 123")).forwards(ok()).check(id_replaced("abc 123")),
        case("request ID with a quote replaced", id("abc\"123")).forwards(ok()).check(id_replaced("abc\"123")),
        case("request ID with a tab replaced", id("abc\t123")).forwards(ok()).check(id_replaced("abc\t123")),
        case("request ID of 129 bytes replaced", id(&long_id)).forwards(ok()).check(id_replaced(long_id.clone())),
        case("X-Forward-Path percent-encoded", forward("/forward", b"X-Forward-Path: /a b/\xc3\xbc?q=\"x\"\r\n"))
            .forwards(encoded()),
        case("?path= decoded, then encoded again", forward("/forward?path=%2Fa%20b%2F%C3%BC%3Fq%3D%22x%22", b""))
            .forwards(encoded()),
        case("?path= with an encoded CRLF", forward("/forward?path=%2Fa%0D%0AX-Injected:%20y", b""))
            .or(vec![Reply::Status(&[200])], Up::One).refused(&[400]).check(crlf_escaped),
    ];
    fx.run_all(cases).await;
}
