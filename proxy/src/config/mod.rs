//! The configuration file (TOML).
//!
//! Every section rejects keys it does not know, so a typo is an error rather
//! than a silently ignored setting, and every error names the field it is
//! about (`shards.main.nodes[1]: expected host:port ...`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::resp::Limits;

mod check;
mod coordination;
mod discovery;
mod sections;
mod shard;
pub mod slots;
pub mod tls;

pub use check::ConfigError;
use check::{check_addr, check_shard_name, is_loopback, same_node};
pub use coordination::*;
pub use discovery::*;
pub use sections::*;
pub use shard::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub backend: BackendConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub probe: ProbeConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub failover: FailoverConfig,
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// How DNS names in shards' `nodes` are looked up.
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// `[coordination]`: several instances that agree through etcd. Unset:
    /// one instance, its state in `failover.state_dir`.
    #[serde(default)]
    pub coordination: Option<CoordinationConfig>,
    /// Shards by name.
    pub shards: BTreeMap<String, ShardConfig>,
}

/// The largest configuration file read: far above any real one, and what
/// keeps `check-config /dev/zero` from eating the machine.
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// Reads a text file of at most `max` bytes: refused beyond that (a
/// device such as `/dev/zero`, a file given by mistake), and refused if it
/// is not UTF-8 or holds NUL bytes, before a parser quotes it back whole.
pub fn read_text(path: &Path, max: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)?;
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    if bytes.len() > max {
        return Err(invalid(format!("larger than {} KiB", max / 1024)));
    }
    if let Some(at) = bytes.iter().position(|b| *b == 0) {
        return Err(invalid(format!(
            "a NUL byte at offset {at}: not a text file"
        )));
    }
    String::from_utf8(bytes).map_err(|e| invalid(format!("not UTF-8: {e}")))
}

/// Nodes per shard a configuration may name: half of what a running
/// shard can hold (`topology::nodes::MAX_NODES`), the rest for nodes added
/// and removed by reloads.
pub const MAX_NODES_IN_FILE: usize = 32;

impl Config {
    /// Zone names numbered for the routers (1, 2, ... in name order; 0 is
    /// none): every zone named in `config`.
    pub fn zone_numbers(&self) -> BTreeMap<String, u32> {
        let names: std::collections::BTreeSet<&String> = self
            .proxy
            .zone
            .iter()
            .chain(self.shards.values().flat_map(|s| s.zones.values()))
            .collect();
        names
            .into_iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), i as u32 + 1))
            .collect()
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_text(path, MAX_CONFIG_BYTES)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Config::parse_with(&text, |name| std::env::var(name).ok())
            .map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    /// The file's text alone, without the environment.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, |_| None)
    }

    /// Secrets the file leaves unset come from the environment (`env`), so
    /// a config file can be shared (a Kubernetes ConfigMap, a repository)
    /// while the secrets live elsewhere.
    pub fn parse_with(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError(e.to_string()))?;
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            ConfigError(format!("field `{path}`: {}", inner.trim_end()))
        })?;
        for (field, variable) in [
            (&mut config.admin.token, "RAMPART_ADMIN_TOKEN"),
            (&mut config.proxy.password, "RAMPART_PASSWORD"),
            (&mut config.backend.password, "RAMPART_BACKEND_PASSWORD"),
        ] {
            if field.is_none() {
                *field = env(variable).filter(|value| !value.is_empty());
            }
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_addr("proxy.listen", &self.proxy.listen)?;
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
        )
        .map_err(ConfigError)?;
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
        if self.proxy.username.is_some() && self.proxy.password.is_none() {
            return Err(ConfigError(
                "field `proxy.username`: set `proxy.password` too, or remove the username".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
