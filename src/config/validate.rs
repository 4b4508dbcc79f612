//! The checks that types cannot express: tunnel ID syntax, duplicates, secrets
//! that are empty, references between keys. Every problem is reported, not just
//! the first.

use std::collections::HashSet;

use super::Config;
use crate::protocol;

/// How the problem "no tunnels" starts, so that the loader can leave it out when
/// tunnel entries were refused (those are not "no tunnels").
pub(super) const NO_TUNNELS: &str = "no tunnels are configured";

/// How the placeholder secrets of `gateway.example.toml` begin.
pub const PLACEHOLDER: &str = "CHANGE-ME";

impl Config {
    /// What is allowed but likely a mistake: placeholder secrets on a listener
    /// that only this machine can reach (elsewhere they are refused).
    pub fn warnings(&self) -> Vec<String> {
        if !self.server.host.is_loopback() {
            return Vec::new();
        }
        self.placeholder_secrets()
            .map(|key| format!(
                "{key} is still the example's placeholder ({PLACEHOLDER}...): set a real secret before the gateway listens on a public address"
            ))
            .collect()
    }

    /// The keys whose secret is still one of the example's placeholders.
    fn placeholder_secrets(&self) -> impl Iterator<Item = String> + '_ {
        let admin = self
            .server
            .admin_token
            .as_ref()
            .map(|t| ("server.admin_token".to_owned(), t));
        let tunnels = self.tunnels.iter().enumerate().filter_map(|(i, t)| {
            let token = t.token.as_ref()?;
            Some((format!("tunnels[{i}].token"), token))
        });
        admin
            .into_iter()
            .chain(tunnels)
            .filter(|(_, secret)| {
                let head = secret.expose().get(..PLACEHOLDER.len());
                head.is_some_and(|h| h.eq_ignore_ascii_case(PLACEHOLDER))
            })
            .map(|(key, _)| key)
    }

    /// The bounds of `[limits]`: each at least what a normal client needs, and
    /// at most what keeps one connection cheap.
    fn validate_limits(&self, problems: &mut Vec<String>) {
        use super::diagnose::size::show;
        let l = &self.limits;
        for (key, d) in [
            ("limits.header_read_timeout", l.header_read_timeout),
            (
                "limits.request_body_idle_timeout",
                l.request_body_idle_timeout,
            ),
            (
                "limits.response_body_idle_timeout",
                l.response_body_idle_timeout,
            ),
        ] {
            if d.is_zero() {
                problems.push(format!(
                    "{key} = \"0s\" is invalid: expected a positive duration such as \"20s\""
                ));
            }
        }
        if l.max_connections < 16 {
            problems.push(format!(
                "limits.max_connections = {} is invalid: expected at least 16 (agents' connections count too)",
                l.max_connections
            ));
        }
        let sizes = [
            (
                "limits.max_header_bytes",
                l.max_header_bytes,
                1024,
                1024 * 1024,
            ),
            ("limits.max_uri_length", l.max_uri_length, 256, 1024 * 1024),
        ];
        for (key, value, min, max) in sizes {
            if !(min..=max).contains(&value) {
                problems.push(format!(
                    "{key} = {:?} is invalid: expected from {:?} to {:?}",
                    show(value),
                    show(min),
                    show(max)
                ));
            }
        }
        if !(1..=10_000).contains(&l.max_headers) {
            problems.push(format!(
                "limits.max_headers = {} is invalid: expected from 1 to 10000",
                l.max_headers
            ));
        }
    }

    /// Checks what the types cannot: returns every problem found.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, d) in [
            ("timeouts.forward", self.timeouts.forward),
            ("timeouts.direct", self.timeouts.direct),
            ("timeouts.heartbeat", self.timeouts.heartbeat),
        ] {
            if d.is_zero() {
                problems.push(format!(
                    "{key} = \"0s\" is invalid: expected a positive duration such as \"5s\""
                ));
            }
        }
        if self.timeouts.heartbeat > protocol::MAX_HEARTBEAT {
            problems.push(format!(
                "timeouts.heartbeat = \"{}\" is invalid: expected at most \"{}\" (a dead agent is found after three intervals)",
                humantime::format_duration(self.timeouts.heartbeat),
                humantime::format_duration(protocol::MAX_HEARTBEAT)
            ));
        }
        self.validate_limits(&mut problems);
        if let Err(e) = crate::telemetry::parse_filter(&self.log.level) {
            problems.push(format!(
                "log.level = {:?} is invalid ({e}): expected error, warn, info, debug, trace or a filter like \"gateway=debug,info\"",
                self.log.level
            ));
        }
        if self.log.file.is_empty() || self.log.file.contains('/') {
            problems.push(format!(
                "log.file = {:?} is invalid: expected a file name without '/', such as \"gateway.log\"",
                self.log.file
            ));
        }
        if let Some(domain) = &self.server.public_domain
            && !is_domain(domain)
        {
            problems.push(format!(
                "server.public_domain = {domain:?} is invalid: expected a domain name such as \"tunnels.example.com\""
            ));
        }
        if let Some(t) = &self.server.admin_token
            && t.expose().is_empty()
        {
            problems.push(
                "server.admin_token is empty: remove the key to keep /connections to this machine, or set a secret"
                    .to_owned(),
            );
        }
        if !self.server.host.is_loopback() {
            for key in self.placeholder_secrets() {
                problems.push(format!(
                    "{key} is still the example's placeholder ({PLACEHOLDER}...) and server.host = {} is reachable from other machines: set a real secret, such as the output of `openssl rand -hex 32`",
                    self.server.host
                ));
            }
        }
        if !self.server.host.is_loopback() {
            for (i, t) in self.tunnels.iter().enumerate() {
                if !t.requires_token() {
                    problems.push(format!(
                        "tunnels[{i}] (id {:?}) has no token and server.host = {} is reachable from other machines: anyone could connect an agent and receive its traffic; set token (or token_sha256), or listen on 127.0.0.1",
                        t.id, self.server.host
                    ));
                }
            }
        }
        if self.server.proxy_protocol
            && self.server.trusted_proxies.is_empty()
            && !self.server.trust_forwarded
        {
            problems.push(
                "server.proxy_protocol = true needs server.trusted_proxies: the header is accepted only from the load balancers listed there".to_owned(),
            );
        }
        for (j, entry) in self.server.trusted_proxies.iter().enumerate() {
            if let Err(why) = super::parse_net(entry) {
                problems.push(format!("server.trusted_proxies[{j}] is invalid: {why}"));
            }
        }
        if self.tunnels.is_empty() {
            problems.push(format!(
                "{NO_TUNNELS}: add at least one [[tunnels]] entry with an id"
            ));
        }
        let mut seen = HashSet::new();
        for (i, t) in self.tunnels.iter().enumerate() {
            if t.id.is_empty() {
                problems.push(format!(
                    "tunnels[{i}].id is missing: each tunnel needs an id, such as \"laravel\""
                ));
            } else if !is_tunnel_id(&t.id) {
                problems.push(format!(
                    "tunnels[{i}].id = {:?} is invalid: expected lowercase letters, digits and '-', starting with a letter or digit, at most 63 characters",
                    t.id
                ));
            }
            if !seen.insert(t.id.as_str()) {
                problems.push(format!(
                    "tunnels[{i}].id = {:?} is a duplicate: each tunnel id may appear once",
                    t.id
                ));
            }
            if t.token.is_some() && t.token_sha256.is_some() {
                problems.push(format!(
                    "tunnels[{i}] (id {:?}) sets both token and token_sha256: keep one",
                    t.id
                ));
            }
            if let Some(token) = &t.token
                && token.expose().is_empty()
            {
                problems.push(format!(
                    "tunnels[{i}].token is empty: remove the key for an open tunnel, or set a secret"
                ));
            }
            if let Some(digest) = &t.token_sha256
                && (digest.len() != 64 || hex::decode(digest).is_err())
            {
                problems.push(format!(
                    "tunnels[{i}].token_sha256 = {digest:?} is invalid: expected 64 hex digits (sha256sum of the token)"
                ));
            }
            validate_access(i, t, &mut problems);
        }
        if let Some(default) = &self.server.default_tunnel
            && !self.tunnels.iter().any(|t| &t.id == default)
        {
            problems.push(format!(
                "server.default_tunnel = {default:?} names no configured tunnel: expected one of {}",
                self.tunnel_ids().join(", ")
            ));
        }
        problems
    }
}

