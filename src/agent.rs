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
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::auth::Secret;
use crate::protocol::{self, Hello, REASON_HEADER, SUBPROTOCOL, TUNNEL_HEADER, UPSTREAM_HEADER};
use crate::shutdown::signalled;
use crate::transport::{Role, Session, SessionEnd, Signals, StreamIo, WsIo, close_code, ws_io};

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

/// The WebSocket to the gateway, after the upgrade.
type GatewayIo = TokioIo<Upgraded>;

/// A session with the gateway, after the hello.
pub struct Connected {
    pub hello: Hello,
    ws: WsIo<GatewayIo>,
    signals: Arc<Signals>,
}

/// Dials the gateway and waits for its hello.
pub async fn connect(cfg: &AgentConfig) -> Result<Connected, AgentError> {
    let target = GatewayUrl::parse(&cfg.gateway)?;
    let upstream = Upstream::parse(&cfg.upstream)?;
    let header = |v: &str| {
        HeaderValue::from_str(v)
            .map_err(|_| AgentError::Config(format!("{v:?} cannot be sent as a header")))
    };
    let key = ws_io::client_key();
    let mut request = Request::get(target.path_and_query.as_str())
        .header(header::HOST, header(&target.authority)?)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, header(&key)?)
        .header(header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL)
        .header(
            header::USER_AGENT,
            concat!("gateway-agent/", env!("CARGO_PKG_VERSION")),
        )
        .header(TUNNEL_HEADER, header(&cfg.tunnel)?)
        .header(UPSTREAM_HEADER, header(&upstream.display())?)
        .body(Empty::<Bytes>::new())
        .map_err(|e| AgentError::Config(format!("cannot build the handshake: {e}")))?;
    if let Some(token) = &cfg.token {
        request.headers_mut().insert(
            header::AUTHORIZATION,
            header(&format!("Bearer {}", token.expose()))?,
        );
    }

    let handshake = async {
        let io = target.dial().await?;
        let upgraded = upgrade(io, request, &key).await?;
        let signals = Arc::new(Signals::default());
        // The gateway's heartbeat is not known before its hello; `serve` starts
        // the pings once it is.
        let mut ws = WsIo::new(
            upgraded,
            Role::Client,
            None,
            close_code::AWAY,
            signals.clone(),
        );
        let text = ws
            .recv_text()
            .await
            .map_err(|e| AgentError::Transient(format!("no hello from the gateway: {e}")))?;
        let hello = Hello::parse(&text)
            .map_err(|e| AgentError::Transient(format!("the gateway's hello is malformed: {e}")))?;
        Ok::<_, AgentError>(Connected { hello, ws, signals })
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
        Ok(r) => r,
        Err(_) => Err(AgentError::Transient(format!(
            "no answer from {} within {:?}",
            cfg.gateway, CONNECT_TIMEOUT
        ))),
    }
}

/// A parsed `--gateway` URL.
struct GatewayUrl {
    tls: bool,
    host: String,
    port: u16,
    /// `host[:port]` as written, for the Host header.
    authority: String,
    path_and_query: String,
}

impl GatewayUrl {
    fn parse(url: &str) -> Result<GatewayUrl, AgentError> {
        let bad = |why: &str| {
            AgentError::Config(format!(
                "--gateway {url:?} is invalid: {why}; expected ws://HOST[:PORT]/ws or wss://HOST[:PORT]/ws"
            ))
        };
        let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            Some(other) => return Err(bad(&format!("the scheme is {other}://"))),
            None => return Err(bad("no scheme")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "user info is not supported; pass the token with --token",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(GatewayUrl {
            tls,
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
            path_and_query: uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
        })
    }

    /// TCP (and TLS for wss://) to the gateway.
    async fn dial(&self) -> Result<Box<dyn Io>, AgentError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| {
                AgentError::Transient(format!("cannot reach {}:{}: {e}", self.host, self.port))
            })?;
        let _ = tcp.set_nodelay(true);
        if !self.tls {
            return Ok(Box::new(tcp));
        }
        let name = rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|e| {
            AgentError::Config(format!("{:?} is not a TLS server name: {e}", self.host))
        })?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                AgentError::Transient(format!(
                    "TLS handshake with {}:{} failed: {e}",
                    self.host, self.port
                ))
            })?;
        Ok(Box::new(tls))
    }
}

