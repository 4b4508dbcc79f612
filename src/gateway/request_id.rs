//! `X-Request-Id`: the client's when it is sane, else a new one, unique without a
//! random draw per request.

use http::{HeaderValue, Request};

use crate::protocol::{self, REQUEST_ID_HEADER};

/// A new request ID: 32 hex digits, a random per-process prefix and a counter.
/// Unique without a random draw (a syscall) per request.
fn new_request_id() -> HeaderValue {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&prefix.to_be_bytes());
    raw[8..].copy_from_slice(&n.to_be_bytes());
    let mut text = [0u8; 32];
    match hex::encode_to_slice(raw, &mut text) {
        Ok(()) => HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("-")),
        Err(_) => HeaderValue::from_static("-"),
    }
}

/// The client's `X-Request-Id` when it is sane, else a new one. Sane: 1 to
/// [`protocol::MAX_REQUEST_ID`] characters of [`is_id_char`], so that an ID
/// cannot forge a field or a line of the log, or break a header upstream.
pub(crate) fn request_id<B>(req: &Request<B>) -> HeaderValue {
    req.headers()
        .get(&REQUEST_ID_HEADER)
        .filter(|v| {
            !v.is_empty()
                && v.len() <= protocol::MAX_REQUEST_ID
                && v.as_bytes().iter().copied().all(is_id_char)
        })
        .cloned()
        .unwrap_or_else(new_request_id)
}

/// What request IDs are made of: letters, digits and `-_.:+/=@` (UUIDs, hex,
/// base64, the IDs of common proxies and tracers); no space, quote or control.
pub(crate) fn is_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+' | b'/' | b'=' | b'@')
}
