//! The shared picture of the data tier: shards, their nodes, each node's role
//! and health as last observed. Written by the control loop (probes, the data
//! path's passive signals), read by the request path on every command, so the
//! per-node fields are atomics and reading them takes no lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

pub mod position;

use crate::backend::NodePool;
use crate::config::{ReadConsistency, ReadFrom};
use crate::replicate::lag::OffsetHistory;
use crate::replicate::window::Admit;
use crate::replicate::{Durability, DurabilityView};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Unknown,
    Primary,
    Replica,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Answering probes.
    Up,
    /// Missed a probe or failed on the data path, not yet long enough to be down.
    Suspect,
    /// Not answering.
    Down,
}

/// Where a fan-out node stands with the shard's writes (native shards
/// leave every node `InSync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncState {
    /// Has run every write up to the last few: may serve reads and be
    /// primary.
    InSync,
    /// Connected again and running the writes it missed.
    CatchingUp,
    /// Not connected; its writes wait in the backlog.
    Down,
    /// Missed more than the backlog holds, or may have lost writes (it
    /// restarted, or its connection died with writes unanswered): must be
    /// copied afresh before it serves again.
    Stale,
    /// Being copied from a node in sync.
    Resyncing,
}

impl SyncState {
    fn from_u8(v: u8) -> SyncState {
        match v {
            0 => SyncState::InSync,
            1 => SyncState::CatchingUp,
            2 => SyncState::Down,
            3 => SyncState::Stale,
            _ => SyncState::Resyncing,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SyncState::InSync => "in-sync",
            SyncState::CatchingUp => "catching-up",
            SyncState::Down => "down",
            SyncState::Stale => "stale",
            SyncState::Resyncing => "resyncing",
        }
    }
}

/// One Redis node.
pub struct Node {
    pub id: u32,
    pub addr: String,
    /// The node's zone from the configuration, numbered; 0 = none.
    pub zone: u32,
    role: AtomicU8,
    health: AtomicU8,
    /// Replication offset from the last probe.
    offset: AtomicU64,
    /// The highest offset ever seen on this node. Offsets only grow within
    /// a shard's history (they carry over promotions), so a node reporting
    /// less has lost data: restarted without persistence, say.
    max_offset: AtomicU64,
    /// For a replica: whether its link to the primary is up (`connected`).
    replica_connected: AtomicU8,
    /// For a replica: whom it follows, as it reports it.
    master: Mutex<Option<String>>,
    /// `replica-priority`: lower is promoted first, 0 never.
    priority: AtomicU32,
    /// For a replica: how far behind the primary, in bytes and in time.
    lag_bytes: AtomicU64,
    lag_ms: AtomicU64,
    /// May serve reads: decided by the shard on every probe.
    readable: AtomicBool,
    /// Round trip of the last answered probe, in microseconds.
    rtt_us: AtomicU32,
    /// Fan-out only: see [`SyncState`].
    sync: AtomicU8,
    /// Fan-out only: every entry of the shard's log below this has been
    /// answered by the node.
    applied: AtomicU64,
    /// Commands forwarded to this node.
    pub requests: AtomicU64,
    /// `redis_version` from INFO, for HELLO replies.
    pub version: Mutex<Option<String>>,
    /// `run_id` from INFO: it changes when the process restarts.
    run_id: Mutex<Option<String>>,
    /// The node restarted since Rampart last trusted its data: whatever it
    /// did not persist is gone, and it cannot vouch for acknowledged
    /// writes until it has caught up from a node that can.
    restarted: AtomicBool,
    /// Rampart told this replica to stop following a primary that was down
    /// (`REPLICAOF NO ONE`) to keep its copy safe: it claims to be a primary
    /// but is a candidate for promotion like a replica.
    detached: AtomicBool,
    pub pool: NodePool,
    /// Shared by all nodes: bumped when any node's role, health or fitness
    /// for reads changes, so policies that cache the node list know to
    /// refresh it.
    changes: Arc<AtomicU64>,
}

impl Node {
    pub fn new(id: u32, addr: String, pool: NodePool, changes: Arc<AtomicU64>) -> Node {
        Node {
            changes,
            id,
            addr,
            zone: 0,
            role: AtomicU8::new(Role::Unknown as u8),
            health: AtomicU8::new(Health::Down as u8),
            offset: AtomicU64::new(0),
            max_offset: AtomicU64::new(0),
            replica_connected: AtomicU8::new(0),
            master: Mutex::new(None),
            priority: AtomicU32::new(100),
            lag_bytes: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            readable: AtomicBool::new(false),
            rtt_us: AtomicU32::new(0),
            sync: AtomicU8::new(SyncState::InSync as u8),
            applied: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            version: Mutex::new(None),
            run_id: Mutex::new(None),
            restarted: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            pool,
        }
    }

