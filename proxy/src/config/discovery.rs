//! `[discovery]` and the entries of a shard's `nodes` that name nodes by
//! DNS rather than by address.

use serde::Deserialize;

use super::check::{check_addr, ConfigError};

/// How names in `nodes` are looked up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// How often every name is looked up again; nodes that appear join
    /// the shard, nodes that disappear leave it.
    pub interval_ms: u64,
    /// The nameserver asked (`host:port`); unset: the first of
    /// `/etc/resolv.conf`.
    pub nameserver: Option<String>,
}

impl Default for DiscoveryConfig {
    fn default() -> DiscoveryConfig {
        DiscoveryConfig {
            interval_ms: 5000,
            nameserver: None,
        }
    }
}

/// One entry of a shard's `nodes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEntry<'a> {
    /// `host:port`: one node.
    Addr(&'a str),
    /// `dns+srv://_redis._tcp.cache.svc.cluster.local`: every target of
    /// the name's SRV records, at the port each gives.
    Srv(&'a str),
    /// `dns://cache.example:6379`: every A and AAAA address of the name,
    /// at that port.
    Name { host: &'a str, port: u16 },
}

impl<'a> NodeEntry<'a> {
    pub fn parse(entry: &'a str) -> NodeEntry<'a> {
        if let Some(name) = entry.strip_prefix("dns+srv://") {
            return NodeEntry::Srv(name);
        }
        if let Some(rest) = entry.strip_prefix("dns://") {
            if let Some((host, port)) = rest.rsplit_once(':') {
                if let Ok(port) = port.parse() {
                    return NodeEntry::Name { host, port };
                }
            }
            // Checked (and refused) by `check`.
            return NodeEntry::Name {
                host: rest,
                port: 0,
            };
        }
        NodeEntry::Addr(entry)
    }

    /// Whether the entry is looked up in DNS.
    pub fn is_dns(&self) -> bool {
        !matches!(self, NodeEntry::Addr(_))
    }

    pub fn check(&self, field: &str, entry: &str) -> Result<(), ConfigError> {
        let name_ok = |name: &str| {
            !name.is_empty()
                && name.len() <= 253
                && name
                    .trim_end_matches('.')
                    .split('.')
                    .all(|l| !l.is_empty() && l.len() <= 63)
        };
        match *self {
            NodeEntry::Addr(addr) => check_addr(field, addr),
            NodeEntry::Srv(name) if name_ok(name) => Ok(()),
            NodeEntry::Name { host, port } if name_ok(host) && port > 0 => Ok(()),
            _ => Err(ConfigError(format!(
                "field `{field}`: expected host:port, dns+srv://name or dns://name:port, got {entry:?}"
            ))),
        }
    }
}
