//! The sections about Rampart itself: `[proxy]`, `[admin]`, `[backend]`,
//! `[probe]`, `[failover]`, `[log]` and `[plugins]`.

use std::time::Duration;

use serde::Deserialize;

use super::shard::{Mode, Quorum, ShardConfig};

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
    pub tls: Option<crate::config::tls::ServerTls>,
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
    DEFAULT_DENY.iter().map(|s| s.to_string()).collect()
}

fn default_managed_settings() -> Vec<String> {
    DEFAULT_MANAGED.iter().map(|s| s.to_string()).collect()
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
    /// More tokens accepted as well as `token` (changed live on reload):
    /// a token is rotated by listing the new one here, moving the tools
    /// to it, then removing the old one.
    pub tokens: Vec<String>,
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
    pub tls: Option<crate::config::tls::ServerTls>,
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        AdminConfig {
            listen: None,
            token: None,
            tokens: Vec::new(),
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
    /// the node's runs short so it works while replies flow back. Links
    /// carrying synchronous writes wait for half as many (see
    /// `backend::pool::writer_window`).
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
    pub tls: Option<crate::config::tls::BackendTls>,
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

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailoverRole {
    Leader,
    Follower,
}

/// Refused by default, and why (shown to the client).
pub const DEFAULT_DENY: &[&str] = &[
    "DEBUG SLEEP",
    "DEBUG RELOAD",
    "DEBUG RESTART",
    "DEBUG CRASH-AND-RECOVER",
    "DEBUG SEGFAULT",
    "DEBUG PANIC",
    "DEBUG OOM",
    "DEBUG ASSERT",
    "DEBUG LOADAOF",
    "DEBUG CHANGE-REPL-ID",
];

/// Parameters of the nodes that Rampart manages.
pub const DEFAULT_MANAGED: &[&str] = &[
    "requirepass",
    "masterauth",
    "masteruser",
    "min-replicas-*",
    "min-slaves-*",
    "replicaof",
    "slaveof",
    "replica-*",
    "slave-*",
    "port",
    "bind",
    "unixsocket*",
    "tls-*",
    "aclfile",
];