    /// Places the node in a zone (numbered, see [`Shard::client_zone`]).
    pub fn in_zone(mut self, zone: u32) -> Node {
        self.zone = zone;
        self
    }

    pub fn role(&self) -> Role {
        match self.role.load(Ordering::Acquire) {
            1 => Role::Primary,
            2 => Role::Replica,
            _ => Role::Unknown,
        }
    }

    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Acquire) {
            0 => Health::Up,
            1 => Health::Suspect,
            _ => Health::Down,
        }
    }

    pub fn offset(&self) -> u64 {
        self.offset.load(Ordering::Acquire)
    }

    pub fn max_offset(&self) -> u64 {
        self.max_offset.load(Ordering::Acquire)
    }

    pub fn priority(&self) -> u32 {
        self.priority.load(Ordering::Relaxed)
    }

    /// Whom the node follows, if it is a replica.
    pub fn master(&self) -> Option<String> {
        self.master
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn rtt_us(&self) -> u32 {
        self.rtt_us.load(Ordering::Relaxed)
    }

    pub fn set_rtt(&self, rtt: std::time::Duration) {
        self.rtt_us.store(
            rtt.as_micros().min(u32::MAX as u128) as u32,
            Ordering::Relaxed,
        );
    }

    pub fn lag_ms(&self) -> u64 {
        self.lag_ms.load(Ordering::Relaxed)
    }

    /// Batches sent to the node and not answered yet.
    pub fn inflight(&self) -> u64 {
        self.pool.stats().inflight()
    }

    pub fn count_requests(&self, n: u64) {
        self.requests.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_health(&self, health: Health) {
        if self.health.swap(health as u8, Ordering::AcqRel) != health as u8 {
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Records the `run_id` a (re)connection found. A different one than
    /// before means the process restarted; returns true then.
    pub fn note_run_id(&self, run_id: &str) -> bool {
        let mut known = self.run_id.lock().unwrap_or_else(|p| p.into_inner());
        let restarted = known.as_deref().is_some_and(|old| old != run_id);
        if restarted {
            self.restarted.store(true, Ordering::Release);
        }
        *known = Some(run_id.to_string());
        restarted
    }

    /// May have lost acknowledged writes: restarted since it was last
    /// trusted, or its offset went backwards.
    pub fn is_stale(&self) -> bool {
        self.restarted.load(Ordering::Acquire) || self.offset() < self.max_offset()
    }

    /// Marks the node as detached (or following again).
    pub fn set_detached(&self, detached: bool) {
        self.detached.store(detached, Ordering::Release);
    }

    pub fn is_detached(&self) -> bool {
        self.detached.load(Ordering::Acquire)
    }

    /// Distrusts the node's data until it resyncs or an operator decides.
    pub fn distrust(&self) {
        self.restarted.store(true, Ordering::Release);
    }

    /// Trusts the node's data as it is now: it resynced from a trusted
    /// primary, or an operator chose it knowing what it may lack.
    pub fn trust_again(&self) {
        self.restarted.store(false, Ordering::Release);
        self.max_offset.store(self.offset(), Ordering::Release);
    }

    /// Records what a probe saw.
    pub fn observe(&self, report: &Report) {
        let role_changed = self.role.swap(report.role as u8, Ordering::AcqRel) != report.role as u8;
        self.offset.store(report.offset, Ordering::Release);
        self.max_offset.fetch_max(report.offset, Ordering::AcqRel);
        self.priority.store(report.priority, Ordering::Relaxed);
        *self.master.lock().unwrap_or_else(|p| p.into_inner()) = report.master.clone();
        let link_changed = self
            .replica_connected
            .swap(report.connected as u8, Ordering::AcqRel)
            != report.connected as u8;
        if role_changed || link_changed {
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn sync(&self) -> SyncState {
        SyncState::from_u8(self.sync.load(Ordering::Acquire))
    }

    /// Returns the previous state.
    pub fn set_sync(&self, state: SyncState) -> SyncState {
        let old = SyncState::from_u8(self.sync.swap(state as u8, Ordering::AcqRel));
        if old != state {
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
        old
    }

    /// Fan-out: the role is Rampart's choice, not what the node says.
    fn set_role(&self, role: Role) {
        if self.role.swap(role as u8, Ordering::AcqRel) != role as u8 {
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Fan-out: the node has answered every log entry below `upto`.
    pub(crate) fn set_applied(&self, upto: u64) {
        self.applied.store(upto, Ordering::Release);
    }

    pub(crate) fn set_lag(&self, bytes: u64, ms: u64) {
        self.lag_bytes.store(bytes, Ordering::Relaxed);
        self.lag_ms.store(ms, Ordering::Relaxed);
    }

    /// Sets whether the node may serve reads as a probe would have found
    /// it: for `rampart policy test`, whose scenarios state each node's lag
    /// rather than a history of offsets to prove it from.
    pub fn simulate_readable(&self, readable: bool) {
        self.set_readable(readable);
    }

    fn set_readable(&self, readable: bool) -> bool {
        let changed = self.readable.swap(readable, Ordering::AcqRel) != readable;
        if changed {
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
        changed
    }

    /// A replica that may serve reads: answering probes, following the
    /// shard's current primary over a live link, and not too far behind.
    /// A node whose role is in doubt (claiming to be primary, following
    /// someone else, unreachable) never does.
    pub fn serves_reads(&self) -> bool {
        self.readable.load(Ordering::Acquire)
    }

    pub fn snapshot(&self, primary: bool, fanout: bool) -> NodeView {
        NodeView {
            sync: fanout.then(|| self.sync()),
            id: self.id,
            addr: self.addr.clone(),
            role: self.role(),
            health: self.health(),
            offset: self.offset(),
            primary,
            serves_reads: self.serves_reads(),
            follows: self.master(),
            priority: self.priority(),
            lag_bytes: self.lag_bytes.load(Ordering::Relaxed),
            lag_ms: self.lag_ms(),
            rtt_us: self.rtt_us(),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.pool.stats().failed_requests.load(Ordering::Relaxed),
            connections: self.pool.stats().connections.load(Ordering::Relaxed),
        }
    }
}

/// What one `INFO replication` reply says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub role: Role,
    /// `master_repl_offset` of a primary; `slave_repl_offset` of a replica.
    pub offset: u64,
    /// For a replica: its link to the primary is up.
    pub connected: bool,
    /// For a replica: the `host:port` it follows.
    pub master: Option<String>,
    /// `replica-priority` (`slave_priority`); 100 when not reported.
    pub priority: u32,
    /// For a primary: replicas connected to it (`connected_slaves`), or,
    /// when `min-replicas-to-write` is set, those it counts as good.
    pub replicas: u32,
}

/// A primary and its replicas.
pub struct Shard {
    pub name: String,
    pub nodes: Vec<Arc<Node>>,
    pub read_from: ReadFrom,
    /// The hash slots the shard owns, as ranges (`0-8191`).
    pub slots: String,
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
}

const NO_PRIMARY: usize = usize::MAX;

impl Shard {
    pub fn new(
        name: String,
        nodes: Vec<Arc<Node>>,
        read_from: ReadFrom,
        follow_claims: bool,
        max_read_lag_ms: u64,
    ) -> Shard {
        Shard {
            name,
            nodes,
            read_from,
            slots: "0-16383".into(),
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
        }
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

    pub fn with_slots(mut self, ranges: &[(u16, u16)]) -> Shard {
        let ranges: Vec<String> = ranges
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        self.slots = ranges.join(",");
        self
    }

    pub fn with_reads(mut self, consistency: ReadConsistency, probe_interval: Duration) -> Shard {
        self.positions.set_consistency(consistency);
        self.probe_interval = probe_interval;
        self
    }

    pub fn with_fanout(mut self, fanout: bool) -> Shard {
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
    pub fn replica_count(&self) -> u32 {
        self.nodes.len().saturating_sub(1) as u32
    }

    pub fn with_client_zone(mut self, zone: u32) -> Shard {
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

    /// Records a probe's report of `node`, taken at `at`. `answered` is
    /// the node's answered batches when the probe started, when known (the
    /// probe loop's own probes): the primary's report then becomes the
    /// shard's [`position::Mark`].
    pub fn observe(&self, node: &Node, report: &Report, at: Instant, answered: Option<u64>) {
        if self.fanout {
            // Every fan-out node is a primary of its own; what matters is
            // that it answers, and its role is Rampart's choice.
            let mut report = report.clone();
            report.role = node.role();
            report.master = None;
            node.observe(&report);
            return;
        }
        node.observe(report);
        let Ok(mut history) = self.history.lock() else {
            return;
        };
        let is_primary = self.primary_node().is_some_and(|p| p.id == node.id);
        if is_primary {
            history.record(at, report.offset);
            if let (Some(answered), Role::Primary) = (answered, report.role) {
                self.positions.set_mark(position::Mark {
                    history: self.history(),
                    started: position::stamp_of(at),
                    answered,
                    offset: report.offset,
                });
            }
        } else if report.role == Role::Replica {
            let primary = self.primary_node();
            let primary_offset = primary.map_or(0, |p| p.offset());
            // A restarted replica that synced from the trusted primary
            // holds what the primary holds again.
            if report.connected
                && primary.is_some_and(|p| {
                    !p.is_stale() && report.master.as_deref() == Some(p.addr.as_str())
                })
                && report.offset >= node.max_offset()
            {
                node.restarted.store(false, Ordering::Release);
            }
            let lag = history.lag(report.offset, Instant::now());
            node.set_lag(
                primary_offset.saturating_sub(report.offset),
                lag.as_millis() as u64,
            );
        }
    }

    /// Re-derives who may serve reads (and, on a follower, who is primary)
    /// after a probe, and wakes held writes if the usable primary changed.
    pub fn refresh(&self) {
        if self.fanout {
            self.refresh_fanout();
            return;
        }
        if self.follow_claims {
            self.primary
                .store(self.claimed_primary(), Ordering::Release);
        }
        let covered = self.covered_offset();
        let mut changed = false;
        for node in &self.nodes {
            let readable = self.follows_primary(node)
                && covered.is_some_and(|covered| node.offset() >= covered);
            changed |= node.set_readable(readable);
        }
        // Wake held writes whenever there is a primary to send them to
        // (cheap: with nobody held, nobody is woken).
        let usable = self.primary().is_some();
        if (usable && self.held.load(Ordering::Acquire) > 0) || changed {
            self.changed.send_modify(|generation| *generation += 1);
        }
    }

    /// A replica answering probes and following this epoch's primary over
    /// a live link: one that may take over (a switchover waits for it to
    /// catch up) and, caught up enough, serve reads.
    pub fn follows_primary(&self, node: &Node) -> bool {
        let primary = self.primary_node().map(|p| p.addr.as_str());
        node.health() == Health::Up
            && node.role() == Role::Replica
            && node.replica_connected.load(Ordering::Acquire) == 1
            && primary.is_some()
            && node.master().as_deref() == primary
    }

    /// The offset a replica needs to serve reads until the next refresh
    /// (one probe interval away) within `max_read_lag_ms`: the primary's
    /// at its first probe after `now + interval - max_read_lag_ms`. While
    /// the primary does not answer no write is sent to it, so its last
    /// answered probe stands.
    fn covered_offset(&self) -> Option<u64> {
        let lag = Duration::from_millis(self.max_read_lag_ms);
        let history = self.history.lock().ok()?;
        // A bound reaching back before this process began: its first probe.
        let covering = match (Instant::now() + self.probe_interval).checked_sub(lag) {
            Some(since) => history.covering(since),
            None => history.first(),
        };
        match covering {
            Some(offset) => Some(offset),
            None if self
                .primary_node()
                .is_some_and(|p| p.health() != Health::Up) =>
            {
                history.last()
            }
            None => None,
        }
    }

    /// The history offsets are in now.
    pub fn history(&self) -> position::History {
        position::History {
            epoch: self.epoch(),
            primary: self.primary_node().map_or(u32::MAX, |p| p.id),
        }
    }

    /// Where `node` stands: its offset (native) or the log entries it has
    /// answered (fan-out).
    pub fn position(&self, node: &Node) -> u64 {
        if self.fanout {
            node.applied.load(Ordering::Acquire)
        } else {
            node.offset()
        }
    }

    /// A position covering everything any node held, and every write
    /// acknowledged, at `since`; `None` until one is known (native: the
    /// primary has not been probed since).
    pub fn position_after(&self, since: position::Stamp) -> Option<u64> {
        if self.fanout {
            return Some(self.positions.log_head());
        }
        let mark = self.positions.mark()?;
        (mark.started > since && mark.history == self.history()).then_some(mark.offset)
    }

    /// A position covering every write acknowledged to anyone so far, if
    /// one is known: native, the last mark while the primary's links have
    /// answered nothing since it was taken.
    pub fn global_floor(&self) -> Option<u64> {
        if self.fanout {
            return Some(self.positions.log_head());
        }
        let mark = self.positions.mark()?;
        let primary = self.primary_node()?;
        let quiet = primary.pool.stats().answered() == mark.answered;
        (quiet && mark.history == self.history()).then_some(mark.offset)
    }

    /// Fan-out: the primary is a node that answers and has every write,
    /// kept while it stays so (a change costs nothing, no data moves, but
    /// needless changes confuse whoever reads the topology); the other
    /// such nodes serve reads while within `max_read_lag_ms` of the log.
    fn refresh_fanout(&self) {
        let fit = |n: &Node| n.health() == Health::Up && n.sync() == SyncState::InSync;
        let current = self.primary.load(Ordering::Acquire);
        let chosen = match self.nodes.get(current) {
            Some(node) if fit(node) => current,
            _ => self.nodes.iter().position(|n| fit(n)).unwrap_or(NO_PRIMARY),
        };
        if chosen != current {
            self.primary.store(chosen, Ordering::Release);
            if chosen != NO_PRIMARY {
                self.epoch.fetch_add(1, Ordering::AcqRel);
            }
        }
        let mut changed = chosen != current;
        for (i, node) in self.nodes.iter().enumerate() {
            node.set_role(if i == chosen {
                Role::Primary
            } else {
                Role::Replica
            });
            // As in native mode: a node too far behind serves no reads.
            let current = node.lag_ms() <= self.max_read_lag_ms;
            changed |= node.set_readable(i != chosen && fit(node) && current);
        }
        let usable = self.primary().is_some();
        if (usable && self.held.load(Ordering::Acquire) > 0) || changed {
            self.changed.send_modify(|generation| *generation += 1);
        }
    }

    /// The node the others agree is primary, from what they report: among
    /// the reachable nodes claiming the role, the one with the highest
    /// offset (several claimants is a split brain someone else left; it is
    /// logged).
    pub fn claimed_primary(&self) -> usize {
        let claimants: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                n.role() == Role::Primary && n.health() != Health::Down
            })
            .collect();
        if claimants.len() > 1 {
            tracing::warn!(shard = %self.name, claimants = ?claimants.iter().map(|&i| &self.nodes[i].addr).collect::<Vec<_>>(),
                "several nodes claim to be primary; using the one with the highest offset");
        }
        claimants
            .iter()
            .copied()
            .max_by_key(|&i| self.nodes[i].offset())
            .unwrap_or(NO_PRIMARY)
    }

    pub fn snapshot(&self) -> ShardView {
        let primary = self.primary.load(Ordering::Acquire);
        ShardView {
            name: self.name.clone(),
            read_from: format!("{:?}", self.read_from).to_lowercase(),
            slots: self.slots.clone(),
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
                .map(|(i, n)| n.snapshot(i == primary, self.fanout))
                .collect(),
        }
    }
}

/// Every shard.
pub struct Topology {
    pub shards: Vec<Arc<Shard>>,
}

impl Topology {
    /// The first shard (by name): where keyless commands go, and what an
    /// operation that names no shard acts on.
    pub fn first(&self) -> &Arc<Shard> {
        &self.shards[0]
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&Arc<Shard>, &Arc<Node>)> {
        self.shards
            .iter()
            .flat_map(|s| s.nodes.iter().map(move |n| (s, n)))
    }

    pub fn snapshot(&self) -> TopologyView {
        TopologyView {
            shards: self.shards.iter().map(|s| s.snapshot()).collect(),
        }
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

#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub id: u32,
    pub addr: String,
    /// Fan-out shards only: where the node stands with the writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncState>,
    pub role: Role,
    pub health: Health,
    pub offset: u64,
    pub primary: bool,
    pub serves_reads: bool,
    pub follows: Option<String>,
    pub priority: u32,
    pub lag_bytes: u64,
    pub lag_ms: u64,
    /// Round trip of the last answered probe.
    pub rtt_us: u32,
    pub requests: u64,
    /// Requests answered with an error because the node's connection
    /// failed or was down.
    pub errors: u64,
    /// Connections open to the node now.
    pub connections: i64,
}
