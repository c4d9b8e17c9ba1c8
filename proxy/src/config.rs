//! The configuration file (TOML).
//!
//! Every section rejects keys it does not know, so a typo is an error rather
//! than a silently ignored setting, and every error names the field it is
//! about (`shards.main.nodes[1]: expected host:port ...`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::resp::Limits;

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
    /// `[coordination]`: several instances that agree through etcd. Unset:
    /// one instance, its state in `failover.state_dir`.
    #[serde(default)]
    pub coordination: Option<CoordinationConfig>,
    /// Shards by name.
    pub shards: BTreeMap<String, ShardConfig>,
}

/// The listener applications connect to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// `host:port` to accept Redis clients on.
    pub listen: String,
    /// When set, clients must `AUTH` (or `HELLO ... AUTH`) with this password.
    #[serde(default)]
    pub password: Option<String>,
    /// `[proxy.tls]`: clients connect with TLS (and, with `ca`, present a
    /// certificate signed by it).
    #[serde(default)]
    pub tls: Option<crate::net::tls::ServerTls>,
    /// Username that goes with `password` (`AUTH user pass`); `default` if unset.
    #[serde(default)]
    pub username: Option<String>,
    /// Connections beyond this are refused with Redis's own error.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Threads serving clients, each with its own event loop and its own
    /// backend links. 0 = half the CPU cores (at least one): most of a
    /// proxy's CPU time is the kernel's TCP stack, which needs the rest.
    #[serde(default)]
    pub workers: usize,
    /// On shutdown (SIGTERM, SIGINT), how long clients get to receive the
    /// replies they are owed before their connections are closed anyway.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// The zone (availability zone, rack, region) this instance runs in:
    /// zone-aware routers prefer replicas in it (`shards.<name>.zones`).
    #[serde(default)]
    pub zone: Option<String>,
    /// Commands refused through Rampart: a name, or a name and subcommand
    /// (`"CLIENT PAUSE"`). The default keeps clients from pausing the
    /// connections Rampart shares and from stopping nodes (DEBUG SLEEP ...).
    #[serde(default = "default_deny_commands")]
    pub deny_commands: Vec<String>,
    /// Node parameters `CONFIG SET` may not change through Rampart (a
    /// trailing `*` matches any suffix): the credentials and replication
    /// settings Rampart itself sets on the nodes.
    #[serde(default = "default_managed_settings")]
    pub managed_settings: Vec<String>,
    /// Whether the commands that change Rampart (`RAMPART SWITCHOVER`,
    /// `RAMPART POLICY LOAD|SHADOW|ACTIVATE|ROLLBACK`) are accepted on the
    /// client port. Off: only the admin API and the `rampart` CLI change
    /// Rampart. On, with `admin.token` set, a connection must first send
    /// `RAMPART AUTH <token>`.
    #[serde(default)]
    pub admin_commands: bool,
    /// Redis's protected mode: listening on an address other machines can
    /// reach with no `password` is refused at start. `false` allows it
    /// (a network policy or firewall then has to keep strangers out).
    #[serde(default = "yes")]
    pub protected_mode: bool,
}

fn yes() -> bool {
    true
}

fn default_deny_commands() -> Vec<String> {
    crate::client::guard::DEFAULT_DENY
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn default_managed_settings() -> Vec<String> {
    crate::client::guard::DEFAULT_MANAGED
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn default_shutdown_grace_ms() -> u64 {
    10_000
}

fn default_max_clients() -> usize {
    10_000
}

/// The admin HTTP listener (health, topology, metrics).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `host:port`; no admin listener when unset.
    pub listen: Option<String>,
    /// Bearer token required by every mutating endpoint (switchover,
    /// policy loads). Required when `listen` is not a loopback address.
    pub token: Option<String>,
    /// Host names (besides IP addresses and `localhost`) that requests may
    /// name in their `Host` header: a page on another site that makes its
    /// name resolve to this machine (DNS rebinding) is refused.
    pub allowed_hosts: Vec<String>,
    /// A connection that has not sent a request's headers this long after
    /// it began is closed.
    pub header_timeout_ms: u64,
    /// Admin connections open at once; more are closed at once.
    pub max_connections: usize,
    /// `[admin.tls]`: the admin API over HTTPS.
    pub tls: Option<crate::net::tls::ServerTls>,
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        AdminConfig {
            listen: None,
            token: None,
            allowed_hosts: Vec::new(),
            header_timeout_ms: 10_000,
            max_connections: 256,
            tls: None,
        }
    }
}

