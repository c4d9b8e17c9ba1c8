//! Fan-out mode: for nodes that are not Redis replicas of each other
//! (managed services, another vendor, a second region), Rampart itself
//! sends every write to every node of the shard.
//!
//! - **One order.** Writes enter one log per shard and get a sequence
//!   number there; each node has one connection ([`stream`]) that runs the
//!   log in sequence order, so every node applies the same writes in the
//!   same order.
//! - **When the client is answered.** Asynchronous: once the primary (the
//!   node Rampart reads from by default) has answered. Synchronous: once
//!   the quorum's number of other nodes have too, or at the quorum timeout
//!   with a shortfall (`-NOQUORUM` or accept, as the quorum policy says).
//! - **A node that is down** keeps its place in the log: the writes it has
//!   not run are its backlog, replayed in order when it returns. The log is
//!   bounded (`replication.backlog_mb`); a node that would hold it past the
//!   bound is marked stale and let go.
//! - **A stale node** serves no reads and is not primary until it has been
//!   copied afresh ([`resync`]): SCAN + DUMP/RESTORE from a node in sync,
//!   each batch of keys read and written *at a point of the log*, so the
//!   copy is exact while writes go on.
//! - A node is also stale when Rampart cannot know what it holds: it
//!   restarted (a new `run_id`: whatever it persisted is older than what it
//!   answered), or its connection died with writes unanswered (they may or
//!   may not have run, and running them again could apply them twice).
//! - **Determinism.** Every node runs every write itself, possibly minutes
//!   apart; [`rewrite`] turns writes whose effect depends on the clock into
//!   absolute forms and refuses the random ones.

mod copy;
pub mod log;
mod nodes;
mod operate;
pub mod resync;
pub mod rewrite;
pub mod stream;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use self::log::{Entry, Kind, Settle, Write};
use crate::backend::{BatchReply, ConnectOptions};
use crate::failover::state::{FanoutState, StateStore};
use crate::observe::events::Events;
use crate::operate::error::OpError;
use crate::resp::Proto;
use crate::topology::{ReplicaSet, SyncState};

pub use rewrite::{Rewriter, Verdict};

/// A fan-out shard's writer.
pub struct Fanout {
    pub shard: Arc<ReplicaSet>,
    pub rewriter: Rewriter,
    state: Mutex<State>,
    /// Per node: woken when the log has entries for it, or its state
    /// changed under it.
    wake: Vec<Notify>,
    /// Woken when the log shrinks, for writes waiting for room.
    room: Notify,
    /// Woken when a node comes in sync: stale nodes waiting to retry a
    /// resync that had no source try again.
    in_sync: Notify,
    max_bytes: usize,
    /// How long an asynchronous write waits for any node to answer.
    reply_timeout: Duration,
    /// Where nodes falling out of sync, resyncs and primary changes are
    /// recorded.
    events: Arc<Events>,
    /// Bounds how deeply nested a node's reply may be.
    pub(crate) max_reply_depth: usize,
    /// Set once the log is closed ([`Fanout::close`], the last step of a
    /// shutdown): the streams and the sweep end then, not at the shutdown
    /// signal, because draining clients still wait for their writes.
    closed: tokio::sync::watch::Sender<bool>,
    /// Where the nodes' standing is kept across restarts.
    store: StateStore,
    /// What the last run left: the primary, and why nodes start stale.
    record: Mutex<FanoutState>,
    distrusted: Vec<(usize, String)>,
    opts: ConnectOptions,
}

struct State {
    /// Entries some node that holds its place has not answered yet.
    entries: VecDeque<Arc<Entry>>,
    /// Sequence number of `entries[0]`.
    base: u64,
    /// The next sequence number to hand out.
    next: u64,
    bytes: usize,
    /// Bytes ever appended: entries' offsets count from here.
    appended: u64,
    nodes: Vec<Cursor>,
    /// Writes whose clients are not answered yet, oldest first.
    unsettled: VecDeque<Arc<Entry>>,
}

/// One node's place in the log.
#[derive(Default)]
struct Cursor {
    /// Every entry below this has been answered by the node.
    acked: u64,
    /// Every entry below this has been written to it.
    sent: u64,
    /// From `INFO server`: a new one means the node restarted.
    run_id: Option<String>,
    /// Catching up ends once `acked` reaches this.
    catch_up_to: u64,
}

/// What a node that connects does first.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// Run the log from where it left off.
    Resume,
    /// Be copied afresh; run the log from now on.
    Resync,
}

/// Whether a node's state keeps entries in the log for it.
fn holds_place(state: SyncState) -> bool {
    state != SyncState::Stale
}

/// The numbers a fan-out writer runs by, from the configuration.
pub struct Limits {
    /// `replication.backlog_mb`.
    pub backlog_mb: u32,
    /// How long an asynchronous write waits for any node to answer.
    pub reply_timeout: Duration,
    /// `limits.max_reply_depth`.
    pub max_reply_depth: usize,
}

