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
mod validate;

pub use check::ConfigError;
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
}

#[cfg(test)]
mod tests;