/// How Rampart connects to the Redis nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// ACL user for the nodes (`AUTH username password`); `default` if unset.
    pub username: Option<String>,
    /// Password for the nodes.
    pub password: Option<String>,
    /// Shared, pipelined connections per node, protocol version and worker.
    /// A client always uses the same one, so its commands stay in order.
    /// Unset: one, as the node runs commands one at a time whatever the
    /// number of connections and a second link only splits the node's
    /// batches (measured: one beat two by 2-18% at `-P 16`); two on shards
    /// whose writes wait for replicas (a `quorum` other than `none`, or a
    /// quorum plugin), because `WAIT` holds the connection it runs on until
    /// the replicas answer, and the other link keeps writes moving.
    pub links_per_node: Option<usize>,
    /// Most replies a shared link waits for at once; further requests wait
    /// in Rampart, in order, until replies come back (0: no bound). Keeps
    /// the node's runs short so it works while replies flow back.
    pub max_inflight_per_link: u32,
    /// Idle dedicated connections kept per node for transactions and blocking
    /// commands.
    pub idle_dedicated_per_node: usize,
    pub connect_timeout_ms: u64,
    /// A shared link whose oldest request has waited this long for a reply is
    /// closed and its requests fail; blocking commands never use shared links.
    pub reply_timeout_ms: u64,
    /// `[backend.tls]`: every connection to the nodes (links, probes,
    /// dedicated connections) uses TLS.
    pub tls: Option<crate::net::tls::BackendTls>,
}

impl ProxyConfig {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// The number of worker threads to run.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    }
}

impl BackendConfig {
    /// Shared links per node for a shard's nodes (see `links_per_node`).
    pub fn links_for(&self, shard: &ShardConfig) -> usize {
        let replication = &shard.replication;
        let waits = replication.mode == Mode::Native
            && (replication.quorum != Quorum::None || replication.quorum_plugin.is_some());
        self.links_per_node.unwrap_or(if waits { 2 } else { 1 })
    }
}

impl Default for BackendConfig {
    fn default() -> BackendConfig {
        BackendConfig {
            username: None,
            password: None,
            links_per_node: None,
            max_inflight_per_link: 256,
            idle_dedicated_per_node: 16,
            connect_timeout_ms: 1000,
            reply_timeout_ms: 5000,
            tls: None,
        }
    }
}

impl BackendConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn reply_timeout(&self) -> Duration {
        Duration::from_millis(self.reply_timeout_ms)
    }
}

/// Health probes (`INFO replication`) to every node, and the detector that
/// judges their results.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    pub interval_ms: u64,
    /// A probe unanswered after this long has failed.
    pub timeout_ms: u64,
    /// A node that has not answered a probe for this long is down; before
    /// that, after a failed probe, it is suspect (`fixed-timeout`).
    pub down_after_ms: u64,
    /// `fixed-timeout` (down after `down_after_ms` of silence, like
    /// Sentinel's down-after-milliseconds) or `phi-accrual`.
    pub detector: DetectorKind,
    /// phi-accrual: down once phi (how unlikely the silence is, as
    /// -log10 of its probability) reaches this.
    pub phi_threshold: f64,
    /// phi-accrual: gaps between answered probes remembered.
    pub phi_window: usize,
    /// phi-accrual: the spread assumed at least, so a very regular node is
    /// not judged down after one late answer.
    pub phi_min_std_ms: u64,
    /// A detector plugin (a `.wasm` component, world `detector`) used
    /// instead of `detector`.
    pub detector_plugin: Option<String>,
    /// Text handed to the detector plugin's `configure`.
    pub detector_config: String,
    /// A node that has answered `-BUSY` (a long script or function) for
    /// this long is sent `SCRIPT KILL` / `FUNCTION KILL`, as Sentinel does;
    /// 0 never kills. A busy node is alive either way: only a script that
    /// cannot be killed because it wrote (`-UNKILLABLE`) lets the detector
    /// judge the node down.
    pub busy_kill_after_ms: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DetectorKind {
    FixedTimeout,
    PhiAccrual,
}

