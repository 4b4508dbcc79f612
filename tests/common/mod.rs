//! Test harness: a real gateway, real agents and real upstream servers, all on
//! 127.0.0.1 port 0, each returning only once it is ready, each stopped on drop.
//!
//! - [`process`]: the real binaries as child processes;
//! - [`wait`]: `eventually!` and the other ways to wait for an event (never for a
//!   fixed time);
//! - [`wire`]: yamux and WebSocket frames built and parsed by hand, and a PRNG.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod process;
pub mod wait;
pub mod wire;

pub(crate) use wait::eventually;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Query};
use axum::http::{HeaderMap, Method, Uri};
use axum::routing::{any, get};
use futures_util::{SinkExt, StreamExt};
use gateway::agent::{self, AgentConfig, Upstream};
use gateway::config::{Config, Overrides};
use gateway::{Gateway, Shutdown};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// An upstream HTTP server standing in for the private app.
///
/// Routes: `/about` (fixed text), `/echo` (echoes method, path, headers as JSON and
/// the body), `/slow?ms=N` (answers after N ms), `/bytes?n=N` (N bytes of a
/// repeating pattern), `/sink` (consumes the body, answers its length and a hash),
/// `/` and anything else: "upstream root <METHOD> <PATH>" plus the body.
pub struct TestUpstream {
    pub addr: SocketAddr,
    /// `/bytes` bodies being sent right now (one ends when it is complete or its
    /// connection closes).
    pub bodies_in_flight: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Deserialize)]
struct SlowQuery {
    ms: Option<u64>,
}

#[derive(Deserialize)]
struct BytesQuery {
    n: u64,
}

/// The byte at position `i` of `/bytes` bodies.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// FNV-1a, enough to compare large bodies without keeping them.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf29ce484222325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

async fn echo(
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<serde_json::Value> {
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    axum::Json(serde_json::json!({
        "method": method.as_str(),
        "uri": uri.to_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}

async fn root(method: Method, uri: Uri, body: Bytes) -> String {
    format!(
        "upstream root {} {}\n{}",
        method,
        uri.path(),
        String::from_utf8_lossy(&body)
    )
}

async fn slow(Query(q): Query<SlowQuery>, body: Bytes) -> String {
    tokio::time::sleep(Duration::from_millis(q.ms.unwrap_or(1000))).await;
    format!("slow done {}", String::from_utf8_lossy(&body))
}

/// Counts itself in [`TestUpstream::bodies_in_flight`] while it lives.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn bytes(
    Extension(in_flight): Extension<Arc<AtomicUsize>>,
    Query(q): Query<BytesQuery>,
) -> Body {
    let n = q.n;
    in_flight.fetch_add(1, Ordering::SeqCst);
    let guard = InFlight(in_flight);
    let stream = futures_util::stream::unfold((0u64, guard), move |(sent, guard)| async move {
        if sent >= n {
            return None;
        }
        let len = (n - sent).min(64 * 1024);
        let chunk: Vec<u8> = (sent..sent + len).map(pattern_byte).collect();
        Some((
            Ok::<_, std::io::Error>(Bytes::from(chunk)),
            (sent + len, guard),
        ))
    });
    Body::from_stream(stream)
}

async fn sink(body: Body) -> String {
    let mut stream = body.into_data_stream();
    let mut hash = Fnv::default();
    let mut len = 0u64;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return "error".into();
        };
        hash.update(&chunk);
        len += chunk.len() as u64;
    }
    format!("{len} {:016x}", hash.0)
}

impl TestUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::start_on(listener).await
    }

    /// The same routes, on `listener` (an app that comes up at a known address).
    pub async fn start_on(listener: TcpListener) -> Self {
        let app = Router::new()
            .route("/about", get(|| async { "about page from upstream" }))
            .route("/echo", any(echo))
            .route("/echo/{*rest}", any(echo))
            .route("/slow", any(slow))
            .route("/bytes", get(bytes))
            .route("/sink", any(sink))
            .fallback(root);
        Self::serve_on(app, listener).await
    }

    pub async fn serve(app: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::serve_on(app, listener).await
    }

    async fn serve_on(app: Router, listener: TcpListener) -> Self {
        let bodies_in_flight = Arc::new(AtomicUsize::new(0));
        let app = app.layer(Extension(bodies_in_flight.clone()));
        let addr = listener.local_addr().expect("upstream addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestUpstream {
            addr,
            bodies_in_flight,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A WebSocket echo server (stands in for Vite HMR or Laravel Reverb).
pub struct WsEchoUpstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for WsEchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsEchoUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind ws upstream");
        let addr = listener.local_addr().expect("ws upstream addr");
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_close() {
                            break;
                        }
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        WsEchoUpstream { addr, task }
    }
}

