//! HTTP Basic for a tunnel's public side (RFC 7617), against argon2 or bcrypt
//! hashes.
//!
//! A password hash is slow on purpose (tens of milliseconds), so:
//! - it runs on the blocking pool, a few at a time ([`VERIFYING`]), never on the
//!   threads that move requests, and a flood of wrong passwords queues there
//!   instead of taking the machine;
//! - a credential that verified is remembered (a keyed digest of the header,
//!   never the password) so a browser's every request does not pay it again;
//!   the memory is bounded and starts afresh on reload;
//! - an unknown user costs a hash all the same, so timing does not tell which
//!   users exist.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use dashmap::DashSet;
use http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::config::{HashScheme, TunnelConfig, parse_credential};

/// Hashes verified at once, gateway-wide.
const VERIFYING: usize = 4;
/// Verified credentials remembered per tunnel; beyond it, the memory starts afresh.
const REMEMBERED: usize = 1024;

/// A tunnel's users and what it remembers of them.
pub(crate) struct Credentials {
    users: HashMap<String, (String, HashScheme)>,
    exempt: Vec<String>,
    /// Keyed digests of `Authorization` values that verified.
    verified: DashSet<[u8; 32]>,
    /// The key of those digests, random per configuration.
    key: [u8; 32],
}

/// Why a request's credentials were not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// None were sent, or not as `Basic`.
    Missing,
    /// They were wrong (unknown user or wrong password: not told apart).
    Wrong,
}

impl Credentials {
    /// The tunnel's credentials, or `None` when it asks for none. Entries were
    /// checked by validation; one that is not valid here is left out (it could
    /// not verify anyway).
    pub(crate) fn of(tunnel: &TunnelConfig) -> Option<Credentials> {
        if tunnel.basic_auth.is_empty() {
            return None;
        }
        let users = tunnel
            .basic_auth
            .iter()
            .filter_map(|entry| parse_credential(entry).ok())
            .map(|(user, hash, scheme)| (user.to_owned(), (hash.to_owned(), scheme)))
            .collect();
        Some(Credentials {
            users,
            exempt: tunnel.auth_exempt.clone(),
            verified: DashSet::new(),
            key: rand::random(),
        })
    }

    /// Whether `path` needs no credentials.
    pub(crate) fn exempts(&self, path: &str) -> bool {
        self.exempt
            .iter()
            .any(|prefix| path.starts_with(prefix.as_str()))
    }

    /// Checks the request's `Authorization: Basic` header.
    pub(crate) async fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(Refusal::Missing)?
            .as_bytes();
        let digest: [u8; 32] = Sha256::new()
            .chain_update(self.key)
            .chain_update(value)
            .finalize()
            .into();
        if self.verified.contains(&digest) {
            return Ok(());
        }
        let (user, password) = basic_credentials(value).ok_or(Refusal::Missing)?;
        let stored = self.users.get(&user).cloned();
        if !verify(password, stored).await {
            return Err(Refusal::Wrong);
        }
        if self.verified.len() >= REMEMBERED {
            self.verified.clear();
        }
        self.verified.insert(digest);
        Ok(())
    }
}

/// The user and password of `Basic <base64(user:password)>`; the scheme is
/// case-insensitive.
fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Verifies `password` against a stored hash, or against a stand-in when the
/// user is unknown (and then fails), on the blocking pool.
async fn verify(password: String, stored: Option<(String, HashScheme)>) -> bool {
    static GATE: OnceLock<Arc<Semaphore>> = OnceLock::new();
    let gate = GATE.get_or_init(|| Arc::new(Semaphore::new(VERIFYING)));
    let Ok(_permit) = gate.clone().acquire_owned().await else {
        return false;
    };
    let work = move || match stored {
        Some((hash, scheme)) => verify_hash(&password, &hash, scheme),
        None => {
            let _ = verify_hash(&password, stand_in(), HashScheme::Argon2);
            false
        }
    };
    tokio::task::spawn_blocking(work).await.unwrap_or(false)
}

fn verify_hash(password: &str, hash: &str, scheme: HashScheme) -> bool {
    match scheme {
        HashScheme::Argon2 => {
            use argon2::PasswordVerifier;
            argon2::PasswordHash::new(hash).is_ok_and(|parsed| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        }
        HashScheme::Bcrypt => bcrypt::verify(password, hash).unwrap_or(false),
    }
}

/// A hash that no password is checked against but that costs what a real one
/// does, for unknown users.
fn stand_in() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password("stand-in").unwrap_or_default())
}

/// An argon2id hash of `password` in the PHC format, with a random salt and the
/// crate's default cost (19 MiB, two passes), for `gateway hash-password`.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::PasswordHasher;
    let salt = argon2::password_hash::SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> HeaderMap {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {token}").parse().unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn argon2_and_bcrypt_users() {
        let mut t = TunnelConfig::open("t");
        let argon = hash_password("pa:ss word").unwrap();
        assert!(argon.starts_with("$argon2id$"));
        let bcrypt = bcrypt::hash("hunter2", 4)
            .unwrap()
            .replacen("$2b$", "$2y$", 1);
        t.basic_auth = vec![format!("alice:{argon}"), format!("bob:{bcrypt}")];
        t.auth_exempt = vec!["/hooks/".into()];
        let c = Credentials::of(&t).unwrap();
        assert_eq!(c.check(&header("alice", "pa:ss word")).await, Ok(()));
        // Remembered: the same header again, without a hash.
        assert_eq!(c.verified.len(), 1);
        assert_eq!(c.check(&header("alice", "pa:ss word")).await, Ok(()));
        assert_eq!(c.check(&header("bob", "hunter2")).await, Ok(()));
        assert_eq!(
            c.check(&header("bob", "hunter3")).await,
            Err(Refusal::Wrong)
        );
        assert_eq!(
            c.check(&header("carol", "hunter2")).await,
            Err(Refusal::Wrong)
        );
        assert_eq!(c.check(&HeaderMap::new()).await, Err(Refusal::Missing));
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(c.check(&bearer).await, Err(Refusal::Missing));
        assert!(c.exempts("/hooks/github"));
        assert!(!c.exempts("/hook"));
    }

    #[test]
    fn the_basic_header_is_read_leniently() {
        assert_eq!(
            basic_credentials(b"basic  YTpiOmM= "),
            Some(("a".into(), "b:c".into()))
        );
        assert_eq!(basic_credentials(b"Basic !!!"), None);
        assert_eq!(basic_credentials(b"Basic YWJj"), None);
    }
}
