//! A shard's nodes while running: brought in line with a reloaded
//! configuration, and with DNS every `discovery.interval_ms` when `nodes`
//! names them by DNS (see `failover/members.rs` for what joining and
//! leaving mean).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{NodeEntry, ShardConfig};
use crate::context::Context;
use crate::failover::members::Changes;
use crate::net::dns::{self, DnsError};

impl Context {
    /// Brings shard `name`'s nodes in line with `config` (its section of
    /// the configuration), DNS names looked up now; `cause` is said in the
    /// events.
    pub async fn apply_nodes(
        &self,
        name: &str,
        config: &ShardConfig,
        cause: &str,
    ) -> Result<Changes, DnsError> {
        let addrs = dns::expand(&self.resolver, &config.nodes).await?;
        let Some((_, running)) = self.shards.named(name) else {
            return Ok(Changes::default());
        };
        let changes = self.members.apply(&running.topology, &addrs, config);
        if !changes.added.is_empty() || !changes.removed.is_empty() {
            // `all` and `majority` count the replicas in service.
            let replicas = running.topology.replica_count();
            let requirement = running.quorum.load().policy.requirement(replicas);
            running.topology.durability.set(requirement);
        }
        for addr in &changes.added {
            self.events.record(
                name,
                "node-added",
                Some(addr),
                0,
                format!("{cause}: it follows the primary and serves reads once in sync"),
            );
        }
        for addr in &changes.removed {
            self.events.record(
                name,
                "node-removed",
                Some(addr),
                0,
                format!("{cause}: no longer probed, routed to or promoted"),
            );
        }
        for why in &changes.refused {
            tracing::error!(shard = %name, "{why}");
            self.events.record(
                name,
                "node-change-refused",
                None,
                0,
                format!("{cause}: {why}"),
            );
        }
        Ok(changes)
    }

    /// The shards' `nodes` as the configuration last loaded says them.
    pub fn set_wanted_nodes(&self, shards: &std::collections::BTreeMap<String, ShardConfig>) {
        if let Ok(mut wanted) = self.wanted_nodes.lock() {
            *wanted = shards.clone();
        }
    }

    /// Looks the DNS names of every shard's `nodes` up again every
    /// `discovery.interval_ms`, until shutdown. A lookup that fails
    /// changes nothing (a nameserver outage must not empty a shard).
    pub async fn discover(self: Arc<Self>) {
        let interval = Duration::from_millis(self.config.discovery.interval_ms);
        let mut shutdown = self.shutdown.clone();
        let mut failing: HashMap<String, String> = HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            let wanted = match self.wanted_nodes.lock() {
                Ok(wanted) => wanted.clone(),
                Err(_) => continue,
            };
            for (name, config) in &wanted {
                if !config.nodes.iter().any(|e| NodeEntry::parse(e).is_dns()) {
                    continue;
                }
                match self.apply_nodes(name, config, "discovered in DNS").await {
                    Ok(_) => {
                        if failing.remove(name).is_some() {
                            tracing::info!(shard = %name, "DNS lookups of the shard's nodes work again");
                        }
                    }
                    Err(e) => {
                        let text = e.to_string();
                        if failing.get(name) != Some(&text) {
                            tracing::warn!(shard = %name, error = %text, "looking the shard's nodes up failed; its nodes stay as they are");
                            self.events.record(
                                name,
                                "discovery-failed",
                                None,
                                0,
                                format!("{text}; the nodes stay as they are"),
                            );
                            failing.insert(name.clone(), text);
                        }
                    }
                }
            }
        }
    }
}
