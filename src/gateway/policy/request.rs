//! What every public request must be before the gateway routes it: one Host that
//! is a host name (the target's authority, when the target is an absolute URI), a
//! target of bounded length, a method and a body framing the gateway can carry.
//! Checked first, for the gateway's own endpoints as for the proxy, so that
//! routing and policy never look at an ambiguous request. hyper has already
//! refused what HTTP/1.1 forbids outright (conflicting lengths, obs-fold, bad
//! chunk sizes, heads over `limits.max_header_bytes`).

use http::header::{HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Request, Uri, Version};

use super::super::error::ErrorKind;
use crate::config::Limits;

/// Checks `req`, and gives it the Host its absolute-form target names.
pub(crate) fn check<B>(req: &mut Request<B>, limits: &Limits) -> Result<(), ErrorKind> {
    if req.method() == Method::CONNECT {
        return Err(ErrorKind::NotImplemented(
            "CONNECT is not supported: the gateway forwards HTTP requests to tunnels, it is not a forward proxy",
        ));
    }
    if uri_length(req.uri()) > limits.max_uri_length {
        return Err(ErrorKind::UriTooLong(limits.max_uri_length));
    }
    transfer_coding(req.headers())?;
    host(req)
}

/// The length of the target as the client wrote it.
fn uri_length(uri: &Uri) -> u64 {
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + "://".len());
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let rest = uri.path_and_query().map_or(0, |p| p.as_str().len());
    (scheme + authority + rest) as u64
}

/// `Transfer-Encoding`, when present, is `chunked` once and nothing else: the
/// gateway decodes chunked bodies and cannot undo any other coding, which the
/// upstream would then receive without being told.
fn transfer_coding(headers: &HeaderMap) -> Result<(), ErrorKind> {
    let mut chunked = 0;
    for value in headers.get_all(TRANSFER_ENCODING) {
        let codings = value
            .to_str()
            .map_err(|_| bad("The Transfer-Encoding header is not ASCII"))?;
        for coding in codings.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err(ErrorKind::NotImplemented(
                    "A Transfer-Encoding other than chunked is not supported: send the body with Content-Length or chunked",
                ));
            }
            chunked += 1;
        }
    }
    if chunked > 1 {
        return Err(bad("Transfer-Encoding names chunked more than once"));
    }
    Ok(())
}

/// One valid Host (RFC 9112 section 3.2: HTTP/1.1 requires it, even with an
/// absolute-form target, whose authority then replaces it). An HTTP/1.0 request
/// may come without one: an absolute-form target gives it one, else the proxy
/// refuses it and the gateway's own endpoints do not need it.
fn host<B>(req: &mut Request<B>) -> Result<(), ErrorKind> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err(bad("The request has more than one Host header"));
    }
    match first {
        None if req.version() != Version::HTTP_10 => {
            return Err(bad("The Host header is missing: HTTP/1.1 requires one"));
        }
        Some(value) if !valid_host(value.as_bytes()) => {
            return Err(bad("The Host header is not a valid host name"));
        }
        _ => {}
    }
    if let Some(authority) = req.uri().authority() {
        let value = HeaderValue::from_str(authority.as_str())
            .ok()
            .filter(|v| valid_host(v.as_bytes()))
            .ok_or_else(|| bad("The request target's host is not a valid host name"))?;
        req.headers_mut().insert(HOST, value);
    }
    Ok(())
}

/// `name[:port]` or `[v6][:port]`: a DNS name (letters, digits, `-`, `_`, dots
/// between non-empty labels, one trailing dot allowed) or an IP literal, and a
/// port of at most 65535 (empty allowed, as RFC 3986 does).
pub(crate) fn valid_host(h: &[u8]) -> bool {
    let (name, port) = if h.first() == Some(&b'[') {
        let Some(end) = h.iter().position(|&b| b == b']') else {
            return false;
        };
        let inside = &h[1..end];
        let v6 = !inside.is_empty()
            && inside
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
        if !v6 {
            return false;
        }
        (None, &h[end + 1..])
    } else {
        match h.iter().rposition(|&b| b == b':') {
            Some(i) => (Some(&h[..i]), &h[i..]),
            None => (Some(h), &h[h.len()..]),
        }
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => {
            digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && digits
                    .iter()
                    .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
                    <= u32::from(u16::MAX)
        }
        _ => false,
    };
    port_ok && name.is_none_or(valid_name)
}

fn valid_name(name: &[u8]) -> bool {
    let name = name.strip_suffix(b".").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        })
}

fn bad(why: &'static str) -> ErrorKind {
    ErrorKind::BadRequest(why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::valid_host;

    #[test]
    fn host_names() {
        for ok in [
            "example.com",
            "APP.tunnels.example.com.",
            "localhost:3000",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "my_host",
            "x:",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok} should be valid");
        }
        for bad in [
            "",
            "a b",
            "a\tb",
            "a/b",
            "a\\b",
            "user@host",
            "a..b",
            ".a",
            "a:99999",
            "a:8o",
            "a:b:c",
            "[::1",
            "[]",
            "[zz]",
            "[::1]x",
            "é.example",
            "a\0b",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?} should be invalid");
        }
    }
}
