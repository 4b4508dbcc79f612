//! `gateway-agent`: dials the gateway, keeps the tunnel up, and splices every
//! stream the gateway opens to a TCP connection to the local upstream.
//!
//! The agent parses no HTTP. Its one exception is the answer it writes when the
//! upstream cannot be reached: a complete `502` response that says which address
//! and why, so that the person at the browser knows what to fix.
//!
//! [`connect`] returns only after the gateway's hello (so callers need no sleep);
//! [`Connected::serve`] runs the session; [`run`] does both forever, reconnecting
//! with exponential backoff and full jitter, until a shutdown or a refusal that
//! retrying cannot fix.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::HeaderValue;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::Secret;
use crate::protocol::{self, Hello, REASON_HEADER, SUBPROTOCOL, TUNNEL_HEADER, UPSTREAM_HEADER};
use crate::shutdown::signalled;
use crate::transport::{self, Session, SessionEnd, Signals, StreamIo, WsIo};

/// First reconnect delay (before jitter).
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A connection that lived this long resets the backoff.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);
/// How long to wait for the gateway's handshake and hello.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the upstream's TCP connect.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default grace period for open streams on SIGTERM.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// The agent's settings (flags, or the TOML file given with `--config`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// WebSocket URL of the gateway, e.g. `ws://127.0.0.1:3000/ws` or `wss://...`.
    pub gateway: String,
    /// Tunnel ID to serve.
    pub tunnel: String,
    /// The tunnel's token, if it has one.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Where requests go: `http://127.0.0.1:8000`, `127.0.0.1:8000` or `8000`.
    pub upstream: String,
    /// On SIGTERM, how long open streams may take to finish.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub grace: Duration,
}

fn default_grace() -> Duration {
    DEFAULT_GRACE
}

/// Agent file settings, each optional so flags can fill or override them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// One URL, or a list: the agent keeps one connection to each gateway.
    pub gateway: Option<OneOrMany>,
    pub tunnel: Option<String>,
    pub token: Option<Secret>,
    pub upstream: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub grace: Option<Duration>,
}

impl AgentFile {
    pub fn load(path: &Path) -> Result<AgentFile, AgentError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AgentError::Config(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| AgentError::Config(format!("{}: {}", path.display(), e.message())))
    }
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Where the agent sends traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

impl Upstream {
    /// Accepts `http://host:port[/]`, `host:port` or a bare port (on 127.0.0.1).
    pub fn parse(s: &str) -> Result<Upstream, AgentError> {
        let bad = |why: &str| {
            AgentError::Config(format!(
                "--upstream {s:?} is invalid: {why}; expected http://HOST:PORT, HOST:PORT or PORT"
            ))
        };
        if s.starts_with("https://") {
            return Err(bad(
                "the agent does not speak TLS to the upstream; use http:// to a local server",
            ));
        }
        let rest = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
        if rest.contains('/') {
            return Err(bad("a path is not supported"));
        }
        if let Ok(port) = rest.parse::<u16>() {
            return Ok(Upstream {
                host: "127.0.0.1".into(),
                port,
            });
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !h.ends_with(':') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))?,
            ),
            _ if s.starts_with("http://") && !rest.is_empty() && !rest.contains(':') => (rest, 80),
            _ => return Err(bad("no port")),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Upstream {
            host: host.to_owned(),
            port,
        })
    }

    pub fn display(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad settings: fix and restart.
    #[error("{0}")]
    Config(String),
    /// The gateway refused the agent for a reason that retrying cannot fix.
    #[error("the gateway refused the agent ({status}): {reason}")]
    Refused { status: u16, reason: String },
    /// Anything worth retrying: network errors, a gateway restarting.
    #[error("{0}")]
    Transient(String),
}

impl AgentError {
    pub fn is_fatal(&self) -> bool {
        !matches!(self, AgentError::Transient(_))
    }
}