impl DetectorKind {
    /// As written in the config.
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::FixedTimeout => "fixed-timeout",
            DetectorKind::PhiAccrual => "phi-accrual",
        }
    }
}

impl Default for ProbeConfig {
    fn default() -> ProbeConfig {
        ProbeConfig {
            interval_ms: 100,
            timeout_ms: 500,
            down_after_ms: 1000,
            busy_kill_after_ms: 5000,
            detector: DetectorKind::FixedTimeout,
            phi_threshold: 8.0,
            phi_window: 100,
            phi_min_std_ms: 150,
            detector_plugin: None,
            detector_config: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `rampart=debug`; `RUST_LOG` wins.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// One primary and its replicas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// `host:port` of every node. Which one is primary is discovered from
    /// the nodes themselves (`INFO replication`), never trusted from this list.
    pub nodes: Vec<String>,
    /// The hash slots this shard owns (`"0-8191"`, `"0-5000,10000-16383"`),
    /// as in Redis Cluster: CRC16 of the key (or of its `{hash tag}`)
    /// modulo 16384. Needed when there are several shards; every slot must
    /// be owned by exactly one. One shard owns every slot.
    #[serde(default)]
    pub slots: Option<String>,
    /// Where read-only commands go.
    #[serde(default)]
    pub read_from: ReadFrom,
    /// What a read served by a replica may miss (see [`ReadConsistency`]).
    #[serde(default)]
    pub read_consistency: ReadConsistency,
    /// A router plugin (a `.wasm` component built with rampart-sdk) that
    /// picks the node for each read instead of `read_from`.
    #[serde(default)]
    pub router: Option<String>,
    /// Text handed to the router plugin's `configure`.
    #[serde(default)]
    pub router_config: String,
    /// Each node's zone, by address (`"10.0.0.1:6379" = "eu-west-1a"`), for
    /// zone-aware routers; nodes not listed have none.
    #[serde(default)]
    pub zones: BTreeMap<String, String>,
    #[serde(default)]
    pub replication: ReplicationConfig,
}

impl ShardConfig {
    /// The router the shard asks for: its plugin, or the built-in that
    /// `read_from` names.
    pub fn router_source(&self) -> String {
        match (&self.router, self.read_from) {
            (Some(path), _) => path.clone(),
            (None, ReadFrom::Primary) => "builtin:primary-only".into(),
            (None, ReadFrom::Replicas) => "builtin:round-robin".into(),
        }
    }
}

/// How durable a write is before its client is answered (native mode: the
/// nodes replicate with Redis replication).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// `native`: the nodes are Redis replicas of one primary. `fanout`:
    /// the nodes are independent (managed services, other vendors, another
    /// region) and Rampart sends every write to each of them, in one order.
    pub mode: Mode,
    /// Fan-out: memory for writes some node has not run yet (a node that is
    /// down, or slow). A node that is down when the backlog would pass this
    /// is marked stale, serves no reads and is copied afresh (SCAN + DUMP /
    /// RESTORE) when it returns.
    pub backlog_mb: u32,
    /// Replica acknowledgements a write needs: `none` (asynchronous), `one`,
    /// `majority` (of all the shard's nodes, the primary counting as one) or
    /// `all`, of the replicas configured.
    pub quorum: Quorum,
    /// How long a write waits for its acknowledgements (`WAIT`'s timeout).
    pub timeout_ms: u32,
    /// Too few acknowledgements in time: `fail` answers `-NOQUORUM` (the
    /// write stays applied on the primary; Redis cannot roll back), `accept`
    /// answers the write's own reply.
    pub on_shortfall: Shortfall,
    /// Let Rampart set replication up: `REPLICAOF` on nodes that do not
    /// follow the primary, and `min-replicas-to-write` on the primary so an
    /// isolated primary refuses writes even from clients that bypass Rampart.
    pub manage_replication: bool,
    /// With `manage_replication`, the `min-replicas-max-lag` set on the
    /// primary (seconds).
    pub min_replicas_max_lag_s: u32,
    /// A replica further behind than this serves no reads.
    pub max_read_lag_ms: u64,
    /// A quorum plugin (a `.wasm` component, world `quorum`) that decides
    /// the acknowledgements and the election instead of `quorum`; the
    /// built-in settings above remain its fallback if it traps.
    pub quorum_plugin: Option<String>,
    /// Text handed to the quorum plugin's `configure`.
    pub quorum_config: String,
}

impl Default for ReplicationConfig {
    fn default() -> ReplicationConfig {
        ReplicationConfig {
            mode: Mode::Native,
            backlog_mb: 64,
            quorum: Quorum::None,
            timeout_ms: 1000,
            on_shortfall: Shortfall::Fail,
            manage_replication: false,
            min_replicas_max_lag_s: 10,
            max_read_lag_ms: 10_000,
            quorum_plugin: None,
            quorum_config: String::new(),
        }
    }
}

/// How a shard's nodes get the writes.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Redis replication, from the primary to its replicas.
    #[default]
    Native,
    /// Rampart sends each write to every node itself.
    Fanout,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Shortfall {
    Fail,
    Accept,
}

/// The sandbox every policy plugin runs in (built-ins included).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Linear memory one plugin instance may grow to, in MiB.
    pub memory_limit_mb: u32,
    /// A routing call (`route`, `update`) may run about this long, counted
    /// in wasm instructions (fuel), so a loaded machine never cuts a
    /// well-behaved call short; past it, a trap and the read goes to the
    /// primary. `call_budget_ms` of wall-clock time is the backstop.
    pub route_budget_ms: u32,
    /// The budget of every other call: `configure`, quorum and detector
    /// calls, made off the request path.
    pub call_budget_ms: u32,
    /// The directory `RAMPART POLICY LOAD <kind> <name>` reads plugins
    /// from: clients name a file in it, never a path. Unset: loads over
    /// the client port take only `builtin:` and `native:` policies (the
    /// admin API takes uploads either way).
    pub dir: Option<String>,
}

