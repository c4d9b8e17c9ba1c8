//! The shared picture of the data tier: shards, their nodes, each node's role
//! and health as last observed. Written by the control loop (probes, the data
//! path's passive signals), read by the request path on every command, so the
//! per-node fields are atomics and reading them takes no lock.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

mod node;
pub mod nodes;
mod observed;
pub mod position;
mod risks;
mod trend;

pub use node::{Health, Node, NodeView, Report, Role, SyncState};
pub use risks::MemoryRisk;
pub use trend::{Memory, TrendView};

use crate::config::{ReadConsistency, ReadFrom};
use crate::replicate::lag::OffsetHistory;
use crate::replicate::window::Admit;
use crate::replicate::{Durability, DurabilityView};

/// A shard's primary and replicas as the control loop sees them: the
/// state half of a shard (`shard::Shard` adds what the request path
/// needs: router, quorum policy, write path).
pub struct ReplicaSet {
    pub name: String,
    /// Appended to by reloads, never reordered (see `nodes.rs`).
    pub nodes: nodes::NodeList,
    /// As the configuration last loaded says (a reload changes it with the
    /// router it names).
    read_from: Mutex<ReadFrom>,
    /// The hash slots the shard owns, as ranges (`0-8191`); changed by
    /// slot moves.
    slots: Mutex<String>,
    /// The zone of this Rampart instance (`proxy.zone`), numbered like the
    /// nodes' zones; 0 = none. Routers prefer replicas in it.
    pub client_zone: u32,
    /// The write quorum in force, read by the links that carry writes.
    pub durability: Arc<Durability>,
    /// Index into `nodes` of the primary, `NO_PRIMARY` when none is known.
    primary: AtomicUsize,
    /// Bumped by every promotion; a node claiming to be primary that is not
    /// this epoch's primary is fenced.
    epoch: AtomicU64,
    /// A failover is choosing a new primary: writes wait.
    failing_over: AtomicBool,
    /// With `[coordination]`: this instance has not read etcd for longer
    /// than `max_view_age_ms`, so another may have named a new primary;
    /// writes wait.
    view_stale: AtomicBool,
    /// A follower instance never decides who is primary: it re-derives it
    /// from what the nodes say on every probe. A leader's primary changes
    /// only by discovery at start, failover and switchover.
    follow_claims: bool,
    max_read_lag_ms: u64,
    /// How often nodes are probed: a replica's fitness for reads is
    /// re-derived this often, so the lag bound leaves it as a margin.
    probe_interval: Duration,
    /// Where nodes stand in the history of writes, for consistent reads.
    pub positions: position::Positions,
    /// The primary's offsets over time, for replicas' lag in milliseconds.
    history: Mutex<OffsetHistory>,
    /// Bumped whenever the usable primary may have changed: held writes
    /// wait on it.
    changed: watch::Sender<u64>,
    /// Clients currently waiting with held writes.
    pub held: AtomicUsize,
    /// Fan-out mode: Rampart sends every write to every node, and picks
    /// the primary (whose replies clients get) itself.
    fanout: bool,
    /// When the last switchover asked of this shard began, for
    /// `failover.switchover_interval_ms`.
    last_switchover: Mutex<Option<Instant>>,
    /// Why the shard has no primary and waits for an operator (no node
    /// can be proven to hold every acknowledged write), if it does.
    awaiting_operator: Mutex<Option<String>>,
    /// Removed from service while running (see `operate/shards.rs`): its
    /// failover controller ends, and nothing is sent to it any more.
    retired: AtomicBool,
}

const NO_PRIMARY: usize = usize::MAX;

impl ReplicaSet {
    pub fn new(
        name: String,
        nodes: Vec<Arc<Node>>,
        read_from: ReadFrom,
        follow_claims: bool,
        max_read_lag_ms: u64,
    ) -> ReplicaSet {
        ReplicaSet {
            name,
            nodes: nodes::NodeList::new(nodes),
            read_from: Mutex::new(read_from),
            slots: Mutex::new("0-16383".into()),
            client_zone: 0,
            durability: Arc::default(),
            primary: AtomicUsize::new(NO_PRIMARY),
            epoch: AtomicU64::new(0),
            failing_over: AtomicBool::new(false),
            view_stale: AtomicBool::new(false),
            follow_claims,
            max_read_lag_ms,
            probe_interval: Duration::from_millis(100),
            positions: position::Positions::new(ReadConsistency::default()),
            history: Mutex::new(OffsetHistory::default()),
            changed: watch::channel(0).0,
            held: AtomicUsize::new(0),
            fanout: false,
            last_switchover: Mutex::new(None),
            awaiting_operator: Mutex::new(None),
            retired: AtomicBool::new(false),
        }
    }

