//! `[coordination]`: several Rampart instances sharing their decisions
//! through etcd.

use serde::Deserialize;

use super::check::{check_addr, ConfigError};

/// `[coordination]`: where the instances keep their shared state and
/// how they decide who acts for each shard.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinationConfig {
    /// Only `etcd` (v3 API, 3.4 or later).
    pub backend: CoordinationBackend,
    /// `host:port` of etcd members' client URLs; tried in turn.
    pub endpoints: Vec<String>,
    /// Every key Rampart writes is under it: one prefix per cluster of
    /// Rampart instances serving the same shards.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// This instance's name, unique among the instances. Default: the
    /// host name and `proxy.listen`'s port (a pod's name on Kubernetes).
    #[serde(default)]
    pub instance: Option<String>,
    /// The failover lease's TTL in seconds: how long after an instance
    /// dies another takes its shards over.
    #[serde(default = "default_lease_ttl_s")]
    pub lease_ttl_s: u64,
    /// How often each instance reads the shard records and renews what it
    /// must.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// Every request to etcd gives up after this long.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// An instance that has not read etcd for this long holds writes
    /// (another may have named a new primary); and a failover waits at
    /// most this long for the live instances to confirm the fenced epoch.
    #[serde(default = "default_max_view_age_ms")]
    pub max_view_age_ms: u64,
    /// Live instances whose probes must judge the primary down before the
    /// lease holder fails it over; 0: a majority of them.
    #[serde(default)]
    pub down_quorum: u32,
    /// Patroni's failsafe mode: when etcd cannot be read, writes go on
    /// while every instance last seen live answers (over its admin
    /// listener) that it cannot read etcd either and routes by the same
    /// epoch, since nobody can then decide a failover. Off: writes are
    /// held whenever the view is older than `max_view_age_ms`.
    #[serde(default = "default_true")]
    pub failsafe: bool,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// `[coordination.tls]`: etcd's client URLs are HTTPS.
    #[serde(default)]
    pub tls: Option<crate::config::tls::BackendTls>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CoordinationBackend {
    Etcd,
}

fn default_true() -> bool {
    true
}

fn default_prefix() -> String {
    "/rampart/default".into()
}

fn default_lease_ttl_s() -> u64 {
    3
}

fn default_poll_ms() -> u64 {
    100
}

fn default_request_timeout_ms() -> u64 {
    500
}

fn default_max_view_age_ms() -> u64 {
    3000
}

impl CoordinationConfig {
    /// This instance's name: `instance`, or `<host name>:<listen port>`.
    pub fn instance_id(&self, listen: &str) -> String {
        if let Some(id) = &self.instance {
            return id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .unwrap_or_else(|| "rampart".into());
        let port = listen.rsplit_once(':').map_or(listen, |(_, p)| p);
        format!("{host}:{port}")
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(ConfigError(
                "field `coordination.endpoints`: expected at least one host:port of an etcd member"
                    .into(),
            ));
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            check_addr(&format!("coordination.endpoints[{i}]"), endpoint)?;
        }
        if !self.prefix.starts_with('/') || self.prefix.trim_end_matches('/').is_empty() {
            return Err(ConfigError(format!(
                "field `coordination.prefix`: expected a key prefix like /rampart/<cluster>, got {:?}",
                self.prefix
            )));
        }
        if self
            .instance
            .as_deref()
            .is_some_and(|i| i.is_empty() || i.contains('/'))
        {
            return Err(ConfigError(
                "field `coordination.instance`: expected a name without '/'".into(),
            ));
        }
        if self.lease_ttl_s == 0 || self.poll_ms == 0 || self.request_timeout_ms == 0 {
            return Err(ConfigError(
                "field `coordination`: lease_ttl_s, poll_ms and request_timeout_ms must be greater than 0".into(),
            ));
        }
        // Patroni's rule: a holder must be able to miss a renewal and
        // retry before its lease can have run out.
        let budget = self.poll_ms + 2 * self.request_timeout_ms;
        if budget > self.lease_ttl_s * 1000 {
            return Err(ConfigError(format!(
                "field `coordination.lease_ttl_s`: expected poll_ms + 2 × request_timeout_ms ({budget} ms) to fit in the lease TTL ({} s)",
                self.lease_ttl_s
            )));
        }
        if self.max_view_age_ms <= self.poll_ms + self.request_timeout_ms {
            return Err(ConfigError(format!(
                "field `coordination.max_view_age_ms`: expected more than poll_ms + request_timeout_ms ({} ms), got {}",
                self.poll_ms + self.request_timeout_ms,
                self.max_view_age_ms
            )));
        }
        Ok(())
    }
}