impl Default for PluginsConfig {
    fn default() -> PluginsConfig {
        PluginsConfig {
            memory_limit_mb: 16,
            route_budget_ms: 1,
            call_budget_ms: 100,
            dir: None,
        }
    }
}

/// The built-in quorums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Quorum {
    /// Asynchronous: answered once the primary has the write.
    #[default]
    None,
    /// One replica.
    One,
    /// A majority of the shard's nodes, the primary included.
    Majority,
    /// Every replica.
    All,
}

impl Quorum {
    /// As written in the configuration.
    pub fn parse(name: &str) -> Option<Quorum> {
        [Quorum::None, Quorum::One, Quorum::Majority, Quorum::All]
            .into_iter()
            .find(|q| q.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Quorum::None => "none",
            Quorum::One => "one",
            Quorum::Majority => "majority",
            Quorum::All => "all",
        }
    }

    /// Replica acknowledgements for a shard with `replicas` replicas.
    pub fn acks(self, replicas: u32) -> u32 {
        rampart_sdk::algorithms::quorum_acks(self.name(), replicas).unwrap_or(replicas)
    }
}

/// Automatic failover.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// `leader`: this instance promotes, repoints and fences. `follower`:
    /// it never changes a node, and routes to the primary it observes.
    /// With `[coordination]` every `leader` instance may take a shard's
    /// failover lease and only the holder acts; a `follower` never takes
    /// one (it serves clients and routes by the records in etcd).
    pub role: FailoverRole,
    /// While a shard has no primary (during a failover), writes wait this
    /// long for one before they are answered with an error.
    pub hold_writes_ms: u64,
    /// At most this many clients wait with held writes; more get an error
    /// at once.
    pub max_held_clients: usize,
    /// Where the shards' epochs are kept across restarts (a directory).
    /// Unset: in memory only, and a restarted Rampart trusts what the nodes
    /// say about themselves.
    pub state_dir: Option<String>,
    /// Events kept for `GET /v1/events`, twice over: this many failover
    /// and fencing events, and this many of every other kind, so a flood
    /// of routine events never pushes a failover out of the history.
    pub event_history: usize,
    /// At most one switchover per shard in this many milliseconds (0: no
    /// limit); one asked for sooner is refused.
    pub switchover_interval_ms: u64,
}

