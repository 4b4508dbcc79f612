//! The local upstream: where the agent sends each stream's bytes, and the `502`
//! it answers itself when that server cannot be reached.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::AgentError;
use crate::protocol;
use crate::transport::StreamIo;

/// How long to wait for the upstream's TCP connect.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the agent sends traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
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

    /// The upstream as a URL, for logs and the 502 page.
    pub fn display(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

/// One stream: connect to the upstream and copy both ways; or answer 502.
/// Returns once the upstream accepts a TCP connection, trying again every
/// `every`; says so in the log while it waits.
pub(crate) async fn wait_until_up(upstream: &Upstream, every: Duration) {
    let addr = (upstream.host.as_str(), upstream.port);
    let mut told = false;
    loop {
        let connected =
            tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(addr)).await;
        match connected {
            Ok(Ok(_)) => {
                if told {
                    tracing::info!(upstream = %upstream.display(), "the upstream is up");
                }
                return;
            }
            Ok(Err(e)) if !told => {
                tracing::info!(upstream = %upstream.display(), reason = %e, "waiting for the upstream before serving the tunnel (--wait-upstream)");
                told = true;
            }
            _ => {}
        }
        tokio::time::sleep(every).await;
    }
}

pub(crate) async fn splice(mut stream: StreamIo, upstream: Arc<Upstream>) {
    let m = super::metrics::metrics();
    m.streams.inc();
    m.streams_open.inc();
    splice_counted(&mut stream, &upstream).await;
    m.streams_open.dec();
}

async fn splice_counted(stream: &mut StreamIo, upstream: &Upstream) {
    let addr = (upstream.host.as_str(), upstream.port);
    let tcp = match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return unreachable_upstream(stream, upstream, &e.to_string()).await,
        Err(_) => {
            let why = format!("no answer within {UPSTREAM_CONNECT_TIMEOUT:?}");
            return unreachable_upstream(stream, upstream, &why).await;
        }
    };
    let _ = tcp.set_nodelay(true);
    let mut tcp = super::metrics::Counted::new(tcp);
    let copied = tokio::io::copy_bidirectional_with_sizes(
        stream,
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
    super::metrics::metrics().upstream_failures.inc();
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
}