/// A tunnel's access policy: every credential, network and rate well formed.
fn validate_access(i: usize, t: &super::TunnelConfig, problems: &mut Vec<String>) {
    let mut users = HashSet::new();
    for (j, entry) in t.basic_auth.iter().enumerate() {
        match super::parse_credential(entry) {
            Ok((user, _, _)) if !users.insert(user) => problems.push(format!(
                "tunnels[{i}].basic_auth[{j}] (tunnel {:?}) repeats user {user:?}: each user may appear once",
                t.id
            )),
            Ok(_) => {}
            Err(why) => problems.push(format!(
                "tunnels[{i}].basic_auth[{j}] (tunnel {:?}) is invalid: {why}",
                t.id
            )),
        }
    }
    for (j, prefix) in t.auth_exempt.iter().enumerate() {
        if !prefix.starts_with('/') {
            problems.push(format!(
                "tunnels[{i}].auth_exempt[{j}] = {prefix:?} is invalid: expected a path prefix such as \"/webhooks/\""
            ));
        }
    }
    for (key, list) in [("allow_ips", &t.allow_ips), ("deny_ips", &t.deny_ips)] {
        for (j, entry) in list.iter().enumerate() {
            if let Err(why) = super::parse_net(entry) {
                problems.push(format!("tunnels[{i}].{key}[{j}] is invalid: {why}"));
            }
        }
    }
    if let Some(rate) = &t.rate_limit
        && let Err(why) = rate.quota()
    {
        problems.push(format!("tunnels[{i}].rate_limit is invalid: {why}"));
    }
}

/// `^[a-z0-9][a-z0-9-]{0,62}$`
pub fn is_tunnel_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

pub(crate) fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_ids() {
        assert!(is_tunnel_id("laravel"));
        assert!(is_tunnel_id("a-1"));
        assert!(!is_tunnel_id("-a"));
        assert!(!is_tunnel_id("Laravel"));
        assert!(!is_tunnel_id(""));
        assert!(!is_tunnel_id(&"a".repeat(64)));
    }
}
