//! One node as the control loop last saw it: role, health, offsets and
//! lag, whether it may serve reads, and its connections (`pool`). Every
//! field the request path reads is an atomic.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::trend::{Memory, ProbeTrend, TrendView};
use crate::backend::NodePool;

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
    pub(super) fn from_u8(v: u8) -> SyncState {
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
    pub(super) role: AtomicU8,
    pub(super) health: AtomicU8,
    /// Replication offset from the last probe.
    pub(super) offset: AtomicU64,
    /// The highest offset ever seen on this node. Offsets only grow within
    /// a shard's history (they carry over promotions), so a node reporting
    /// less has lost data: restarted without persistence, say.
    pub(super) max_offset: AtomicU64,
    /// For a replica: whether its link to the primary is up (`connected`).
    pub(super) replica_connected: AtomicU8,
    /// For a replica: whom it follows, as it reports it.
    pub(super) master: Mutex<Option<String>>,
    /// `replica-priority`: lower is promoted first, 0 never.
    pub(super) priority: AtomicU32,
    /// For a replica: how far behind the primary, in bytes and in time.
    pub(super) lag_bytes: AtomicU64,
    /// For a primary: its replication backlog's size (see [`Report::backlog`]).
    pub(super) backlog: AtomicU64,
    pub(super) lag_ms: AtomicU64,
    /// May serve reads: decided by the shard on every probe.
    pub(super) readable: AtomicBool,
    /// Round trip of the last answered probe, in microseconds.
    pub(super) rtt_us: AtomicU32,
    /// Fan-out only: see [`SyncState`].
    pub(super) sync: AtomicU8,
    /// Fan-out only: every entry of the shard's log below this has been
    /// answered by the node.
    pub(super) applied: AtomicU64,
    /// Commands forwarded to this node.
    pub requests: AtomicU64,
    /// `redis_version` from INFO, for HELLO replies.
    pub version: Mutex<Option<String>>,
    /// `run_id` from INFO: it changes when the process restarts.
    pub(super) run_id: Mutex<Option<String>>,
    /// The node restarted since Rampart last trusted its data: whatever it
    /// did not persist is gone, and it cannot vouch for acknowledged
    /// writes until it has caught up from a node that can.
    pub(super) restarted: AtomicBool,
    /// Rampart told this replica to stop following a primary that was down
    /// (`REPLICAOF NO ONE`) to keep its copy safe: it claims to be a primary
    /// but is a candidate for promotion like a replica.
    pub(super) detached: AtomicBool,
    /// Removed from the configuration while running: kept in place (see
    /// `nodes.rs`), never routed to, probed or promoted again.
    retired: AtomicBool,
    /// Joined by a reload, not at start: it holds nothing until it has
    /// followed the primary (the controller counts it from then on).
    added_live: AtomicBool,
    /// A probe task runs for it.
    probing: AtomicBool,
    /// `used_memory` and `maxmemory` as the probes last sampled them, and
    /// how fast used memory grows.
    memory: Mutex<Memory>,
    /// The last probes' outcomes: missed, suspicion, round trips.
    trend: Mutex<ProbeTrend>,
    pub pool: NodePool,
    /// Shared by all nodes: bumped when any node's role, health or fitness
    /// for reads changes, so policies that cache the node list know to
    /// refresh it.
    pub(super) changes: Arc<AtomicU64>,
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
            backlog: AtomicU64::new(0),
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
            retired: AtomicBool::new(false),
            added_live: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            memory: Mutex::new(Memory::default()),
            trend: Mutex::new(ProbeTrend::default()),
            pool,
        }
    }

    /// Marks a node that joined a running shard.
    pub fn joining(self) -> Node {
        self.added_live.store(true, Ordering::Release);
        self
    }

    pub fn is_added_live(&self) -> bool {
        self.added_live.load(Ordering::Acquire)
    }

    /// Takes the node out of service (or, re-added, back in).
    pub fn set_retired(&self, retired: bool) {
        if self.retired.swap(retired, Ordering::AcqRel) != retired {
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Records a sample of the node's memory.
    pub fn observe_memory(&self, used: u64, max: u64) {
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        *memory = memory.next(used, max, std::time::Instant::now());
    }

    pub fn memory(&self) -> Memory {
        *self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one probe: failed (`missed`), the detector's suspicion
    /// after it, and its round trip when it was answered.
    pub fn observe_probe(&self, missed: bool, suspicion: f64, rtt: Option<std::time::Duration>) {
        let mut trend = self.trend.lock().unwrap_or_else(|p| p.into_inner());
        trend.record(missed, suspicion, rtt, std::time::Instant::now());
    }

    /// The round trip routers weigh the node by, in microseconds: the
    /// median of its latest probes (see [`ProbeTrend`]), or the round trip
    /// set last when no probe was recorded (`rampart policy test`).
    pub fn routing_latency_us(&self) -> u32 {
        let median = self
            .trend
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .routing_latency();
        median.map_or_else(
            || self.rtt_us(),
            |s| (s * 1e6).round().min(u32::MAX as f64) as u32,
        )
    }

    /// What the last probes show (see [`ProbeTrend`]).
    pub fn probe_trend(&self) -> TrendView {
        self.trend.lock().unwrap_or_else(|p| p.into_inner()).view()
    }

    /// Claims the node's probe; false if one runs already.
    pub fn start_probing(&self) -> bool {
        !self.probing.swap(true, Ordering::AcqRel)
    }

    pub fn stop_probing(&self) {
        self.probing.store(false, Ordering::Release);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Places the node in a zone (numbered, see [`ReplicaSet::client_zone`]).
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
        if self.is_retired() {
            return Health::Down;
        }
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

    /// The node's `run_id` as last seen (it changes when the process
    /// restarts).
    pub fn run_id(&self) -> Option<String> {
        self.run_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        self.backlog.store(report.backlog, Ordering::Relaxed);
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
    pub(super) fn set_role(&self, role: Role) {
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

    pub(super) fn set_readable(&self, readable: bool) -> bool {
        let changed = self.readable.swap(readable, Ordering::AcqRel) != readable;
        if changed {
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
        changed
    }

    /// A replica that may serve reads: answering probes, following the
    /// shard's current primary over a live link, and not too far behind.
    /// A node whose role is in doubt (claiming to be primary, following
    /// someone else, unreachable) never does, nor a retired one.
    pub fn serves_reads(&self) -> bool {
        self.readable.load(Ordering::Acquire) && !self.is_retired()
    }

    pub fn snapshot(&self, primary: bool, fanout: bool) -> NodeView {
        NodeView {
            sync: fanout.then(|| self.sync()),
            applied: fanout.then(|| self.applied.load(Ordering::Acquire)),
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
    /// `master_replid`: the replication history the node's data belongs
    /// to (a replica's is its primary's). Offsets compare only within one.
    pub replid: String,
    /// `master_replid2`: the history the node followed before its last
    /// promotion (all zeros when none).
    pub replid2: String,
    /// For a primary: `repl_backlog_size` while its backlog is active (a
    /// replica lagging further than this needs a full resynchronisation);
    /// 0 otherwise.
    pub backlog: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub id: u32,
    pub addr: String,
    /// Fan-out shards only: where the node stands with the writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncState>,
    /// Fan-out shards only: the shard's log entries the node has answered
    /// (its place in the writes; `offset` is Redis's own, unused there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<u64>,
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
