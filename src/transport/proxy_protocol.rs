//! The PROXY protocol (HAProxy's, versions 1 and 2), as load balancers send it
//! before a connection's first byte to say whom they carry: read off the start
//! of a connection, never a byte past the header, and parsed by the `ppp` crate.
//!
//! Version 1 is a text line of at most 107 bytes ending in CRLF, read a byte at
//! a time (it is one line per connection, from a proxy); version 2 is a 16-byte
//! head whose last two bytes give the length of the rest.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest version 1 line, CRLF included.
const V1_MAX: usize = 107;
/// The version 2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 2 header the gateway reads (the head, the addresses and
/// a few TLVs; the protocol allows 64 KiB, no proxy sends that much).
const V2_MAX: usize = 16 + 1024;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection did not start with one.
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    /// It started with one that is malformed or too long.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    /// Reading it failed.
    #[error("reading the PROXY protocol header failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY header at the start of `io`: the client's address it names,
/// or `None` when it names none (version 2 `LOCAL`, a proxy's own health check;
/// version 1 `UNKNOWN`; a family other than TCP over IPv4 or IPv6).
pub async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut header = vec![0u8; 1];
    io.read_exact(&mut header).await?;
    match header[0] {
        b'P' => {
            while !header.ends_with(b"\r\n") {
                if header.len() == V1_MAX {
                    return Err(ProxyHeaderError::Malformed(format!(
                        "no CRLF within {V1_MAX} bytes"
                    )));
                }
                let mut byte = [0u8; 1];
                io.read_exact(&mut byte).await?;
                header.push(byte[0]);
            }
        }
        b'\r' => {
            header.resize(16, 0);
            io.read_exact(&mut header[1..]).await?;
            let rest = usize::from(u16::from_be_bytes([header[14], header[15]]));
            if header[..12] != V2_SIGNATURE || 16 + rest > V2_MAX {
                return Err(ProxyHeaderError::Malformed(
                    "bad version 2 signature or length".to_owned(),
                ));
            }
            header.resize(16 + rest, 0);
            io.read_exact(&mut header[16..]).await?;
        }
        _ => return Err(ProxyHeaderError::Missing),
    }
    parse(&header)
}

/// Parses one whole PROXY header (version 1 or 2), exactly as long as it is.
pub fn parse(header: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    use ppp::v2::{Addresses, Command};
    let malformed = |e: &dyn std::fmt::Display| ProxyHeaderError::Malformed(e.to_string());
    if header.starts_with(&V2_SIGNATURE) {
        let h = ppp::v2::Header::try_from(header).map_err(|e| malformed(&e))?;
        if h.len() != header.len() {
            return Err(malformed(&"bytes after the header"));
        }
        if h.command == Command::Local {
            return Ok(None);
        }
        return Ok(match h.addresses {
            Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            Addresses::Unspecified | Addresses::Unix(_) => None,
        });
    }
    let h = ppp::v1::Header::try_from(header).map_err(|e| malformed(&e))?;
    if h.header.len() != header.len() {
        return Err(malformed(&"bytes after the header"));
    }
    Ok(match h.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Unknown => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut io = bytes;
        let header = read_header(&mut io).await;
        (header, io.to_vec())
    }

    #[tokio::test]
    async fn version_1_and_nothing_past_it() {
        let (h, rest) =
            read(b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(h.unwrap(), Some("192.0.2.7:56324".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (h, _) = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n").await;
        assert_eq!(h.unwrap(), Some("[2001:db8::1]:1".parse().unwrap()));
        let (h, rest) = read(b"PROXY UNKNOWN\r\nX").await;
        assert_eq!(h.unwrap(), None);
        assert_eq!(rest, b"X");
    }

    #[tokio::test]
    async fn version_2() {
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend([
            0x21, 0x11, 0, 12, 192, 0, 2, 7, 10, 0, 0, 1, 0xdc, 0x04, 0x01, 0xbb,
        ]);
        v2.extend(b"GET");
        let (h, rest) = read(&v2).await;
        assert_eq!(h.unwrap(), Some("192.0.2.7:56324".parse().unwrap()));
        assert_eq!(rest, b"GET");
        // LOCAL: the proxy's own connection.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(read(&local).await.0.unwrap(), None);
    }

    #[tokio::test]
    async fn refusals() {
        assert!(matches!(
            read(b"GET / HTTP/1.1\r\n").await.0,
            Err(ProxyHeaderError::Missing)
        ));
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(
            read(&long).await.0,
            Err(ProxyHeaderError::Malformed(_))
        ));
        assert!(matches!(
            read(b"PROXY TCP4 999.0.2.7 10.0.0.1 1 2\r\n").await.0,
            Err(ProxyHeaderError::Malformed(_))
        ));
        // Cut short: the connection ended.
        assert!(matches!(
            read(b"PROXY TCP4 192.0.2.7").await.0,
            Err(ProxyHeaderError::Io(_))
        ));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend([0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(
            read(&huge).await.0,
            Err(ProxyHeaderError::Malformed(_))
        ));
    }
}