/// A session with the gateway, after the hello.
pub struct Connected {
    pub hello: Hello,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// Dials the gateway and waits for its hello.
pub async fn connect(cfg: &AgentConfig) -> Result<Connected, AgentError> {
    // rustls needs a process-wide crypto provider for wss://; ours is ring. An
    // error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut request =
        cfg.gateway.as_str().into_client_request().map_err(|e| {
            AgentError::Config(format!("--gateway {:?} is invalid: {e}", cfg.gateway))
        })?;
    let upstream = Upstream::parse(&cfg.upstream)?;
    let h = request.headers_mut();
    let header = |v: &str| {
        HeaderValue::from_str(v)
            .map_err(|_| AgentError::Config(format!("{v:?} cannot be sent as a header")))
    };
    h.insert(TUNNEL_HEADER, header(&cfg.tunnel)?);
    h.insert(UPSTREAM_HEADER, header(&upstream.display())?);
    h.insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    if let Some(token) = &cfg.token {
        h.insert(
            http::header::AUTHORIZATION,
            header(&format!("Bearer {}", token.expose()))?,
        );
    }

    let dial = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(transport::ws_config()),
        true, // TCP_NODELAY
        None,
    );
    let (mut ws, _) = match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
        Err(_) => {
            return Err(AgentError::Transient(format!(
                "no answer from {} within {:?}",
                cfg.gateway, CONNECT_TIMEOUT
            )));
        }
        Ok(Err(e)) => return Err(classify(e)),
        Ok(Ok(pair)) => pair,
    };
    let first = tokio::time::timeout(CONNECT_TIMEOUT, ws.next()).await;
    let hello = match first {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<Hello>(text.as_str())
            .map_err(|e| AgentError::Transient(format!("the gateway's hello is malformed: {e}")))?,
        Ok(Some(Ok(other))) => {
            return Err(AgentError::Transient(format!(
                "expected the gateway's hello, got {other:?}"
            )));
        }
        Ok(Some(Err(e))) => return Err(AgentError::Transient(e.to_string())),
        Ok(None) => {
            return Err(AgentError::Transient(
                "the gateway closed the connection".into(),
            ));
        }
        Err(_) => return Err(AgentError::Transient("the gateway sent no hello".into())),
    };
    Ok(Connected { hello, ws })
}

fn classify(e: tungstenite::Error) -> AgentError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let reason = resp
                .headers()
                .get(REASON_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .or_else(|| {
                    resp.body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                })
                .unwrap_or_else(|| "no reason given".into());
            match status {
                400 | 401 | 403 | 404 => AgentError::Refused { status, reason },
                _ => AgentError::Transient(format!("the gateway answered {status}: {reason}")),
            }
        }
        tungstenite::Error::Url(e) => AgentError::Config(format!("--gateway is invalid: {e}")),
        other => AgentError::Transient(other.to_string()),
    }
}

impl Connected {
    /// Serves the gateway's streams until the session ends or `shutdown` fires
    /// (then drains: tells the gateway, lets streams finish within `grace`).
    pub async fn serve(
        self,
        upstream: Upstream,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) -> SessionEnd {
        let signals = Arc::new(Signals::default());
        let heartbeat = Duration::from_secs(self.hello.heartbeat_secs.max(1));
        let io = WsIo::new(self.ws, Some(heartbeat), CloseCode::Away, signals.clone());
        let upstream = Arc::new(upstream);
        let session = Session::server(io, signals, move |stream| {
            tokio::spawn(splice(stream, upstream.clone()));
        });
        session
            .run(async move { signalled(&mut shutdown).await }, grace)
            .await
    }
}

/// One stream: connect to the upstream and copy both ways; or answer 502.
async fn splice(mut stream: StreamIo, upstream: Arc<Upstream>) {
    let addr = (upstream.host.as_str(), upstream.port);
    let tcp = match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return unreachable_upstream(&mut stream, &upstream, &e.to_string()).await,
        Err(_) => {
            let why = format!("no answer within {UPSTREAM_CONNECT_TIMEOUT:?}");
            return unreachable_upstream(&mut stream, &upstream, &why).await;
        }
    };
    let _ = tcp.set_nodelay(true);
    let mut tcp = tcp;
    let copied = tokio::io::copy_bidirectional_with_sizes(
        &mut stream,
        &mut tcp,
        protocol::COPY_BUFFER,
        protocol::COPY_BUFFER,
    )
    .await;
    if let Err(e) = copied {
        tracing::debug!(stream = stream.id(), error = %e, "stream ended with an error");
    }
}

