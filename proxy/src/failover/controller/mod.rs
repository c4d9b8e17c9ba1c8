//! The failover controller: one task per shard on a leader instance. Each
//! tick it looks at the topology the probes keep and acts:
//!
//! - no primary known (start-up): discover it from the nodes and the
//!   persisted epoch;
//! - the primary judged down: fail over (hold writes, elect, promote,
//!   repoint, bump the epoch, release);
//! - otherwise: keep every other node following the primary, fencing any
//!   that claims to be primary itself, and (with `manage_replication`) keep
//!   the primary refusing writes when it loses its replicas.
//!
//! Every command it sends is idempotent, so a step that fails is simply
//! tried again on a later tick.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_protocol::resp3::types::OwnedFrame;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::probe::Report;
pub use super::request::PrimaryChange;
use super::state::{ShardState, StateStore};
use crate::backend::control::frame_text;
use crate::backend::ConnectOptions;
use crate::coord::Coordination;
use crate::observe::events::Events;
use crate::operate::error::OpError;
use crate::replicate::quorum::{replicas_needed_to_promote, Candidate};
use crate::topology::{Health, Node, ReplicaSet, Role};

mod ask;
mod discover;
mod judge;
mod promote;
mod switchover;
mod tend;

use ask::StepError;
use judge::staleness;

/// A node is sent the same corrective command at most this often: it takes
/// a probe or two before its reported state shows the change.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// After a promotion, how long to wait for the replicas to connect to the
/// new primary before releasing held writes (which need their acks).
const CATCH_UP: Duration = Duration::from_secs(2);

/// How long a switchover waits for the target to catch up before giving up
/// (and letting the held writes go to the old primary again).
const SWITCHOVER_CATCH_UP: Duration = Duration::from_secs(5);

/// What a shard's controller runs by, from the configuration.
pub struct Settings {
    /// How often it looks at the shard (`probe.interval_ms`) and how long
    /// a node has to answer it (`probe.timeout_ms`), as they are now.
    pub timings: Arc<crate::failover::probe::Timings>,
    /// The shard's `replication` settings.
    pub replication: crate::config::ReplicationConfig,
    /// Where epochs and the awaiting-operator state are kept.
    pub store: StateStore,
    /// With `[coordination]`: the controller acts only while this
    /// instance holds the shard's failover lease, and the shard's record
    /// in etcd replaces `store`.
    pub coordination: Option<Arc<Coordination>>,
}