/// A gateway running in this process on 127.0.0.1:0.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub gateway: Gateway,
    pub shutdown: Arc<Shutdown>,
    task: JoinHandle<()>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.trigger();
        self.task.abort();
    }
}

/// A config from TOML text (tests' own), with port 0 on loopback.
pub fn config_from(toml: &str) -> Config {
    let overrides = Overrides {
        host: Some("127.0.0.1".parse().expect("ip")),
        port: Some(0),
        log_level: None,
    };
    Config::load_str(Some(toml), None, &BTreeMap::new(), &overrides).expect("test config is valid")
}

impl TestGateway {
    /// Built-in defaults: one open tunnel `demo`.
    pub async fn start_default() -> Self {
        let mut c = Config::defaults();
        c.server.port = 0;
        Self::start(c).await
    }

    pub async fn start(config: Config) -> Self {
        let listener = TcpListener::bind(config.server.addr())
            .await
            .expect("bind gateway");
        Self::start_on(config, listener).await
    }

    pub async fn start_on(config: Config, listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("gateway addr");
        let shutdown = Arc::new(Shutdown::new());
        let gateway = Gateway::new(config, &shutdown);
        let task = {
            let gateway = gateway.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { gateway.serve(listener, &shutdown).await })
        };
        TestGateway {
            addr,
            gateway,
            shutdown,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Number of agents registered for `tunnel`.
    pub fn agents_of(&self, tunnel: &str) -> usize {
        self.gateway.state().registry.agents_of(tunnel).len()
    }

    /// Polls until `tunnel` has exactly `n` agents (panics after 10 s).
    pub async fn wait_agents(&self, tunnel: &str, n: usize) {
        eventually!(
            self.agents_of(tunnel) == n,
            "tunnel {tunnel} to have {n} agents (has {})",
            self.agents_of(tunnel)
        );
    }
}

/// An agent running in this process; registered with the gateway when `start`
/// returns. Dropping it (or [`TestAgent::kill`]) cuts the connection abruptly.
pub struct TestAgent {
    pub connection_id: String,
    shutdown: Arc<Shutdown>,
    task: Option<JoinHandle<gateway::transport::SessionEnd>>,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub fn agent_config(
    gateway: &TestGateway,
    tunnel: &str,
    token: Option<&str>,
    upstream: &str,
) -> AgentConfig {
    AgentConfig {
        gateway: gateway.ws_url(),
        tunnel: tunnel.to_owned(),
        token: token.map(gateway::config::Secret::new),
        upstream: upstream.to_owned(),
        grace: Duration::from_secs(5),
        wait_upstream: false,
    }
}

impl TestAgent {
    pub async fn start(gateway: &TestGateway, tunnel: &str, upstream: &str) -> Self {
        Self::start_with(agent_config(gateway, tunnel, None, upstream))
            .await
            .expect("agent connects")
    }

    pub async fn start_with(cfg: AgentConfig) -> Result<Self, agent::AgentError> {
        let connected = agent::connect(&cfg).await?;
        let connection_id = connected.hello.connection_id.clone();
        let shutdown = Arc::new(Shutdown::new());
        let upstream = Upstream::parse(&cfg.upstream)?;
        let task = tokio::spawn(connected.serve(upstream, shutdown.token(), cfg.grace));
        Ok(TestAgent {
            connection_id,
            shutdown,
            task: Some(task),
        })
    }

    /// Cuts the connection as a crash would (no drain, no close frame).
    pub fn kill(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Graceful leave, as on SIGTERM; returns how the session ended.
    pub async fn stop(mut self) -> gateway::transport::SessionEnd {
        self.shutdown.trigger();
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("agent stops within 20 s")
            .expect("agent task")
    }
}

/// Polls `url` (JSON) until `done` holds for it; panics with `what` and the last
/// answer after 10 s. Returns the answer that satisfied `done`.
pub async fn wait_json(
    url: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut answer: serde_json::Value;
    eventually!(
        {
            answer = client()
                .get(url)
                .send()
                .await
                .expect("request")
                .json()
                .await
                .expect("JSON answer");
            done(&answer)
        },
        "{what}; last answer: {answer}"
    );
    answer
}

/// An HTTP client with no proxy and no connection reuse surprises.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Reads an HTTP request head from `tcp` (up to the blank line); None when the
/// connection ends first. For raw upstreams that misbehave on purpose.
pub async fn read_request_head(tcp: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}
