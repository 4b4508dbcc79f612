//! Reaching the gateway: its URL, TCP (and TLS for `wss://`), the WebSocket
//! handshake, and the hello. [`connect`] returns only once the hello is in, so
//! callers need no sleep.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::upstream::Upstream;
use super::{AgentConfig, AgentError, Connected};
use crate::protocol::{Hello, REASON_HEADER};
use crate::transport::ws::handshake;
use crate::transport::{Role, WsIo, close_code};

/// How long to wait for the gateway's handshake and hello.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The WebSocket to the gateway, after the upgrade.
pub(crate) type GatewayIo = TokioIo<Upgraded>;

/// Dials the gateway and waits for its hello.
pub async fn connect(cfg: &AgentConfig) -> Result<Connected, AgentError> {
    let target = GatewayUrl::parse(&cfg.gateway)?;
    let upstream = Upstream::parse(&cfg.upstream)?;
    let key = handshake::client_key();
    let request = handshake::client_request(
        &target.authority,
        &target.path_and_query,
        &cfg.tunnel,
        cfg.token.as_ref(),
        &upstream.display(),
        &key,
    )
    .map_err(|e| AgentError::Config(e.to_string()))?;

    let handshake = async {
        let io = target.dial().await?;
        let upgraded = upgrade(io, request, &key).await?;
        // The gateway's heartbeat is not known before its hello; `serve` starts
        // the pings once it is.
        let mut ws = WsIo::new(upgraded, Role::Client, None, close_code::AWAY);
        let text = ws
            .recv_text()
            .await
            .map_err(|e| AgentError::Transient(format!("no hello from the gateway: {e}")))?;
        let hello = Hello::parse(&text)
            .map_err(|e| AgentError::Transient(format!("the gateway's hello is malformed: {e}")))?;
        Ok::<_, AgentError>(Connected { hello, ws })
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
    handshake::check_response(resp.headers(), key)
        .map_err(|e| AgentError::Transient(e.to_string()))?;
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| AgentError::Transient(format!("the WebSocket upgrade failed: {e}")))?;
    Ok(TokioIo::new(upgraded))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
