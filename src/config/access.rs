//! The access-policy keys of a tunnel (`basic_auth`, `allow_ips`, `deny_ips`,
//! `rate_limit`) as they are written, and the one parser of each, shared by
//! validation (which reports every bad entry) and the gateway's policy (which
//! compiles a valid configuration).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::diagnose::duration;

/// `rate_limit = { requests = 100, per = "1s", burst = 200, key = "client_ip" }`:
/// a token bucket that refills `requests` tokens every `per` and holds at most
/// `burst` (by default `requests`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests allowed per `per`.
    pub requests: u32,
    /// The period `requests` refill over.
    #[serde(default = "default_per", with = "duration")]
    pub per: Duration,
    /// Requests that may come at once after a quiet spell (default: `requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// One bucket per client address, or one for the whole tunnel.
    #[serde(default)]
    pub key: RateKey,
}

/// `deserialize_with` for `rate_limit`: says what one looks like.
pub(crate) fn expect_rate_limit<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<RateLimit>, D::Error> {
    Option::<RateLimit>::deserialize(d).map_err(|e| {
        serde::de::Error::custom(format!(
            "{e}: expected {{ requests = 100, per = \"1s\", burst = 200, key = \"client_ip\" or \"tunnel\" }}"
        ))
    })
}

fn default_per() -> Duration {
    Duration::from_secs(1)
}

/// What a rate limit counts by.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RateKey {
    /// A bucket per client address (per /64 for IPv6, which a client gets whole).
    #[default]
    ClientIp,
    /// One bucket for the tunnel, whoever asks.
    Tunnel,
}

impl RateLimit {
    /// The bucket's capacity and refill, or what is wrong with them.
    pub fn quota(&self) -> Result<(NonZeroU32, Duration), String> {
        let requests = NonZeroU32::new(self.requests)
            .ok_or("requests = 0 would refuse every request: expected at least 1")?;
        let burst = match self.burst {
            None => requests,
            Some(b) => NonZeroU32::new(b)
                .ok_or("burst = 0 would refuse every request: expected at least 1")?,
        };
        if self.per.is_zero() {
            return Err("per = \"0s\" is invalid: expected a period such as \"1s\"".to_owned());
        }
        let every = self.per / requests.get();
        if every.is_zero() {
            return Err(format!(
                "{} requests per {} is more than one a nanosecond",
                requests,
                humantime::format_duration(self.per)
            ));
        }
        Ok((burst, every))
    }
}

/// An `allow_ips` / `deny_ips` entry: a network (`10.0.0.0/8`, `2001:db8::/32`)
/// or one address.
pub fn parse_net(entry: &str) -> Result<IpNet, String> {
    let entry = entry.trim();
    if let Ok(net) = entry.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    entry.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        format!(
            "{entry:?} is not an address or a network: expected one such as \"192.0.2.7\", \"10.0.0.0/8\" or \"2001:db8::/32\""
        )
    })
}

/// The hash schemes `basic_auth` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashScheme {
    /// Argon2 (id, i or d) in the PHC string format, as `gateway hash-password`
    /// prints.
    Argon2,
    /// bcrypt (`$2y$`, `$2b$`, `$2a$`), as `htpasswd -B` writes.
    Bcrypt,
}

/// A `basic_auth` entry, `user:hash`: the user and the hash, or what is wrong
/// (without repeating the hash).
pub fn parse_credential(entry: &str) -> Result<(&str, &str, HashScheme), String> {
    let Some((user, hash)) = entry.split_once(':') else {
        return Err(
            "expected \"user:hash\", with a hash from `gateway hash-password` or `htpasswd -nB`"
                .to_owned(),
        );
    };
    if user.is_empty() || user.chars().any(|c| c.is_control()) {
        return Err("the user name is empty or holds control characters".to_owned());
    }
    let scheme = if hash.starts_with("$argon2") {
        let malformed =
            |why: String| format!("the argon2 hash of user {user:?} is malformed ({why})");
        let parsed = argon2::PasswordHash::new(hash).map_err(|e| malformed(e.to_string()))?;
        argon2::Algorithm::try_from(parsed.algorithm).map_err(|e| malformed(e.to_string()))?;
        argon2::Params::try_from(&parsed).map_err(|e| malformed(e.to_string()))?;
        if parsed.salt.is_none() || parsed.hash.is_none() {
            return Err(malformed("it has no salt or no hash".to_owned()));
        }
        HashScheme::Argon2
    } else if hash.starts_with("$2") {
        hash.parse::<bcrypt::HashParts>()
            .map_err(|e| format!("the bcrypt hash of user {user:?} is malformed ({e})"))?;
        HashScheme::Bcrypt
    } else {
        return Err(format!(
            "user {user:?} has no password hash: expected an argon2 hash ($argon2id$...) from `gateway hash-password` or a bcrypt one ($2y$...) from `htpasswd -nB`, never a password"
        ));
    };
    Ok((user, hash, scheme))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_addresses() {
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert_eq!(
            parse_net(" 192.0.2.7 ").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("example.com").is_err());
    }

    #[test]
    fn credentials_need_a_hash() {
        let bcrypt = bcrypt::hash("pw", 4).unwrap().replacen("$2b$", "$2y$", 1);
        assert_eq!(
            parse_credential(&format!("bob:{bcrypt}")).unwrap().2,
            HashScheme::Bcrypt
        );
        let e = parse_credential("alice:hunter2").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(parse_credential("alice").is_err());
        assert!(parse_credential(":$2y$05$x").is_err());
        assert!(parse_credential("alice:$argon2id$nonsense").is_err());
    }

    #[test]
    fn quotas() {
        let r = RateLimit {
            requests: 10,
            per: Duration::from_secs(1),
            burst: None,
            key: RateKey::ClientIp,
        };
        let (burst, every) = r.quota().unwrap();
        assert_eq!((burst.get(), every), (10, Duration::from_millis(100)));
        assert!(
            RateLimit {
                requests: 0,
                ..r.clone()
            }
            .quota()
            .is_err()
        );
        assert!(
            RateLimit {
                burst: Some(0),
                ..r.clone()
            }
            .quota()
            .is_err()
        );
        assert!(
            RateLimit {
                per: Duration::ZERO,
                ..r
            }
            .quota()
            .is_err()
        );
    }
}