impl Fanout {
    pub fn new(
        shard: Arc<ReplicaSet>,
        limits: Limits,
        opts: ConnectOptions,
        store: StateStore,
        events: Arc<Events>,
    ) -> Fanout {
        let Limits {
            backlog_mb,
            reply_timeout,
            max_reply_depth,
        } = limits;
        let nodes = shard.nodes.len();
        let remembered = store.load_fanout(&shard.name).unwrap_or_else(|e| {
            tracing::error!(shard = %shard.name, error = %e, "cannot read the fan-out state; trusting every node");
            None
        });
        let (trusted, why) = match &remembered {
            // First start (or no state_dir): nothing to go by.
            None => (None, ""),
            Some(s) if s.running => (
                Some(s.primary.iter().cloned().collect::<Vec<_>>()),
                "Rampart stopped without closing the log last time: only the last primary is known to have every write",
            ),
            Some(s) => (
                Some(s.in_sync.clone()),
                "it had not run every write when Rampart last stopped",
            ),
        };
        let mut distrusted = Vec::new();
        let mut cursors: Vec<Cursor> = (0..nodes).map(|_| Cursor::default()).collect();
        let mut record = FanoutState {
            running: true,
            primary: remembered.as_ref().and_then(|s| s.primary.clone()),
            ..Default::default()
        };
        for (index, node) in shard.nodes.iter().enumerate() {
            // Until its connection is up, nobody knows what it holds; a
            // node the last run could not vouch for is copied afresh.
            let trust = trusted.as_ref().is_none_or(|t| t.contains(&node.addr));
            let run_id = remembered.as_ref().and_then(|s| s.run_ids.get(&node.addr));
            if let (true, Some(run_id)) = (trust, run_id) {
                // Must still be the same process to be trusted.
                cursors[index].run_id = Some(run_id.clone());
                record.run_ids.insert(node.addr.clone(), run_id.clone());
            }
            node.set_sync(if trust {
                SyncState::Down
            } else {
                distrusted.push((index, why.to_string()));
                SyncState::Stale
            });
        }
        Fanout {
            rewriter: Rewriter::default(),
            state: Mutex::new(State {
                entries: VecDeque::new(),
                base: 0,
                next: 0,
                bytes: 0,
                appended: 0,
                nodes: cursors,
                unsettled: VecDeque::new(),
            }),
            wake: (0..nodes).map(|_| Notify::new()).collect(),
            room: Notify::new(),
            in_sync: Notify::new(),
            max_bytes: (backlog_mb as usize).saturating_mul(1024 * 1024),
            reply_timeout,
            events,
            max_reply_depth,
            closed: tokio::sync::watch::channel(false).0,
            store,
            record: Mutex::new(record),
            distrusted,
            opts,
            shard,
        }
    }

