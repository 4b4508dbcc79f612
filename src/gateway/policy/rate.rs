//! `rate_limit`: token buckets (GCRA, from `governor`), one per tunnel or one
//! per client address.
//!
//! Per-client buckets are bounded: at most [`MAX_CLIENTS`] addresses have one
//! (IPv6 counted per /64, which one client gets whole). When the table is full,
//! buckets back at their resting state are dropped; if it is still full, clients
//! without a bucket share one overflow bucket, so an attacker rotating addresses
//! neither grows the memory nor escapes the limit, and competes only with other
//! newcomers while the table is full.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::{RateKey, RateLimit};

/// Client addresses with a bucket of their own, per tunnel (about 5 MiB).
pub(crate) const MAX_CLIENTS: usize = 100_000;

/// A tunnel's rate limit.
pub(crate) struct Limiter {
    /// What it was built from: a reload with the same keeps the buckets.
    pub(crate) config: RateLimit,
    buckets: Buckets,
}

enum Buckets {
    Tunnel(DefaultDirectRateLimiter),
    Clients {
        limiter: RateLimiter<IpAddr, CappedStore<IpAddr>, DefaultClock>,
        /// When the table was last swept (milliseconds since `epoch`), so that a
        /// full table is swept at most once a second.
        swept: AtomicU64,
        epoch: Instant,
    },
}

impl Limiter {
    /// The limiter for a validated `rate_limit`; `None` if it is not valid.
    pub(crate) fn new(config: &RateLimit) -> Option<Limiter> {
        let (burst, every) = config.quota().ok()?;
        let quota = Quota::with_period(every)?.allow_burst(burst);
        let buckets = match config.key {
            RateKey::Tunnel => Buckets::Tunnel(RateLimiter::direct(quota)),
            RateKey::ClientIp => Buckets::Clients {
                limiter: RateLimiter::new(
                    quota,
                    CappedStore::new(MAX_CLIENTS),
                    DefaultClock::default(),
                ),
                swept: AtomicU64::new(0),
                epoch: Instant::now(),
            },
        };
        Some(Limiter {
            config: config.clone(),
            buckets,
        })
    }

    /// Takes a token for `client`, or says how long until one is there.
    pub(crate) fn check(&self, client: IpAddr) -> Result<(), Duration> {
        // The limiter's own clock: making one (quanta calibrates it) costs
        // far more than the check.
        match &self.buckets {
            Buckets::Tunnel(limiter) => limiter
                .check()
                .map_err(|not_until| not_until.wait_time_from(limiter.clock().now())),
            Buckets::Clients {
                limiter,
                swept,
                epoch,
            } => {
                if limiter.len() >= MAX_CLIENTS {
                    let now = epoch.elapsed().as_millis() as u64;
                    let last = swept.load(Ordering::Relaxed);
                    if now.saturating_sub(last) >= 1000
                        && swept
                            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                            .is_ok()
                    {
                        limiter.retain_recent();
                    }
                }
                limiter
                    .check_key(&bucket_key(client))
                    .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
            }
        }
    }

    /// Client addresses with a bucket now.
    #[cfg(test)]
    fn clients(&self) -> usize {
        match &self.buckets {
            Buckets::Tunnel(_) => 0,
            Buckets::Clients { limiter, .. } => limiter.len(),
        }
    }
}

/// The bucket of an address: itself for IPv4, its /64 for IPv6.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// Buckets by key, at most `cap` of them; keys beyond share `overflow`.
struct CappedStore<K: Hash + Eq + Clone> {
    map: DashMapStateStore<K>,
    overflow: InMemoryState,
    cap: usize,
}

impl<K: Hash + Eq + Clone> CappedStore<K> {
    fn new(cap: usize) -> Self {
        CappedStore {
            map: DashMapStateStore::default(),
            overflow: InMemoryState::default(),
            cap,
        }
    }
}

impl<K: Hash + Eq + Clone> StateStore for CappedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if self.map.len() >= self.cap && !self.map.contains_key(key) {
            return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        self.map.measure_and_replace(key, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for CappedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.map, drop_below);
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn limit(requests: u32, key: RateKey) -> Limiter {
        Limiter::new(&RateLimit {
            requests,
            per: Duration::from_secs(60),
            burst: None,
            key,
        })
        .unwrap()
    }

    #[test]
    fn per_client_and_per_tunnel() {
        let l = limit(2, RateKey::ClientIp);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.check(a).is_ok() && l.check(a).is_ok());
        let wait = l.check(a).unwrap_err();
        assert!(
            wait > Duration::from_secs(20) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert!(l.check(b).is_ok());
        let t = limit(2, RateKey::Tunnel);
        assert!(t.check(a).is_ok() && t.check(b).is_ok());
        assert!(t.check("192.0.2.3".parse().unwrap()).is_err());
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let l = limit(1, RateKey::ClientIp);
        assert!(l.check("2001:db8::1".parse().unwrap()).is_ok());
        assert!(l.check("2001:db8::ffff:2".parse().unwrap()).is_err());
        assert!(l.check("2001:db8:0:1::1".parse().unwrap()).is_ok());
        // An IPv4 address mapped into IPv6 is the IPv4 client.
        assert!(l.check("192.0.2.9".parse().unwrap()).is_ok());
        assert!(l.check("::ffff:192.0.2.9".parse().unwrap()).is_err());
    }

    #[test]
    fn rotating_addresses_do_not_grow_the_table() {
        let l = limit(1, RateKey::ClientIp);
        let mut refused = 0;
        for i in 0..(MAX_CLIENTS as u32 + 5_000) {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            if l.check(ip).is_err() {
                refused += 1;
            }
        }
        assert_eq!(l.clients(), MAX_CLIENTS);
        // Past the table, newcomers share one bucket: all but its first token refused.
        assert_eq!(refused, 4_999);
    }
}