async fn unreachable_upstream(stream: &mut StreamIo, upstream: &Upstream, why: &str) {
    tracing::warn!(upstream = %upstream.display(), reason = %why, "cannot reach the upstream");
    let body = format!(
        "502 Bad Gateway\n\nThe gateway agent could not reach the upstream at {} ({}:{}): {}.\n\
         Is the local server running? Start it (for Laravel: php artisan serve --port {}) or point the agent at the right address with --upstream.\n",
        upstream.display(),
        upstream.host,
        upstream.port,
        why,
        upstream.port,
    );
    let head = format!(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\nx-gateway-error: upstream_unreachable\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Connects and serves forever: reconnects on network errors and when the gateway
/// goes away; returns `Ok` after a shutdown, `Err` on a refusal retrying cannot fix.
pub async fn run(cfg: AgentConfig, mut shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
    let upstream = Upstream::parse(&cfg.upstream)?;
    let mut failures: u32 = 0;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let attempt = tokio::select! {
            r = connect(&cfg) => r,
            _ = signalled(&mut shutdown) => return Ok(()),
        };
        match attempt {
            Ok(connected) => {
                tracing::info!(
                    gateway = %cfg.gateway,
                    tunnel = %connected.hello.tunnel,
                    connection = %connected.hello.connection_id,
                    upstream = %upstream.display(),
                    "connected to {} as tunnel {}, connection {}",
                    cfg.gateway, connected.hello.tunnel, connected.hello.connection_id
                );
                let since = Instant::now();
                let end = connected
                    .serve(upstream.clone(), shutdown.clone(), cfg.grace)
                    .await;
                match end {
                    SessionEnd::Drained { unfinished_streams } => {
                        tracing::info!(unfinished_streams, "disconnected from the gateway");
                        return Ok(());
                    }
                    SessionEnd::Closed => {
                        tracing::warn!("the gateway closed the tunnel; reconnecting")
                    }
                    SessionEnd::Failed(reason) => {
                        tracing::warn!(%reason, "tunnel lost; reconnecting")
                    }
                }
                if since.elapsed() >= BACKOFF_RESET_AFTER {
                    failures = 0;
                }
            }
            Err(e) if e.is_fatal() => {
                tracing::error!(error = %e, "giving up");
                return Err(e);
            }
            Err(e) => {
                let level_warn = failures < 3 || failures.is_multiple_of(10);
                if level_warn {
                    tracing::warn!(error = %e, attempt = failures + 1, "cannot connect to the gateway");
                } else {
                    tracing::debug!(error = %e, attempt = failures + 1, "cannot connect to the gateway");
                }
            }
        }
        let delay = backoff(failures);
        failures = failures.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = signalled(&mut shutdown) => return Ok(()),
        }
    }
}

/// Full jitter: a random delay between 0 and `min(cap, base * 2^failures)`.
pub fn backoff(failures: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << failures.min(16))
        .min(BACKOFF_CAP);
    let nanos = ceiling.as_nanos() as u64;
    Duration::from_nanos(rand::random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_forms() {
        let u = Upstream::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8000));
        assert_eq!(Upstream::parse("8000").unwrap().port, 8000);
        assert_eq!(
            Upstream::parse("localhost:9000/").unwrap().host,
            "localhost"
        );
        assert_eq!(Upstream::parse("http://app").unwrap().port, 80);
        assert!(Upstream::parse("https://x:1").is_err());
        assert!(Upstream::parse("http://x:1/path").is_err());
        assert!(Upstream::parse("x:notaport").is_err());
    }

    #[test]
    fn backoff_is_bounded() {
        for f in 0..40 {
            assert!(backoff(f) <= BACKOFF_CAP);
        }
        assert!(backoff(0) <= BACKOFF_BASE);
    }
}
