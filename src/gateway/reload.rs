//! SIGHUP: a new configuration replaces the running one as a whole, for new
//! requests and agents. The restart-only settings (see `config::restart_only!`)
//! are reported and keep their running values; agents whose tunnel was removed,
//! or whose token changed, are disconnected.

use std::sync::Arc;

use super::Gateway;
use crate::config::Config;

/// What a reload changed, for the log.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Settings that need a restart to take effect, as `section.key (old -> new)`.
    pub needs_restart: Vec<String>,
    /// Agents disconnected because their tunnel was removed or its token changed.
    pub disconnected: usize,
}

impl Gateway {
    /// Applies a new configuration (SIGHUP): tunnels, tokens, timeouts and routing
    /// take effect for new requests and agents; restart-only changes are reported.
    pub fn reload(&self, mut new: Config) -> ReloadReport {
        let old = self.state.config();
        let mut report = ReloadReport {
            needs_restart: old.keep_restart_only(&mut new),
            disconnected: 0,
        };
        for t in &old.tunnels {
            let revoked = new.tunnel(&t.id).is_none_or(|n| n.credentials_differ(t));
            if revoked {
                // Its credentials no longer hold: stop routing to it and close it.
                for agent in self.state.registry.agents_of(&t.id) {
                    agent.evict();
                    report.disconnected += 1;
                }
            }
        }
        let policies = super::policy::Policies::build(&new, Some(&self.state.policies.load()));
        self.state.policies.store(Arc::new(policies));
        for gone in old.tunnels.iter().filter(|t| new.tunnel(&t.id).is_none()) {
            self.state.metrics.forget(&gone.id);
        }
        self.state.metrics.configured(&new);
        self.state.metrics.reloaded(true);
        self.state.config.store(Arc::new(new));
        report
    }
}