impl Default for FailoverConfig {
    fn default() -> FailoverConfig {
        FailoverConfig {
            role: FailoverRole::Leader,
            hold_writes_ms: 5000,
            max_held_clients: 10_000,
            state_dir: None,
            event_history: 256,
            switchover_interval_ms: 5000,
        }
    }
}

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
    pub tls: Option<crate::net::tls::BackendTls>,
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

    fn validate(&self, config: &Config) -> Result<(), ConfigError> {
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
        if config.failover.state_dir.is_some() {
            return Err(ConfigError(
                "field `failover.state_dir`: with [coordination] the shards' records live in etcd; remove state_dir".into(),
            ));
        }
        if let Some((name, _)) = config
            .shards
            .iter()
            .find(|(_, s)| s.replication.mode == Mode::Fanout)
        {
            return Err(ConfigError(format!(
                "field `shards.{name}.replication.mode`: fan-out needs one Rampart instance sending the writes; it cannot be used with [coordination]"
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailoverRole {
    Leader,
    Follower,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    /// Every command to the primary: reads see every acknowledged write.
    #[default]
    Primary,
    /// Reads round-robin over healthy, connected replicas, falling back to
    /// the primary when there are none. Reads may be slightly stale.
    Replicas,
}

/// What a read served by a replica is guaranteed to see. Replicas that
/// cannot give the guarantee are skipped for that read (the primary serves
/// it when none can), whichever router chose them.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadConsistency {
    /// A connection's reads see every write it made before them and never
    /// go back to an older state than one it has read (read-your-writes and
    /// monotonic reads).
    #[default]
    Session,
    /// Any replica that serves reads, however far behind (within
    /// `max_read_lag_ms`).
    Eventual,
    /// A read sees every write acknowledged to any client before it
    /// arrived, and everything `session` promises.
    Global,
}

impl ReadConsistency {
    pub fn name(self) -> &'static str {
        match self {
            ReadConsistency::Session => "session",
            ReadConsistency::Eventual => "eventual",
            ReadConsistency::Global => "global",
        }
    }
}

/// A configuration mistake, with the field it is about.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

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

impl Config {
    /// Which shard owns each hash slot, from the shards' `slots`: shard
    /// indexes follow the order of `shards` (by name).
    pub fn slot_map(&self) -> Result<crate::shard::slots::SlotMap, ConfigError> {
        crate::shard::slots::SlotMap::build(
            self.shards
                .iter()
                .map(|(name, shard)| (name.as_str(), shard.slots.as_deref())),
        )
        .map_err(|e| ConfigError(e.0))
    }

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
            coordination.validate(self)?;
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
        if let Some(listen) = &self.admin.listen {
            check_addr("admin.listen", listen)?;
            if !is_loopback(listen) && self.admin.token.is_none() {
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
        self.slot_map()?;
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
                check_addr(&format!("shards.{name}.nodes[{i}]"), node)?;
                if shard.nodes[..i].contains(node) {
                    return Err(ConfigError(format!(
                        "field `shards.{name}.nodes[{i}]`: {node} is listed twice"
                    )));
                }
            }
        }
        let positive = [
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

/// Whether `host:port` listens on a loopback address only.
fn is_loopback(listen: &str) -> bool {
    let host = listen.rsplit_once(':').map_or("", |(h, _)| h);
    matches!(host, "localhost" | "[::1]" | "::1")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `host:port` with a non-empty host and a numeric port.
/// Shard names become file names (`failover.state_dir`), etcd keys and
/// metric labels: letters, digits, `-`, `_` and `.`, not starting with a
/// dot, at most 64.
fn check_shard_name(name: &str) -> Result<(), ConfigError> {
    let fine = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if fine {
        return Ok(());
    }
    Err(ConfigError(format!(
        "field `shards`: '{}' is not a shard name: use letters, digits, '-', '_' and '.' (not first), at most 64",
        name.escape_debug()
    )))
}

/// A node address as compared for "the same node twice": `localhost` and
/// the loopback addresses are one host.
fn same_node(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some(("localhost" | "127.0.0.1" | "[::1]" | "::1", port)) => {
            format!("loopback:{port}")
        }
        _ => addr.to_ascii_lowercase(),
    }
}

fn check_addr(field: &str, value: &str) -> Result<(), ConfigError> {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "field `{field}`: expected host:port (e.g. 127.0.0.1:6379), got {value:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [proxy]
        listen = "127.0.0.1:6380"
        [shards.main]
        nodes = ["127.0.0.1:7001", "127.0.0.1:7002"]
        read_from = "replicas"
    "#;

    #[test]
    fn empty_secrets_unsafe_shard_names_and_one_node_twice_are_refused() {
        let shard = "[shards.main]\nnodes = [\"127.0.0.1:7001\"]\n";
        for (sections, expected) in [
            ("password = \"\"\n", "proxy.password"),
            ("[admin]\ntoken = \"\"\n", "admin.token"),
        ] {
            let text = format!("[proxy]\nlisten = \"127.0.0.1:6380\"\n{sections}{shard}");
            let e = Config::parse(&text).unwrap_err().0;
            assert!(e.contains(expected) && e.contains("empty"), "{e}");
        }
        let e = Config::parse("[proxy]\nlisten = \"127.0.0.1:6380\"\n[shards.\"../../escaped\"]\nnodes = [\"127.0.0.1:7001\"]\n")
            .unwrap_err()
            .0;
        assert!(e.contains("not a shard name"), "{e}");
        let two = "[proxy]\nlisten = \"127.0.0.1:6380\"\n[shards.a]\nnodes = [\"127.0.0.1:1\"]\nslots = \"0-8191\"\n\
                   [shards.b]\nnodes = [\"localhost:1\"]\nslots = \"8192-16383\"\n";
        let e = Config::parse(two).unwrap_err().0;
        assert!(e.contains("also a node of shard"), "{e}");
    }

    #[test]
    fn protected_mode_wants_a_password_off_loopback() {
        let open = GOOD.replace("127.0.0.1:6380", "0.0.0.0:6380");
        let e = Config::parse(&open).unwrap_err().0;
        assert!(
            e.contains("proxy.password") && e.contains("protected"),
            "{e}"
        );
        let with_password = open.replace("[proxy]", "[proxy]\npassword = \"x\"");
        assert!(Config::parse(&with_password).is_ok());
        let unprotected = open.replace("[proxy]", "[proxy]\nprotected_mode = false");
        assert!(Config::parse(&unprotected).is_ok());
        assert!(
            Config::parse_with(&open, |name| (name == "RAMPART_PASSWORD")
                .then(|| "x".into()))
            .is_ok()
        );
    }

    /// docs/configuration.md carries reference.toml whole, so the page is
    /// complete on its own and cannot drift from the file.
    #[test]
    fn the_configuration_page_shows_the_reference_file() {
        let reference = include_str!("../../examples/configs/reference.toml");
        let page = include_str!("../../docs/configuration.md");
        assert!(
            page.contains(&format!("```toml\n{}\n```", reference.trim_end())),
            "docs/configuration.md must end with examples/configs/reference.toml verbatim"
        );
    }

    /// `examples/configs/reference.toml` documents every field with its
    /// default: it must parse to exactly what the bare minimum parses to,
    /// and name every field there is.
    #[test]
    fn the_reference_config_is_every_default() {
        let reference = include_str!("../../examples/configs/reference.toml");
        let minimal = r#"
            [proxy]
            listen = "127.0.0.1:6380"
            [admin]
            listen = "127.0.0.1:6381"
            [shards.main]
            nodes = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
        "#;
        let full = format!("{:?}", Config::parse(reference).unwrap());
        assert_eq!(full, format!("{:?}", Config::parse(minimal).unwrap()));
        // Field names as Debug prints them (`name: value`).
        let fields = full
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .filter_map(|word| word.strip_suffix(':'))
            .filter(|name| {
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !name.is_empty()
            });
        for field in fields {
            let documented = [
                format!("{field} ="),
                format!("[{field}]"),
                format!("[{field}."),
                format!(".{field}]"),
            ];
            assert!(
                documented.iter().any(|d| reference.contains(d.as_str())),
                "reference.toml does not document `{field}`"
            );
        }
    }

    #[test]
    fn coordination_settings_are_checked() {
        let with = |section: &str| Config::parse(&format!("{GOOD}\n[coordination]\n{section}\n"));
        let base = "backend = \"etcd\"\nendpoints = [\"127.0.0.1:2379\"]\n";
        let config = with(base).unwrap();
        let coordination = config.coordination.unwrap();
        assert_eq!(coordination.prefix, "/rampart/default");
        assert_eq!(
            coordination.instance_id("0.0.0.0:6380").rsplit(':').next(),
            Some("6380")
        );
        for (extra, field) in [
            ("", "coordination.endpoints"),
            ("prefix = \"rampart\"", "coordination.prefix"),
            ("instance = \"a/b\"", "coordination.instance"),
            (
                "lease_ttl_s = 1\nrequest_timeout_ms = 600",
                "coordination.lease_ttl_s",
            ),
            ("max_view_age_ms = 500", "coordination.max_view_age_ms"),
        ] {
            let section = if field == "coordination.endpoints" {
                "backend = \"etcd\"\nendpoints = []".to_string()
            } else {
                format!("{base}{extra}")
            };
            let error = with(&section).unwrap_err().to_string();
            assert!(error.contains(field), "{extra}: {error}");
        }
        let state_dir =
            format!("{GOOD}\n[failover]\nstate_dir = \"/tmp/x\"\n[coordination]\n{base}");
        let error = Config::parse(&state_dir).unwrap_err().to_string();
        assert!(error.contains("failover.state_dir"), "{error}");
    }

    #[test]
    fn zones_are_numbered_and_must_name_known_nodes() {
        let text =
            format!("{GOOD}zones = {{ \"127.0.0.1:7002\" = \"b\", \"127.0.0.1:7001\" = \"a\" }}\n")
                .replace(
                    "listen = \"127.0.0.1:6380\"",
                    "listen = \"127.0.0.1:6380\"\nzone = \"b\"",
                );
        let config = Config::parse(&text).unwrap();
        let numbers = config.zone_numbers();
        assert_eq!((numbers["a"], numbers["b"]), (1, 2));
        let unknown = text.replace("\"127.0.0.1:7002\" = \"b\"", "\"127.0.0.1:9999\" = \"b\"");
        let error = Config::parse(&unknown).unwrap_err().to_string();
        assert!(error.contains("shards.main.zones"), "{error}");
    }

    #[test]
    fn secrets_left_unset_come_from_the_environment() {
        let text = format!("{GOOD}\n[admin]\nlisten = \"0.0.0.0:6381\"\n");
        let env = |name: &str| match name {
            "RAMPART_ADMIN_TOKEN" => Some("from-env".to_string()),
            "RAMPART_BACKEND_PASSWORD" => Some("node-secret".to_string()),
            _ => None,
        };
        let config = Config::parse_with(&text, env).unwrap();
        assert_eq!(config.admin.token.as_deref(), Some("from-env"));
        assert_eq!(config.backend.password.as_deref(), Some("node-secret"));
        assert_eq!(config.proxy.password, None);
        // Without it, an admin listener open to the network is refused.
        let refused = Config::parse(&text).unwrap_err().to_string();
        assert!(refused.contains("admin.token"), "{refused}");
        // The file wins over the environment.
        let pinned = text.replace(
            "listen = \"0.0.0.0:6381\"",
            "listen = \"0.0.0.0:6381\"\ntoken = \"file\"",
        );
        assert_eq!(
            Config::parse_with(&pinned, env)
                .unwrap()
                .admin
                .token
                .as_deref(),
            Some("file")
        );
    }

    #[test]
    fn shards_that_wait_for_replicas_get_two_links() {
        let with = |lines: &str| {
            let c = Config::parse(&format!("{GOOD}\n{lines}")).unwrap();
            c.backend.links_for(&c.shards["main"])
        };
        assert_eq!(with(""), 1);
        assert_eq!(with("[shards.main.replication]\nquorum = \"one\""), 2);
        assert_eq!(
            with("[backend]\nlinks_per_node = 3\n[shards.main.replication]\nquorum = \"one\""),
            3
        );
    }

    #[test]
    fn good_config_has_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.backend.links_per_node, None);
        assert_eq!(c.shards["main"].read_from, ReadFrom::Replicas);
    }

    #[test]
    fn errors_name_the_field() {
        let typo = GOOD.replace("read_from", "read_form");
        let e = Config::parse(&typo).unwrap_err().0;
        assert!(e.contains("shards.main") && e.contains("read_form"), "{e}");

        let bad_value = GOOD.replace("\"replicas\"", "\"everywhere\"");
        let e = Config::parse(&bad_value).unwrap_err().0;
        assert!(
            e.contains("shards.main.read_from") && e.contains("primary"),
            "{e}"
        );

        let bad_addr = GOOD.replace("127.0.0.1:7002", "localhost");
        let e = Config::parse(&bad_addr).unwrap_err().0;
        assert!(
            e.contains("shards.main.nodes[1]") && e.contains("host:port"),
            "{e}"
        );

        let bad_type = format!("{GOOD}\n[probe]\ninterval_ms = \"fast\"\n");
        let e = Config::parse(&bad_type).unwrap_err().0;
        assert!(e.contains("probe.interval_ms"), "{e}");
    }

    #[test]
    fn fanout_settings_are_checked() {
        let fanout = format!("{GOOD}\n[shards.main.replication]\nmode = \"fanout\"\n");
        let c = Config::parse(&fanout).unwrap();
        assert_eq!(c.shards["main"].replication.mode, Mode::Fanout);
        assert_eq!(c.shards["main"].replication.backlog_mb, 64);

        let managed = format!("{fanout}manage_replication = true\n");
        let e = Config::parse(&managed).unwrap_err().0;
        assert!(
            e.contains("shards.main.replication.manage_replication"),
            "{e}"
        );

        let empty = format!("{fanout}backlog_mb = 0\n");
        let e = Config::parse(&empty).unwrap_err().0;
        assert!(e.contains("shards.main.replication.backlog_mb"), "{e}");

        let follower = format!("[failover]\nrole = \"follower\"\n{fanout}");
        let e = Config::parse(&follower).unwrap_err().0;
        assert!(
            e.contains("shards.main.replication.mode") && e.contains("leader"),
            "{e}"
        );

        let unknown = fanout.replace("\"fanout\"", "\"mirror\"");
        let e = Config::parse(&unknown).unwrap_err().0;
        assert!(
            e.contains("shards.main.replication.mode") && e.contains("fanout"),
            "{e}"
        );
    }
}