    /// Takes the shard out of service: its nodes are no longer probed,
    /// its controller ends at its next tick.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        for node in self.nodes.iter() {
            node.set_retired(true);
        }
        // Wakes whoever watches the shard (piped clients, held writes).
        self.changed.send_modify(|generation| *generation += 1);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Says (or, with `None`, clears) why the shard waits for an operator.
    pub fn set_awaiting_operator(&self, why: Option<String>) {
        *self
            .awaiting_operator
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = why;
    }

    pub fn awaiting_operator(&self) -> Option<String> {
        self.awaiting_operator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Admits a switchover unless one began less than `interval` ago, in
    /// which case it answers how long ago that was. A switchover pauses
    /// writes and moves every replica; a client asking for thousands a
    /// second must not get them (nor flood the event history).
    pub fn admit_switchover(&self, interval: Duration) -> Result<(), Duration> {
        let mut last = self
            .last_switchover
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match *last {
            Some(at) if now.duration_since(at) < interval => Err(now.duration_since(at)),
            _ => {
                *last = Some(now);
                Ok(())
            }
        }
    }

    /// `ranges` as the configuration writes them (`0-8191,10000`).
    pub fn with_slots(self, ranges: String) -> ReplicaSet {
        self.set_slots(ranges);
        self
    }

    pub fn set_slots(&self, ranges: String) {
        if let Ok(mut slots) = self.slots.lock() {
            *slots = ranges;
        }
    }

    pub fn slots(&self) -> String {
        self.slots.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn with_reads(
        mut self,
        consistency: ReadConsistency,
        probe_interval: Duration,
    ) -> ReplicaSet {
        self.positions.set_consistency(consistency);
        self.probe_interval = probe_interval;
        self
    }

    pub fn with_fanout(mut self, fanout: bool) -> ReplicaSet {
        self.fanout = fanout;
        self
    }

    pub fn is_fanout(&self) -> bool {
        self.fanout
    }

    /// Index into `nodes` of this epoch's primary.
    pub fn primary_index(&self) -> Option<usize> {
        let i = self.primary.load(Ordering::Acquire);
        (i < self.nodes.len()).then_some(i)
    }

    /// Replicas configured (every node but one).
    /// The shard's nodes in service, but one: the replicas a quorum
    /// counts.
    pub fn replica_count(&self) -> u32 {
        let live = self.nodes.iter().filter(|n| !n.is_retired()).count();
        live.saturating_sub(1) as u32
    }

    pub fn with_client_zone(mut self, zone: u32) -> ReplicaSet {
        self.client_zone = zone;
        self
    }

    /// The primary to send writes to: known, answering, and not being
    /// replaced. A suspect primary (a failed probe or a broken link) is
    /// not sent new writes: they wait until it answers again or a failover
    /// replaces it, a pause for the client instead of an error.
    ///
    /// With `[coordination]` the write window decides too, checked here on
    /// every write rather than by the coordination loop: past it another
    /// instance may have named a new primary. Under failsafe a primary that
    /// restarted or lost data is never written to (nobody can fail it
    /// over while etcd is out, and what it lacks must not become the
    /// truth).
    pub fn primary(&self) -> Option<&Arc<Node>> {
        if self.failing_over.load(Ordering::Acquire) {
            return None;
        }
        let node = self
            .primary_node()
            .filter(|node| node.health() == Health::Up)?;
        match self.durability.window.admits() {
            Admit::Open => Some(node),
            Admit::Failsafe if !node.is_stale() => Some(node),
            _ => None,
        }
    }

    /// Whether `node` is one of this shard's.
    pub fn has(&self, node: &Arc<Node>) -> bool {
        self.nodes.iter().any(|n| Arc::ptr_eq(n, node))
    }

    /// This epoch's primary, whatever its health.
    pub fn primary_node(&self) -> Option<&Arc<Node>> {
        self.nodes.get(self.primary.load(Ordering::Acquire))
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn node(&self, id: u32) -> Option<&Arc<Node>> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn node_by_addr(&self, addr: &str) -> Option<&Arc<Node>> {
        self.nodes.iter().find(|n| n.addr == addr)
    }

    /// Makes `node` the primary of `epoch` (the failover controller's call).
    pub fn set_primary(&self, node: &Node, epoch: u64) {
        let index = self.nodes.iter().position(|n| n.id == node.id);
        self.epoch.store(epoch, Ordering::Release);
        self.primary
            .store(index.unwrap_or(NO_PRIMARY), Ordering::Release);
        if let Ok(mut history) = self.history.lock() {
            history.clear();
        }
        self.refresh();
    }

    /// Forgets the primary, so that it is discovered again.
    pub fn clear_primary(&self) {
        self.primary.store(NO_PRIMARY, Ordering::Release);
        self.refresh();
    }

    /// Marks a failover as started or finished. Writes wait while it runs.
    pub fn set_failing_over(&self, on: bool) {
        self.failing_over.store(on, Ordering::Release);
        self.refresh();
    }

    pub fn is_failing_over(&self) -> bool {
        self.failing_over.load(Ordering::Acquire)
    }

    /// Marks this instance's view of the coordination store as too old
    /// (or fresh again); returns whether that changed.
    pub fn set_view_stale(&self, stale: bool) -> bool {
        let was = self.view_stale.swap(stale, Ordering::AcqRel);
        if was != stale {
            self.refresh();
        }
        was != stale
    }

    pub fn is_view_stale(&self) -> bool {
        self.view_stale.load(Ordering::Acquire)
    }

    /// A receiver that sees every change of the usable primary.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn read_from(&self) -> ReadFrom {
        *self.read_from.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_read_from(&self, read_from: ReadFrom) {
        *self.read_from.lock().unwrap_or_else(|p| p.into_inner()) = read_from;
    }

    pub fn snapshot(&self) -> ShardView {
        let primary = self.primary.load(Ordering::Acquire);
        ShardView {
            name: self.name.clone(),
            read_from: format!("{:?}", self.read_from()).to_lowercase(),
            slots: self.slots(),
            mode: if self.fanout { "fanout" } else { "native" },
            epoch: self.epoch(),
            failing_over: self.is_failing_over(),
            view_stale: self.is_view_stale(),
            primary: self.primary_node().map(|p| p.addr.clone()),
            held_clients: self.held.load(Ordering::Relaxed),
            awaiting_operator: self.awaiting_operator(),
            durability: self.durability.view(),
            reads: self.positions.view(),
            nodes: self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| !n.is_retired())
                .map(|(i, n)| n.snapshot(i == primary, self.fanout))
                .collect(),
        }
    }
}

/// Every shard's replica set, in the order of the request path's shards
/// (configuration order, then shards added by reloads). Shards are only
/// ever added while Rampart runs, so an index stays valid.
pub struct Topology {
    shards: arc_swap::ArcSwap<Vec<Arc<ReplicaSet>>>,
}

impl Topology {
    pub fn new(shards: Vec<Arc<ReplicaSet>>) -> Topology {
        Topology {
            shards: arc_swap::ArcSwap::from_pointee(shards),
        }
    }

    /// Every shard as of now.
    pub fn shards(&self) -> Arc<Vec<Arc<ReplicaSet>>> {
        self.shards.load_full()
    }

    /// The first shard (by name): where keyless commands go, and what an
    /// operation that names no shard acts on.
    pub fn first(&self) -> Arc<ReplicaSet> {
        self.shards.load()[0].clone()
    }

    /// Every node with its shard.
    pub fn nodes(&self) -> Vec<(Arc<ReplicaSet>, Arc<Node>)> {
        self.shards()
            .iter()
            .flat_map(|s| s.nodes.iter().map(move |n| (s.clone(), n.clone())))
            .collect()
    }

    pub fn snapshot(&self) -> TopologyView {
        TopologyView {
            shards: self.shards().iter().map(|s| s.snapshot()).collect(),
        }
    }

    /// Takes `shard` out of the topology (it was retired).
    pub fn remove(&self, shard: &Arc<ReplicaSet>) {
        self.shards.rcu(|shards| {
            shards
                .iter()
                .filter(|s| !Arc::ptr_eq(s, shard))
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    /// Adds a shard at the end.
    pub fn push(&self, shard: Arc<ReplicaSet>) {
        self.shards.rcu(|shards| {
            let mut shards = Vec::clone(shards);
            shards.push(shard.clone());
            shards
        });
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TopologyView {
    pub shards: Vec<ShardView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardView {
    pub name: String,
    pub read_from: String,
    /// The hash slots it owns (`0-8191`).
    pub slots: String,
    /// `native` or `fanout`.
    pub mode: &'static str,
    pub epoch: u64,
    pub failing_over: bool,
    /// With `[coordination]`: writes are held because this instance's
    /// view of etcd is too old.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub view_stale: bool,
    pub primary: Option<String>,
    pub held_clients: usize,
    /// Why the shard waits for `rampart promote --force`, if it does.
    pub awaiting_operator: Option<String>,
    pub durability: DurabilityView,
    /// Who served reads, and the consistency they were held to.
    pub reads: position::ReadsView,
    pub nodes: Vec<NodeView>,
}
