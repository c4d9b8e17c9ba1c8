//! Checks of a configuration as a whole, after each field parsed: what
//! one field cannot say alone (a shard's quorum against the link's reply
//! timeout, fan-out against [coordination], a listener reachable from
//! other machines without a secret ...). The first failure is reported,
//! naming the field at fault.

use std::collections::BTreeMap;

use super::check::{check_addr, check_shard_name, is_loopback, same_node};
use super::*;

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_addr("proxy.listen", &self.proxy.listen)?;
        self.check_coordination()?;
        self.check_access()?;
        self.check_plugins()?;
        self.check_shards()?;
        self.check_numbers()?;
        if self.proxy.username.is_some() && self.proxy.password.is_none() {
            return Err(ConfigError(
                "field `proxy.username`: set `proxy.password` too, or remove the username".into(),
            ));
        }
        Ok(())
    }

    /// [coordination] against what it cannot be used with.
    fn check_coordination(&self) -> Result<(), ConfigError> {
        if let Some(coordination) = &self.coordination {
            coordination.validate()?;
            if self.failover.state_dir.is_some() {
                return Err(ConfigError(
                    "field `failover.state_dir`: with [coordination] the shards' records live in etcd; remove state_dir".into(),
                ));
            }
            if let Some((name, _)) = self
                .shards
                .iter()
                .find(|(_, s)| s.replication.mode == Mode::Fanout)
            {
                return Err(ConfigError(format!(
                    "field `shards.{name}.replication.mode`: fan-out needs one Rampart instance sending the writes; it cannot be used with [coordination]"
                )));
            }
        }
        Ok(())
    }

    /// Secrets and listeners: nothing reachable from other machines without one.
    fn check_access(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("proxy.password", &self.proxy.password),
            ("admin.token", &self.admin.token),
            ("backend.password", &self.backend.password),
        ] {
            if value.as_deref() == Some("") {
                return Err(ConfigError(format!(
                    "field `{field}`: empty; an empty secret is no secret (remove the line to have none)"
                )));
            }
        }
        let listen = &self.proxy.listen;
        if self.proxy.protected_mode && self.proxy.password.is_none() && !is_loopback(listen) {
            return Err(ConfigError(format!(
                "field `proxy.password`: expected a password, because proxy.listen ({listen}) is reachable from other machines (Redis's protected mode); set one (or RAMPART_PASSWORD), or proxy.protected_mode = false"
            )));
        }
        if self.admin.tokens.iter().any(|t| t.is_empty()) {
            return Err(ConfigError(
                "field `admin.tokens`: an empty token; an empty secret is no secret".into(),
            ));
        }
        if let Some(listen) = &self.admin.listen {
            check_addr("admin.listen", listen)?;
            if !is_loopback(listen) && self.admin.token.is_none() && self.admin.tokens.is_empty() {
                return Err(ConfigError(format!(
                    "field `admin.token`: expected a token, because admin.listen ({listen}) is reachable from other machines and the admin API can move the primary"
                )));
            }
        }
        Ok(())
    }

    /// The plugins' sandbox limits.
    fn check_plugins(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("plugins.memory_limit_mb", self.plugins.memory_limit_mb),
            ("plugins.route_budget_ms", self.plugins.route_budget_ms),
            ("plugins.call_budget_ms", self.plugins.call_budget_ms),
        ] {
            if value == 0 {
                return Err(ConfigError(format!(
                    "field `{field}`: expected a number greater than 0, got 0"
                )));
            }
        }
        Ok(())
    }

    /// The shards: names, slots, nodes (each in one shard, listed once), quorums and fan-out settings.
    fn check_shards(&self) -> Result<(), ConfigError> {
        if self.shards.is_empty() {
            return Err(ConfigError(
                "field `shards`: expected at least one shard, e.g. [shards.main] nodes = [\"127.0.0.1:6379\"]"
                    .into(),
            ));
        }
        for name in self.shards.keys() {
            check_shard_name(name)?;
        }
        slots::owners(
            self.shards
                .iter()
                .map(|(name, shard)| (name.as_str(), shard.slots.as_deref())),
        )?;
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for (name, shard) in &self.shards {
            for node in &shard.nodes {
                if let Some(other) = seen.insert(same_node(node), name) {
                    if other != name {
                        return Err(ConfigError(format!(
                            "field `shards.{name}.nodes`: {node} is also a node of shard '{other}'"
                        )));
                    }
                }
            }
        }
        for (name, shard) in &self.shards {
            if shard.nodes.is_empty() {
                return Err(ConfigError(format!(
                    "field `shards.{name}.nodes`: expected at least one host:port"
                )));
            }
            // Nodes removed while running keep their place until a restart
            // (see topology/nodes.rs), so the bound is on a running shard's
            // whole history; a file must leave room for changes.
            if shard.nodes.len() > MAX_NODES_IN_FILE {
                return Err(ConfigError(format!(
                    "field `shards.{name}.nodes`: at most {MAX_NODES_IN_FILE} nodes per shard, got {}",
                    shard.nodes.len()
                )));
            }
            let replication = &shard.replication;
            if replication.quorum != Quorum::None
                && u64::from(replication.timeout_ms) >= self.backend.reply_timeout_ms
            {
                return Err(ConfigError(format!(
                    "field `shards.{name}.replication.timeout_ms`: expected less than backend.reply_timeout_ms ({}), got {}",
                    self.backend.reply_timeout_ms, replication.timeout_ms
                )));
            }
            if replication.quorum != Quorum::None && replication.timeout_ms == 0 {
                return Err(ConfigError(format!(
                    "field `shards.{name}.replication.timeout_ms`: expected a number greater than 0 (WAIT 0 would wait forever), got 0"
                )));
            }
            if replication.mode == Mode::Fanout {
                if replication.manage_replication {
                    return Err(ConfigError(format!(
                        "field `shards.{name}.replication.manage_replication`: expected false in fan-out mode (the nodes are not Redis replicas of each other)"
                    )));
                }
                if self.failover.role == FailoverRole::Follower {
                    return Err(ConfigError(format!(
                        "field `shards.{name}.replication.mode`: fan-out needs one Rampart instance sending the writes (failover.role = \"leader\"); two would apply them in different orders"
                    )));
                }
                if replication.backlog_mb == 0 {
                    return Err(ConfigError(format!(
                        "field `shards.{name}.replication.backlog_mb`: expected a number greater than 0, got 0"
                    )));
                }
            }
            for addr in shard.zones.keys() {
                if !shard.nodes.contains(addr) {
                    return Err(ConfigError(format!(
                        "field `shards.{name}.zones`: expected addresses from shards.{name}.nodes, got {addr:?}"
                    )));
                }
            }
            for (i, node) in shard.nodes.iter().enumerate() {
                let entry = NodeEntry::parse(node);
                entry.check(&format!("shards.{name}.nodes[{i}]"), node)?;
                if entry.is_dns() && shard.replication.mode == Mode::Fanout {
                    return Err(ConfigError(format!(
                        "field `shards.{name}.nodes[{i}]`: a fan-out shard's nodes are fixed; name them by address"
                    )));
                }
                if shard.nodes[..i].contains(node) {
                    return Err(ConfigError(format!(
                        "field `shards.{name}.nodes[{i}]`: {node} is listed twice"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Settings that must be positive, and the nameserver's address.
    fn check_numbers(&self) -> Result<(), ConfigError> {
        if let Some(nameserver) = &self.discovery.nameserver {
            if nameserver.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError(format!(
                    "field `discovery.nameserver`: expected ip:port (e.g. 10.0.0.10:53), got {nameserver:?}"
                )));
            }
        }
        let positive = [
            ("discovery.interval_ms", self.discovery.interval_ms),
            (
                "backend.links_per_node",
                self.backend.links_per_node.map_or(1, |n| n as u64),
            ),
            (
                "backend.connect_timeout_ms",
                self.backend.connect_timeout_ms,
            ),
            ("backend.reply_timeout_ms", self.backend.reply_timeout_ms),
            ("probe.interval_ms", self.probe.interval_ms),
            ("probe.timeout_ms", self.probe.timeout_ms),
            ("probe.down_after_ms", self.probe.down_after_ms),
            ("probe.phi_window", self.probe.phi_window as u64),
            ("probe.phi_min_std_ms", self.probe.phi_min_std_ms),
            ("limits.max_pipeline", self.limits.max_pipeline as u64),
            ("limits.max_reply_depth", self.limits.max_reply_depth as u64),
            ("proxy.max_clients", self.proxy.max_clients as u64),
            ("failover.hold_writes_ms", self.failover.hold_writes_ms),
            ("failover.event_history", self.failover.event_history as u64),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError(format!(
                    "field `{field}`: expected a number greater than 0, got 0"
                )));
            }
        }
        if !(self.probe.phi_threshold > 0.0 && self.probe.phi_threshold.is_finite()) {
            return Err(ConfigError(format!(
                "field `probe.phi_threshold`: expected a positive number such as 8, got {}",
                self.probe.phi_threshold
            )));
        }
        Ok(())
    }
}
