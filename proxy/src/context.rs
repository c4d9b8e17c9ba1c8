//! What every part of a running Rampart shares: the configuration, the
//! shards, the detector, events, metrics, memory caps, TLS and the clients.
//! Built once by [`crate::server`] (the wiring) and handed to each task;
//! nothing here starts anything.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::failover::detect::DetectorSource;
use crate::net::tls::{Acceptor, Connector};
use crate::observe::counters::Metrics;
use crate::observe::events::Events;
use crate::topology::Topology;

/// Everything a client task needs, shared by all of them.
pub struct Context {
    pub config: Config,
    /// The admin tokens and client password in force (they change on
    /// reload; `config` keeps the ones Rampart started with).
    pub secrets: crate::secrets::Secrets,
    pub topology: Arc<Topology>,
    /// Every shard with its router, quorum policy and write path, in
    /// configuration order.
    pub shards: Arc<crate::shard::Shards>,
    /// Which shard owns each hash slot, and the move in progress.
    pub slots: Arc<crate::reshard::Slots>,
    /// Makes the nodes a reload or DNS adds, and retires those they remove.
    pub members: Arc<crate::failover::members::Members>,
    /// Looks up the DNS names in shards' `nodes`.
    pub resolver: crate::net::dns::Resolver,
    /// Each shard's section as the configuration last loaded says it (its
    /// `nodes` are looked up again every `discovery.interval_ms`).
    pub wanted_nodes:
        std::sync::Mutex<std::collections::BTreeMap<String, crate::config::ShardConfig>>,
    /// Shards a reload added, to the service that starts their probes and
    /// failover controllers.
    pub added_shards: tokio::sync::mpsc::UnboundedSender<crate::shard::Added>,
    /// Asks the configuration file's watcher for a reload now (`POST
    /// /v1/reload`); set when Rampart runs from a file.
    pub reloads: std::sync::OnceLock<tokio::sync::mpsc::Sender<ReloadAsk>>,
    /// Starts slot moves and runs them.
    pub resharder: Arc<crate::reshard::mover::Resharder>,
    /// `[coordination]`: the instances' shared view in etcd.
    pub coordination: Option<Arc<crate::coord::Coordination>>,
    /// Bumped when any node's role or health changes (router plugins
    /// refresh their node list on it).
    pub topology_changes: Arc<AtomicU64>,
    /// `probe.interval_ms`, `timeout_ms` and `busy_kill_after_ms` as they
    /// are now (a reload changes them).
    pub probe_timings: Arc<crate::failover::probe::Timings>,
    /// The detector every probe uses: the built-in `probe.detector`, or a
    /// plugin; replaceable at runtime.
    pub detector: Arc<DetectorSource>,
    pub clients: AtomicUsize,
    /// What the failover controllers did.
    pub events: Arc<Events>,
    /// Request latency histograms.
    pub metrics: Arc<Metrics>,
    /// The last minutes of rates, latencies and lag, for the dashboard.
    pub history: Arc<crate::observe::history::History>,
    /// `[limits]` as a reload last set them (`config.limits` keeps the
    /// ones Rampart started with): each new connection reads them once.
    pub limits: arc_swap::ArcSwap<crate::resp::Limits>,
    /// Memory the clients' buffered replies and partial requests take,
    /// against `[limits]`'s caps.
    pub budget: Arc<crate::backend::budget::Budget>,
    /// TLS on the client listener, the admin listener and to the nodes
    /// (reloaded on SIGHUP).
    pub client_tls: Option<Acceptor>,
    pub admin_tls: Option<Arc<Acceptor>>,
    pub backend_tls: Option<Arc<Connector>>,
    /// The id the next client gets.
    pub(crate) next_client_id: AtomicU64,
    /// Becomes true when Rampart is shutting down: clients finish what they
    /// are owed and close.
    pub shutdown: watch::Receiver<bool>,
    /// Commands and settings clients may not use (`proxy.deny_commands`,
    /// `proxy.managed_settings`).
    pub guard: crate::client::guard::Guard,
    /// Every connected client, for `CLIENT LIST`, `KILL`, `UNBLOCK`.
    pub registry: Arc<crate::client::registry::Registry>,
    /// Wrong passwords, per source address and in total.
    pub auth_throttle: crate::client::throttle::AuthThrottle,
    /// ACL users and settings changed through Rampart, copied to every
    /// node and caught up on those that missed them.
    pub node_settings: Arc<crate::failover::settings::Settings>,
}

/// Counts a connected client for `max_clients` while it lives.
/// A reload asked for by an operator, answered with what it did.
pub type ReloadAsk = tokio::sync::oneshot::Sender<Reloaded>;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The file was read: the changed fields applied at once, and those
    /// that wait for a restart.
    Done {
        now: Vec<String>,
        later: Vec<String>,
    },
    /// The file is not valid; nothing changed.
    Invalid(String),
}

pub struct ClientSlot(Arc<Context>);

impl ClientSlot {
    pub(crate) fn take(ctx: &Arc<Context>) -> ClientSlot {
        ctx.clients.fetch_add(1, Ordering::AcqRel);
        ClientSlot(ctx.clone())
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}