    /// Starts a stream per node and the task that answers writes that time
    /// out.
    pub fn start(self: &Arc<Self>) {
        for (index, why) in &self.distrusted {
            self.event("node-stale", *index, why.clone());
        }
        self.remember(|_| {});
        for index in 0..self.shard.nodes.len() {
            stream::spawn(self.clone(), index);
        }
        tokio::spawn(sweep(self.clone()));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn node_state(&self, index: usize) -> SyncState {
        self.shard.nodes[index].sync()
    }

    /// Whether a node may still answer the entries it was sent.
    fn may_answer(&self, index: usize) -> bool {
        matches!(
            self.node_state(index),
            SyncState::InSync | SyncState::CatchingUp
        )
    }

    /// Orders one client batch of writes and sends it to every node; the
    /// client's replies come on `reply`.
    pub async fn write(
        &self,
        proto: Proto,
        requests: Vec<Bytes>,
        skip: usize,
        reply: oneshot::Sender<BatchReply>,
    ) {
        let preferred = self.shard.primary_index().unwrap_or(0);
        let req = self.shard.durability.requirement();
        let timeout = if req.acks > 0 {
            Duration::from_millis(req.timeout_ms.into())
        } else {
            self.reply_timeout
        };
        let write = Write::new(
            proto,
            requests,
            skip,
            reply,
            preferred,
            req,
            Instant::now() + timeout,
            self.shard.durability.clone(),
        );
        self.append(Kind::Write(write)).await;
    }

    /// Appends an entry, waiting while the log is full of writes that live
    /// nodes have yet to run (backpressure), and wakes every node.
    async fn append(&self, kind: Kind) -> u64 {
        let mut kind = Some(kind);
        loop {
            let room = self.room.notified();
            {
                let mut state = self.lock();
                let Some(k) = kind.take() else {
                    return state.next;
                };
                let entry = Entry {
                    seq: state.next,
                    at: Instant::now(),
                    offset: state.appended,
                    kind: k,
                };
                let size = entry.size();
                if state.bytes > 0 && state.bytes + size > self.max_bytes {
                    self.let_go_of_absent(&mut state, size);
                }
                if state.bytes == 0 || state.bytes + size <= self.max_bytes {
                    let entry = Arc::new(entry);
                    state.next += 1;
                    self.shard.positions.advance_log(state.next);
                    state.bytes += size;
                    state.appended += size as u64;
                    if entry.write().is_some() {
                        state.unsettled.push_back(entry.clone());
                    }
                    state.entries.push_back(entry.clone());
                    drop(state);
                    for wake in &self.wake {
                        wake.notify_one();
                    }
                    return entry.seq;
                }
                kind = Some(entry.kind);
            }
            // Full, and the nodes holding it are live: wait for them.
            let _ = tokio::time::timeout(Duration::from_millis(100), room).await;
        }
    }

    /// The log is full. While the oldest entry is held only by nodes that
    /// are away (down, or resyncing: a copy that cannot keep up is started
    /// again later), they stop holding their place and become stale. An
    /// entry a live node has yet to run is not dropped: writers wait for it.
    fn let_go_of_absent(&self, state: &mut State, size: usize) {
        let mut let_go = false;
        while state.bytes > 0 && state.bytes + size > self.max_bytes {
            let front: Vec<usize> = (0..self.shard.nodes.len())
                .filter(|&i| holds_place(self.node_state(i)) && state.nodes[i].acked == state.base)
                .collect();
            let away =
                |i: &usize| matches!(self.node_state(*i), SyncState::Down | SyncState::Resyncing);
            if front.is_empty() || !front.iter().all(away) {
                break;
            }
            for index in front {
                self.shard.nodes[index].set_sync(SyncState::Stale);
                {
                    self.event(
                        "node-stale",
                        index,
                        format!(
                            "away for longer than the backlog holds ({} MiB); it will be copied afresh",
                            self.max_bytes / (1024 * 1024)
                        ),
                    );
                }
                self.wake[index].notify_one();
            }
            self.trim(state);
            let_go = true;
        }
        if let_go {
            self.shard.refresh();
        }
    }

    /// Drops the entries every node holding its place has answered.
    fn trim(&self, state: &mut State) {
        let keep_from = (0..state.nodes.len())
            .filter(|&i| holds_place(self.node_state(i)))
            .map(|i| state.nodes[i].acked)
            .min()
            .unwrap_or(state.next);
        let mut freed = false;
        while state.base < keep_from {
            let Some(entry) = state.entries.pop_front() else {
                break;
            };
            state.bytes -= entry.size();
            state.base += 1;
            freed = true;
        }
        if freed {
            self.room.notify_waiters();
        }
    }

    /// Up to `max_bytes` of the entries node `index` has not been sent
    /// yet (at least one, if there is one).
    fn take(&self, index: usize, max_bytes: usize) -> Vec<Arc<Entry>> {
        let mut state = self.lock();
        let from = state.nodes[index].sent.max(state.base);
        let mut taken = Vec::new();
        let mut bytes = 0;
        for entry in state.entries.range((from - state.base) as usize..) {
            if bytes >= max_bytes {
                break;
            }
            bytes += entry.size();
            taken.push(entry.clone());
        }
        state.nodes[index].sent = from + taken.len() as u64;
        taken
    }

    /// Updates and writes what the next start must know. Nothing changes
    /// after a clean stop was recorded.
    fn remember(&self, change: impl FnOnce(&mut FanoutState)) {
        let mut record = self.record.lock().unwrap_or_else(|p| p.into_inner());
        if !record.running {
            return;
        }
        change(&mut record);
        if let Err(e) = self.store.save_fanout(&self.shard.name, &record) {
            tracing::error!(shard = %self.shard.name, error = %e, "cannot save the fan-out state");
        }
    }

    fn event(&self, kind: &'static str, index: usize, detail: impl Into<String>) {
        self.events.record(
            &self.shard.name,
            kind,
            Some(&self.shard.nodes[index].addr),
            self.shard.epoch(),
            detail,
        );
    }
}

/// Answers writes at their deadline (or when the node they were waiting
/// for is lost), keeps each node's lag, and records primary changes.
async fn sweep(fanout: Arc<Fanout>) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut primary = fanout.shard.primary_index();
    let mut closed = fanout.closed.subscribe();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = closed.changed() => return,
        }
        let now = Instant::now();
        let unsettled: Vec<Arc<Entry>> = fanout.lock().unsettled.iter().cloned().collect();
        let mut done = 0;
        for entry in &unsettled {
            let Some(write) = entry.write() else { continue };
            let timed_out = now >= write.deadline;
            if write.settle(|i| fanout.may_answer(i), timed_out) == Settle::Done {
                done += 1;
            }
        }
        if done > 0 {
            fanout
                .lock()
                .unsettled
                .retain(|e| e.write().is_some_and(|w| !w.is_settled()));
        }
        fanout.update_lag(now);
        let now_primary = fanout.shard.primary_index();
        if now_primary != primary {
            primary = now_primary;
            if let Some(index) = primary {
                // After a crash, the next start trusts this node alone.
                let keeper = fanout.clone();
                let addr = fanout.shard.nodes[index].addr.clone();
                tokio::task::spawn_blocking(move || keeper.remember(|r| r.primary = Some(addr)));
                fanout.event(
                    "fanout-primary",
                    index,
                    "now the node whose replies clients get and where reads go by default",
                );
            }
        }
    }
}