/// What the agent's WebSocket runs on: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// The TLS client settings: the system's trusted roots (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` are honoured), loaded once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, AgentError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            // rustls needs a process-wide crypto provider; ours is ring. An error
            // only means one is installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(format!(
                    "no trusted root certificates found for wss:// (install ca-certificates, or set SSL_CERT_FILE){}",
                    found
                        .errors
                        .first()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ));
            }
            Ok(Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            ))
        })
        .clone()
        .map_err(AgentError::Config)
}

/// Sends the upgrade request and checks the answer; a refusal becomes an error
/// carrying the gateway's reason.
async fn upgrade(
    io: Box<dyn Io>,
    request: Request<Empty<Bytes>>,
    key: &str,
) -> Result<GatewayIo, AgentError> {
    let transient =
        |e: hyper::Error| AgentError::Transient(format!("handshake with the gateway failed: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(transient)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let resp = sender.send_request(request).await.map_err(transient)?;
    let status = resp.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let reason = resp
            .headers()
            .get(REASON_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let reason = match reason {
            Some(r) => r,
            None => match Limited::new(resp.into_body(), 4096).collect().await {
                Ok(body) => String::from_utf8_lossy(&body.to_bytes()).trim().to_owned(),
                Err(_) => String::new(),
            },
        };
        let reason = if reason.is_empty() {
            "no reason given".into()
        } else {
            reason
        };
        let status = status.as_u16();
        return Err(match status {
            400 | 401 | 403 | 404 => AgentError::Refused { status, reason },
            _ => AgentError::Transient(format!("the gateway answered {status}: {reason}")),
        });
    }
    let accept = resp
        .headers()
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .and_then(|v| v.to_str().ok());
    if accept != Some(ws_io::accept_key(key).as_str()) {
        return Err(AgentError::Transient(
            "the WebSocket handshake is invalid (Sec-WebSocket-Accept does not match); is --gateway a gateway?".into(),
        ));
    }
    let protocol = resp
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    if let Some(p) = protocol
        && p != SUBPROTOCOL
    {
        return Err(AgentError::Transient(format!(
            "the gateway chose protocol {p:?}, not {SUBPROTOCOL}"
        )));
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| AgentError::Transient(format!("the WebSocket upgrade failed: {e}")))?;
    Ok(TokioIo::new(upgraded))
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
        let heartbeat = Duration::from_secs(self.hello.heartbeat_secs.max(1));
        let io = self.ws.with_heartbeat(Some(heartbeat));
        let upstream = Arc::new(upstream);
        let session = Session::server(io, self.signals, move |stream| {
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
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n{}: upstream_unreachable\r\n\r\n",
        body.len(),
        protocol::GATEWAY_ERROR_HEADER,
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
    fn gateway_urls() {
        let u = GatewayUrl::parse("ws://127.0.0.1:3000/ws").unwrap();
        assert!(!u.tls);
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 3000));
        assert_eq!(
            (u.authority.as_str(), u.path_and_query.as_str()),
            ("127.0.0.1:3000", "/ws")
        );
        let u = GatewayUrl::parse("wss://gw.example.com/ws?x=1").unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("gw.example.com", 443));
        assert_eq!(u.path_and_query, "/ws?x=1");
        let u = GatewayUrl::parse("ws://[::1]:8080").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path_and_query.as_str()),
            ("::1", 8080, "/")
        );
        for bad in [
            "http://gw/ws",
            "gw:3000",
            "ws:///ws",
            "ws://user:pw@gw/ws",
            "not a url",
        ] {
            let err = GatewayUrl::parse(bad).err().expect(bad).to_string();
            assert!(err.starts_with("--gateway"), "{bad}: {err}");
        }
    }

    #[test]
    fn backoff_is_bounded() {
        for f in 0..40 {
            assert!(backoff(f) <= BACKOFF_CAP);
        }
        assert!(backoff(0) <= BACKOFF_BASE);
    }
}