pub struct Controller {
    /// The shard as the request path holds it: its quorum policy.
    unit: Arc<crate::shard::Shard>,
    /// Its nodes, roles and epoch.
    shard: Arc<ReplicaSet>,
    timings: Arc<crate::failover::probe::Timings>,
    replication: crate::config::ReplicationConfig,
    events: Arc<Events>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    store: StateStore,
    opts: ConnectOptions,
    /// When each node was last sent a corrective command.
    last_sent: HashMap<u32, Instant>,
    /// The primary `min-replicas-to-write` was last set on.
    guarded: Option<u32>,
    /// When the guard was last read back from the primary.
    guard_checked: Option<Instant>,
    /// The current failover, once started.
    failover_started: Option<Instant>,
    refusal: Option<String>,
    /// Replicas told to stop following a primary that is down while no
    /// replica can be promoted: see [`Controller::detach`].
    detached: std::collections::HashSet<u32>,
    /// Rampart restarted while the shard waited for an operator: what
    /// made promotion unsafe can no longer be checked, so only an
    /// operator promotes.
    operator_only: bool,
    /// The current failover's old primary was reported stale already.
    stale_reported: bool,
    coordination: Option<Arc<Coordination>>,
    /// Whether this instance held the shard's lease at the last tick.
    holding: bool,
    /// With `[coordination]`: the epoch fenced for the current failover
    /// or switchover, whose primary is not named yet.
    fenced_epoch: Option<u64>,
    /// The other instances' disagreement that the primary is down was
    /// reported already.
    disputed: bool,
    /// Events about a node already given in the current failover.
    said: std::collections::HashSet<(u32, &'static str)>,
    /// The record's [`ShardState::members`]: the nodes that may have
    /// followed the current primary. `None`: every node.
    members: Option<std::collections::BTreeSet<String>>,
}

/// Starts the failover controller of `unit`: it runs until `shutdown`
/// fires or the shard is removed, taking switchover requests from
/// `requests`.
pub fn spawn(
    unit: Arc<crate::shard::Shard>,
    settings: Settings,
    events: Arc<Events>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    opts: ConnectOptions,
    requests: mpsc::Receiver<PrimaryChange>,
) {
    let shard = unit.topology.clone();
    let span = tracing::info_span!("controller", shard = %shard.name);
    let controller = Controller {
        timings: settings.timings,
        replication: settings.replication,
        store: settings.store,
        coordination: settings.coordination,
        holding: false,
        fenced_epoch: None,
        disputed: false,
        said: Default::default(),
        events,
        shutdown,
        unit,
        shard,
        opts,
        last_sent: HashMap::new(),
        guarded: None,
        guard_checked: None,
        failover_started: None,
        refusal: None,
        detached: Default::default(),
        operator_only: false,
        stale_reported: false,
        members: None,
    };
    tokio::spawn(controller.run(requests).instrument(span));
}

impl Controller {
    async fn run(mut self, mut requests: mpsc::Receiver<PrimaryChange>) {
        let mut shutdown = self.shutdown.clone();
        loop {
            // A shard removed while running has nothing left to fail over.
            if self.shard.is_retired() {
                tracing::info!(shard = %self.shard.name, "shard removed; its failover controller ends");
                return;
            }
            self.tick().await;
            tokio::select! {
                _ = tokio::time::sleep(self.timings.interval()) => {}
                Some(request) = requests.recv() => {
                    if let Some(holder) = self.not_holding() {
                        let _ = request.reply.send(Err(OpError::Conflict(format!(
                            "this instance does not hold shard '{}''s failover lease ({}); ask that instance",
                            self.shard.name,
                            holder.map_or("nobody holds it right now".into(), |h| format!("{h} holds it"))
                        ))));
                        continue;
                    }
                    let span = tracing::info_span!("switchover", target = ?request.target, force = request.force, epoch = self.shard.epoch());
                    let result = if request.force {
                        self.force_promote(request.target).instrument(span).await
                    } else {
                        self.switchover(request.target).instrument(span).await
                    };
                    let _ = request.reply.send(result);
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// With `[coordination]` and the lease held by another instance (or
    /// nobody): who holds it.
    fn not_holding(&self) -> Option<Option<String>> {
        let coordination = self.coordination.as_ref()?;
        if coordination.holds(&self.shard.name) {
            return None;
        }
        Some(coordination.holder(&self.shard.name))
    }

    /// With `[coordination]`: notices the lease being taken or lost.
    /// Returns whether this instance may act on the shard now.
    fn check_lease(&mut self) -> bool {
        let Some(coordination) = self.coordination.clone() else {
            return true;
        };
        let holds = coordination.holds(&self.shard.name);
        if holds != self.holding {
            self.holding = holds;
            self.forget();
            if holds {
                self.take_over(&coordination);
            }
        }
        holds
    }

    /// Drops what this controller believed about a failover in progress:
    /// the lease changed hands, and the record in etcd is the truth.
    fn forget(&mut self) {
        self.last_sent.clear();
        self.guarded = None;
        self.guard_checked = None;
        self.failover_started = None;
        self.refusal = None;
        self.detached.clear();
        self.operator_only = false;
        self.stale_reported = false;
        self.fenced_epoch = None;
        self.disputed = false;
        self.said.clear();
    }

    /// The lease was just taken: go on from the shard's record. A fenced
    /// record is a failover or switchover another instance left half
    /// done; the ticks finish it (or end it, if the primary is fine).
    fn take_over(&mut self, coordination: &Coordination) {
        let Some(record) = coordination.record(&self.shard.name) else {
            // A new cluster: discover the primary from the nodes.
            self.shard.clear_primary();
            return;
        };
        crate::coord::follow(&self.shard, &record);
        self.members = record.members.clone().map(|m| m.into_iter().collect());
        let detail = match (&record.fenced, &record.waiting) {
            (true, _) => {
                self.fenced_epoch = Some(record.epoch);
                self.failover_started = Some(Instant::now());
                self.operator_only = record.waiting.is_some();
                "the record is fenced: finishing the failover it was in"
            }
            (false, Some(_)) => "the shard waits for an operator",
            (false, None) => "the record's primary stays",
        };
        self.event(
            "lease-taken-over",
            self.shard.primary_node().map(|n| n.as_ref()),
            format!("{} acts for the shard now; {detail}", coordination.instance),
        );
    }

    /// Whether the other instances agree the primary is down (always,
    /// without `[coordination]`). Says once when they do not.
    fn others_agree_down(&mut self, primary: &Node) -> bool {
        let Some(coordination) = &self.coordination else {
            return true;
        };
        let (agreed, why) = coordination.agreed_down(&self.shard.name, &primary.addr);
        if !agreed && !self.disputed {
            self.disputed = true;
            self.event(
                "primary-down-disputed",
                Some(primary),
                format!("this instance judges the primary down but {why}: no failover yet"),
            );
        }
        if agreed {
            self.disputed = false;
        }
        agreed
    }

    async fn tick(&mut self) {
        self.count_newcomers_when_they_follow();
        if !self.check_lease() {
            self.keep_copies_while_blind().await;
            return;
        }
        let Some(primary) = self.shard.primary_node().cloned() else {
            self.discover().await;
            return;
        };
        let distrusted = primary.health() != Health::Down && self.distrusts(&primary);
        if distrusted && self.failover_started.is_some() && !self.stale_reported {
            self.stale_reported = true;
            self.event(
                "primary-stale",
                Some(&primary),
                format!(
                    "the primary answers again but {}: it may lack acknowledged writes and is not taken back",
                    staleness(&primary)
                ),
            );
        }
        let down = primary.health() == Health::Down
            && (self.failover_started.is_some() || self.others_agree_down(&primary));
        if primary.health() == Health::Down && !down {
            return;
        }
        if down || distrusted {
            let span =
                tracing::warn_span!("failover", from = %primary.addr, epoch = self.shard.epoch());
            self.failover(&primary).instrument(span).await;
            return;
        }
        if self.failover_started.is_some() {
            if self.shard.awaiting_operator().is_some() || self.fenced_epoch.is_some() {
                let waiting = self.shard.awaiting_operator();
                self.shard.set_awaiting_operator(None);
                if let Err(e) = self.persist(self.shard.epoch(), &primary, false).await {
                    self.shard.set_awaiting_operator(waiting);
                    tracing::warn!(error = %e, "cannot lift the fence; will retry");
                    return;
                }
                self.fenced_epoch = None;
            }
            self.failover_started = None;
            self.event(
                "failover-aborted",
                Some(&primary),
                "the primary answers probes again, with all it had, before a replica could be promoted",
            );
            self.refusal = None;
            self.detached.clear();
            self.shard.set_failing_over(false);
        }
        if primary.health() == Health::Up
            && primary.role() == Role::Replica
            && self.observe(&primary).await == Some(Role::Replica)
        {
            // Someone else demoted it (an operator, another tool): believe
            // the nodes again rather than fight them.
            self.event(
                "primary-lost",
                Some(&primary),
                format!(
                    "the primary reports being a replica of {}; rediscovering",
                    primary.master().unwrap_or_default()
                ),
            );
            self.shard.clear_primary();
            return;
        }
        self.reconcile(&primary).await;
    }

    /// Whether `node` may have followed the current primary since its
    /// promotion, and so may hold writes only it acknowledged.
    fn member(&self, node: &Node) -> bool {
        !node.is_retired()
            && self
                .members
                .as_ref()
                .is_none_or(|members| members.contains(&node.addr))
    }

    /// A node joined by a reload holds nothing yet: when every node
    /// counted (no member list), the list becomes the nodes there before
    /// it, and it joins as any node does, when told to follow.
    fn count_newcomers_when_they_follow(&mut self) {
        if self.members.is_none() && self.shard.nodes.iter().any(|n| n.is_added_live()) {
            self.members = Some(
                self.shard
                    .nodes
                    .iter()
                    .filter(|n| !n.is_added_live() && !n.is_retired())
                    .map(|n| n.addr.clone())
                    .collect(),
            );
        }
    }

    /// Records that `node` is about to follow the current primary (or is
    /// found following it), before it can acknowledge anything. False when
    /// that cannot be recorded: the node must not be told to follow yet.
    async fn join(&mut self, node: &Node, primary: &Node) -> bool {
        if self.member(node) || self.shard.primary_node().is_none_or(|p| p.id != primary.id) {
            return true;
        }
        let before = self.members.clone();
        if let Some(members) = &mut self.members {
            members.insert(node.addr.clone());
        }
        if let Err(e) = self
            .persist(self.shard.epoch(), primary, self.fenced_epoch.is_some())
            .await
        {
            self.members = before;
            tracing::warn!(node = %node.addr, error = %e, "cannot record the node as following the primary; will retry");
            return false;
        }
        true
    }

    /// The highest offset `node` was seen with: by this instance's
    /// probes, and with `[coordination]` by any live instance's.
    fn most_seen(&self, node: &Node) -> u64 {
        let seen = self
            .coordination
            .as_ref()
            .map_or(0, |c| c.seen_offset(&self.shard.name, &node.addr));
        node.max_offset().max(seen)
    }

    /// An event about `node` once per failover, not every tick.
    fn say_once(&mut self, node: &Node, kind: &'static str, detail: String) {
        if self.said.insert((node.id, kind)) {
            self.event(kind, Some(node), detail);
        }
    }

    /// Says once (not every tick) why a failover cannot go on.
    async fn refuse(&mut self, why: String) {
        if self.refusal.as_deref() != Some(why.as_str()) {
            self.event("promotion-refused", None, why.clone());
            self.shard.set_awaiting_operator(Some(format!(
                "{why}; writes wait until the primary returns with all it had or an operator runs `rampart promote --force`"
            )));
            if let Some(primary) = self.shard.primary_node().cloned() {
                let fenced = self.fenced_epoch.is_some();
                if let Err(e) = self.persist(self.shard.epoch(), &primary, fenced).await {
                    tracing::warn!(error = %e, "cannot record that the shard waits for an operator");
                }
            }
            self.refusal = Some(why);
        }
    }

    /// Records the shard's state. With `[coordination]` it is a
    /// compare-and-swap in etcd and its failure stops the step; alone, a
    /// file that cannot be written is logged and the step goes on (the
    /// nodes still say who is primary).
    async fn persist(
        &self,
        epoch: u64,
        primary: &Node,
        fenced: bool,
    ) -> Result<(), crate::coord::SaveError> {
        let state = ShardState {
            epoch,
            primary: primary.addr.clone(),
            waiting: self.shard.awaiting_operator(),
            fenced,
            members: self.members.as_ref().map(|m| m.iter().cloned().collect()),
        };
        if let Some(coordination) = &self.coordination {
            return coordination.save(&self.shard.name, &state).await;
        }
        if let Err(e) = self.store.save(&self.shard.name, &state) {
            tracing::error!(error = %e, epoch, "cannot persist the epoch; a restart may not remember this primary");
        }
        Ok(())
    }

    fn event(&self, kind: &'static str, node: Option<&Node>, detail: impl Into<String>) {
        self.events.record(
            &self.shard.name,
            kind,
            node.map(|n| n.addr.as_str()),
            self.shard.epoch(),
            detail,
        );
    }
}

/// How a stale node gave itself away, for events.
/// How far a replica may claim to be ahead of its primary's offset as
/// last probed: the writes of one probe interval, at any plausible rate.
const MAX_AHEAD: u64 = 1 << 30;
