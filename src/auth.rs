//! Secrets, and the one place where what a peer presents is compared with them.
//!
//! - [`Secret`] holds a token from the configuration and never shows it: `Debug`,
//!   `Display` and `Serialize` print `***`.
//! - Comparisons take the same time wherever the strings differ: both sides are
//!   hashed first (so the secret's length does not leak either) and the digests
//!   compared in constant time.
//! - [`bearer_token`] is the one parser of `Authorization: Bearer ...`, for agents'
//!   tunnel tokens and for the admin token alike.

use std::fmt;

use http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A secret string: printed as `***` by `Debug`, `Display` and `Serialize`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// Whether `presented` is `expected`, in time independent of where they differ.
pub fn secret_matches(expected: &Secret, presented: Option<&str>) -> bool {
    let Some(given) = presented else {
        return false;
    };
    let a = Sha256::digest(expected.expose().as_bytes());
    let b = Sha256::digest(given.as_bytes());
    a.ct_eq(&b).into()
}

/// Whether the SHA-256 of `presented` is `hex_digest` (64 hex digits), in
/// constant time. A malformed digest matches nothing.
pub fn digest_matches(hex_digest: &str, presented: Option<&str>) -> bool {
    let (Some(given), Ok(expected)) = (presented, hex::decode(hex_digest)) else {
        return false;
    };
    let b = Sha256::digest(given.as_bytes());
    expected.as_slice().ct_eq(b.as_slice()).into()
}

/// The token of an `Authorization: Bearer <token>` header, if there is one. The
/// scheme is case-insensitive (RFC 9110 section 11.1); spaces around the token are
/// ignored.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_plain_and_hashed() {
        let s = Secret::new("s3cret");
        assert!(secret_matches(&s, Some("s3cret")));
        assert!(!secret_matches(&s, Some("s3cre")));
        assert!(!secret_matches(&s, None));
        let digest = hex::encode(Sha256::digest(b"s3cret"));
        assert!(digest_matches(&digest, Some("s3cret")));
        assert!(!digest_matches(&digest, Some("other")));
        assert!(!digest_matches("not hex", Some("s3cret")));
    }

    #[test]
    fn secrets_are_masked() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
    }

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        for (value, token) in [
            ("Bearer abc", Some("abc")),
            ("bearer  abc ", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
        ] {
            h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer_token(&h), token, "{value:?}");
        }
    }
}
