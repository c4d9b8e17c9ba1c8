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

use super::probe::{self, Report};
pub use super::request::Switchover;
use super::state::{ShardState, StateStore};
use crate::backend::control::{frame_text, Control};
use crate::backend::ConnectOptions;
use crate::coord::Coordination;
use crate::observe::events::Events;
use crate::operate::error::OpError;
use crate::replicate::quorum::{replicas_needed_to_promote, Candidate};
use crate::topology::{Health, Node, Role, Shard};

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
    /// How often it looks at the shard (`probe.interval_ms`).
    pub interval: Duration,
    /// How long a node has to answer it (`probe.timeout_ms`).
    pub timeout: Duration,
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
    shard: Arc<Shard>,
    interval: Duration,
    replication: crate::config::ReplicationConfig,
    events: Arc<Events>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    store: StateStore,
    opts: ConnectOptions,
    timeout: Duration,
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
}

/// Starts the failover controller of `unit`: it runs until `shutdown`
/// fires, taking switchover requests from `requests`.
pub fn spawn(
    unit: Arc<crate::shard::Shard>,
    settings: Settings,
    events: Arc<Events>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    opts: ConnectOptions,
    requests: mpsc::Receiver<Switchover>,
) {
    let shard = unit.topology.clone();
    let span = tracing::info_span!("controller", shard = %shard.name);
    let controller = Controller {
        timeout: settings.timeout,
        interval: settings.interval,
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
    };
    tokio::spawn(controller.run(requests).instrument(span));
}

impl Controller {
    async fn run(mut self, mut requests: mpsc::Receiver<Switchover>) {
        let interval = self.interval;
        let mut shutdown = self.shutdown.clone();
        loop {
            self.tick().await;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
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

    /// With `[coordination]`, on an instance that does not hold the
    /// shard's lease while no known instance can read etcd: nobody can
    /// fail the shard over now (that needs etcd), so if its primary is down or came back
    /// restarted, the replicas still following it are detached, exactly as
    /// the holder would when it cannot promote. Left following, they would
    /// resynchronise from a primary that restarted empty the moment it
    /// returns and throw away the acknowledged writes they hold. Every
    /// instance does this on its own (the command is idempotent) and
    /// publishes which nodes it detached, so that whichever instance holds
    /// the lease when etcd returns counts them as candidates.
    async fn keep_copies_while_blind(&mut self) {
        let Some(coordination) = &self.coordination else {
            return;
        };
        if !coordination.nobody_reads_etcd() {
            return;
        }
        let Some(primary) = self.shard.primary_node().cloned() else {
            return;
        };
        if primary.health() == Health::Down || primary.is_stale() {
            self.detach(&primary).await;
        }
    }

    /// Picks the primary at start-up: the persisted epoch's primary if it
    /// still claims the role, else the claimant with the highest offset,
    /// else (nobody claims it) the node the replicas follow, which the next
    /// tick will find down and fail over from.
    async fn discover(&mut self) {
        let persisted = match &self.coordination {
            Some(coordination) => coordination.record(&self.shard.name),
            None => match self.store.load(&self.shard.name) {
                Ok(state) => state,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the persisted epoch; trusting the nodes");
                    None
                }
            },
        };
        let claimants: Vec<&Arc<Node>> = self
            .shard
            .nodes
            .iter()
            .filter(|n| n.health() == Health::Up && n.role() == Role::Primary)
            .collect();
        let remembered = persisted
            .as_ref()
            .and_then(|s| self.shard.node_by_addr(&s.primary));
        let chosen = remembered
            .filter(|n| claimants.iter().any(|c| c.id == n.id))
            .or_else(|| claimants.iter().copied().max_by_key(|n| n.offset()))
            .or_else(|| {
                self.shard
                    .nodes
                    .iter()
                    .filter(|n| n.health() == Health::Up && n.role() == Role::Replica)
                    .find_map(|n| self.shard.node_by_addr(&n.master()?))
            })
            .or(remembered)
            .cloned();
        let Some(chosen) = chosen else {
            return;
        };
        let epoch = match &persisted {
            Some(state) if state.primary == chosen.addr => state.epoch,
            Some(state) => state.epoch + 1,
            None => 1,
        };
        if persisted.as_ref().is_none_or(|s| s.epoch != epoch) {
            if let Err(e) = self.persist(epoch, &chosen, false).await {
                tracing::warn!(error = %e, "cannot record the discovered primary; will retry");
                return;
            }
        }
        if let Some(why) = persisted.as_ref().and_then(|s| s.waiting.clone()) {
            // Still waiting for an operator from before the restart: the
            // remembered primary is held as the old one, distrusted, and
            // nothing is promoted without the operator.
            if let Some(old) = remembered.cloned() {
                old.distrust();
                self.shard
                    .set_primary(&old, persisted.as_ref().map_or(1, |s| s.epoch));
                self.shard.set_failing_over(true);
                self.failover_started = Some(Instant::now());
                self.operator_only = true;
                self.shard.set_awaiting_operator(Some(why.clone()));
                self.event(
                    "primary-stale",
                    Some(&old),
                    format!("Rampart restarted while the shard waited for an operator ({why}); still waiting"),
                );
                return;
            }
        }
        self.shard.set_primary(&chosen, epoch);
        let detail = match claimants.len() {
            0 => "no node claims to be primary; the replicas follow this one".to_string(),
            1 => "the only node claiming to be primary".to_string(),
            n => format!("{n} nodes claim to be primary; the others will be fenced"),
        };
        self.event("primary-discovered", Some(&chosen), detail);
    }

    async fn failover(&mut self, old: &Arc<Node>) {
        if self.failover_started.is_none() {
            self.failover_started = Some(Instant::now());
            self.shard.set_failing_over(true);
            if old.health() == Health::Down {
                self.event(
                    "primary-down",
                    Some(old),
                    "the detector judged the primary down; holding writes",
                );
            } else {
                self.stale_reported = true;
                self.event(
                    "primary-stale",
                    Some(old),
                    format!(
                        "the primary {}: it may have lost acknowledged writes and is not trusted as primary; holding writes",
                        staleness(old)
                    ),
                );
            }
        }
        if let Err(e) = self.fence(old).await {
            tracing::warn!(error = %e, "cannot fence the epoch; will retry");
            return;
        }
        if self.operator_only {
            self.refuse("Rampart restarted while this shard waited for an operator".into())
                .await;
            return;
        }
        // Fresh reports, not the last probe's: offsets move until the very
        // moment the old primary stopped.
        let mut candidates = Vec::new();
        let mut intact = 0;
        let shard = self.shard.clone();
        for node in shard.nodes.iter().filter(|n| n.id != old.id) {
            if let Ok(report) = self.report(node).await {
                if let Some(why) = implausible(report.offset, old.max_offset(), &old.addr) {
                    self.say_once(node, "replica-implausible", why);
                    continue;
                }
                if report.role == Role::Replica || self.was_detached(node) {
                    // A replica whose offset went backwards lost what it
                    // had: it answers, but cannot vouch for past writes.
                    if report.offset >= self.most_seen(node) {
                        intact += 1;
                    }
                    candidates.push(Candidate {
                        id: node.id,
                        offset: report.offset,
                        priority: report.priority,
                    });
                }
            }
        }
        let replicas = self.shard.nodes.len().saturating_sub(1) as u32;
        let acks = self.shard.durability.requirement().acks;
        let needed = replicas_needed_to_promote(replicas, acks);
        if intact < needed {
            let lost = candidates.len() as u32 - intact;
            self.refuse(format!(
                "{} of {replicas} replicas answer ({lost} of them with less data than they once had: restarted without persistence?); with writes acknowledged by {acks} replica(s), {needed} intact ones must answer to be sure one holds every acknowledged write",
                candidates.len()
            )).await;
            self.detach(old).await;
            return;
        }
        let Some(target) = self
            .unit
            .quorum
            .load()
            .policy
            .elect(&candidates)
            .and_then(|id| self.shard.node(id).cloned())
        else {
            let policy = self.unit.quorum.load();
            let view = policy.policy.describe();
            let why = match view.last_error {
                Some(error) if view.kind == "wasm" => format!(
                    "the quorum policy {} elected no candidate: {error}",
                    policy.source
                ),
                _ => "no replica is eligible (priority 0 replicas are never promoted)".into(),
            };
            self.refuse(why).await;
            return;
        };
        let offset = candidates
            .iter()
            .find(|c| c.id == target.id)
            .map_or(0, |c| c.offset);
        // A stale old primary still answers: it is repointed with the
        // others (its data is not wanted). A dead one is fenced when back.
        let skip = (old.health() == Health::Down).then_some(old.id);
        let epoch = match self.fence(old).await {
            Ok(epoch) => epoch,
            Err(e) => return tracing::warn!(error = %e, "cannot fence the epoch; will retry"),
        };
        if let Err(e) = self.install(&target, skip, epoch).await {
            self.event("promotion-failed", Some(&target), e);
            return;
        }
        self.said.clear();
        let took = self
            .failover_started
            .take()
            .map_or(0, |t| t.elapsed().as_millis());
        self.refusal = None;
        // Offsets carry over a promotion, so the old primary's last probed
        // offset says how much of its stream may be missing: nothing that
        // was acknowledged under a quorum, but asynchronous writes can be.
        let behind = old.offset().saturating_sub(offset);
        if acks == 0 {
            self.shard
                .durability
                .lost_bytes
                .fetch_add(behind, std::sync::atomic::Ordering::Relaxed);
        }
        let loss = match (acks, behind) {
            (_, 0) => "no replication lag at the last probe".to_string(),
            (0, n) => format!("asynchronous writes: at least {n} bytes of the old primary's replication stream, acknowledged to clients, are lost: the new primary lacks them (counted in rampart_failover_lost_bytes_total)"),
            (_, n) => format!("{n} bytes behind the old primary's last probe: writes that were not acknowledged (a synchronous write is acknowledged only once a replica that could be elected holds it)"),
        };
        self.event(
            "promoted",
            Some(&target),
            format!(
                "replaced {} at replication offset {offset}, {took} ms after it was judged down; {loss}",
                old.addr
            ),
        );
    }

    /// Moves the primary role on purpose: hold new writes, wait until the
    /// old primary's offset has stopped moving (writes in flight have
    /// landed) and the target has all of it, promote the target, repoint
    /// everyone else (the old primary included), release the writes.
    /// Nothing acknowledged is lost and no client sees an error; if the
    /// target does not catch up in time, nothing changes.
    async fn switchover(&mut self, target: Option<String>) -> Result<String, OpError> {
        let primary =
            self.shard.primary().cloned().ok_or_else(|| {
                OpError::Conflict("no healthy primary to switch over from".into())
            })?;
        let target = match target {
            Some(addr) => self.shard.node_by_addr(&addr).cloned().ok_or_else(|| {
                OpError::NotFound(format!(
                    "{addr} is not a node of shard '{}'",
                    self.shard.name
                ))
            })?,
            None => {
                let candidates: Vec<Candidate> = self
                    .shard
                    .nodes
                    .iter()
                    .filter(|n| self.shard.follows_primary(n))
                    .map(|n| Candidate {
                        id: n.id,
                        offset: n.offset(),
                        priority: n.priority(),
                    })
                    .collect();
                self.unit
            .quorum
                    .load()
                    .policy
                    .elect(&candidates)
                    .and_then(|id| self.shard.node(id).cloned())
                    .ok_or_else(|| OpError::Conflict("no replica is fit to take over (up, following the primary, priority above 0)".into()))?
            }
        };
        if target.id == primary.id {
            return Err(OpError::Conflict(format!(
                "{} is already the primary",
                target.addr
            )));
        }
        let report = self.report(&target).await.map_err(OpError::Conflict)?;
        if report.role != Role::Replica
            || report.master.as_deref() != Some(primary.addr.as_str())
            || !report.connected
        {
            return Err(OpError::Conflict(format!(
                "{} is not a replica following the primary over a live link",
                target.addr
            )));
        }
        self.shard.set_failing_over(true);
        self.event(
            "switchover-started",
            Some(&target),
            format!(
                "moving the primary role from {}; holding writes",
                primary.addr
            ),
        );
        let started = Instant::now();
        // Other instances stop writing to the old primary first, or its
        // offset would never hold still.
        let step = match self.fence(&primary).await {
            Ok(epoch) => match self.catch_up(&primary, &target).await {
                Ok(()) => self.install(&target, None, epoch).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let epoch = match step {
            Ok(epoch) => epoch,
            Err(e) => {
                self.unfence(&primary).await;
                self.event("switchover-aborted", Some(&target), e.clone());
                return Err(OpError::Conflict(format!("switchover aborted: {e}")));
            }
        };
        let detail = format!(
            "{} -> {} in {} ms",
            primary.addr,
            target.addr,
            started.elapsed().as_millis()
        );
        self.event("switchover", Some(&target), detail.clone());
        Ok(format!("switched over: {detail}, epoch {epoch}"))
    }

    /// Makes `target` the primary of a new epoch: promote it, remember
    /// the choice, point every other node (but `skip`) at it, guard it,
    /// give the replicas a moment to connect, and publish it, which
    /// releases held writes. Returns the new epoch.
    async fn install(
        &mut self,
        target: &Arc<Node>,
        skip: Option<u32>,
        epoch: u64,
    ) -> Result<u64, String> {
        self.command(target, &["REPLICAOF", "NO", "ONE"]).await?;
        self.observe(target).await;
        // A new primary: every node must be told now, however recently it
        // was told something else.
        self.last_sent.clear();
        self.detached.clear();
        self.stale_reported = false;
        let shard = self.shard.clone();
        for node in shard
            .nodes
            .iter()
            .filter(|n| n.id != target.id && Some(n.id) != skip)
        {
            self.follow(node, target, "repointed").await;
        }
        self.guard(target).await;
        self.wait_for_replicas(target, self.shard.durability.requirement().acks)
            .await;
        // Named last: with [coordination] every instance routes to the
        // new primary from the moment this is written, and a holder that
        // lost its lease meanwhile cannot write it (the next holder then
        // finds the epoch fenced and finishes the failover itself).
        let waiting = self.shard.awaiting_operator();
        self.shard.set_awaiting_operator(None);
        if let Err(e) = self.persist(epoch, target, false).await {
            self.shard.set_awaiting_operator(waiting);
            return Err(format!("the new primary could not be recorded: {e}"));
        }
        self.fenced_epoch = None;
        // Chosen as holding every acknowledged write (an election over
        // enough intact replicas, a caught-up switchover target, or an
        // operator's word): whatever restart it went through before is
        // behind it. Left distrusted, a node that had restarted and fully
        // resynced would be failed over again at the next tick, and its
        // replicas, which trust only a trusted primary, never trusted.
        target.trust_again();
        target.set_detached(false);
        self.shard.set_primary(target, epoch);
        self.shard.set_failing_over(false);
        Ok(epoch)
    }

    /// Whether a primary that answers must still be replaced: it
    /// restarted or its offset went backwards, so it may lack writes that
    /// were acknowledged. Without a quorum (asynchronous writes) a
    /// restarted primary that holds at least as much as every replica is
    /// kept: there is no acknowledgement to protect beyond what the nodes
    /// hold, and replacing it would lose more.
    fn distrusts(&self, primary: &Node) -> bool {
        if !primary.is_stale() || primary.health() != Health::Up {
            return false;
        }
        let acks = self.shard.durability.requirement().acks;
        let someone_has_more = self
            .shard
            .nodes
            .iter()
            .any(|n| n.id != primary.id && n.offset() > primary.offset());
        if acks == 0 && !someone_has_more {
            tracing::info!(node = %primary.addr, offset = primary.offset(), "the primary restarted; asynchronous writes and no node holds more: kept");
            primary.trust_again();
            return false;
        }
        true
    }

    /// While the primary is down and no replica can be promoted, the
    /// replicas that still follow it are told to follow nobody
    /// (`REPLICAOF NO ONE`; Rampart routes nothing to them). A replica
    /// left following would resynchronise from the old primary the moment
    /// it returns, and if it returns restarted from an older snapshot, the
    /// replica's copy of the acknowledged writes would be replaced by the
    /// older data. Detached, the copy stays until Rampart (or an operator)
    /// decides.
    async fn detach(&mut self, old: &Node) {
        let following: Vec<Arc<Node>> = self
            .shard
            .nodes
            .iter()
            .filter(|n| {
                n.id != old.id
                    && n.health() == Health::Up
                    && n.role() == Role::Replica
                    && n.master().as_deref() == Some(old.addr.as_str())
                    && !self.detached.contains(&n.id)
            })
            .cloned()
            .collect();
        for node in &following {
            match self.command(node, &["REPLICAOF", "NO", "ONE"]).await {
                Ok(_) => {
                    self.detached.insert(node.id);
                    node.set_detached(true);
                    self.event(
                        "replica-detached",
                        Some(node),
                        format!("no longer follows {}, which is down and cannot be replaced yet: the replica keeps its copy of the acknowledged writes whatever the old primary returns with", old.addr),
                    );
                }
                Err(e) => {
                    tracing::warn!(node = %node.addr, error = %e, "REPLICAOF NO ONE failed; will retry")
                }
            }
        }
    }

    /// Whether `node` claims to be a primary only because Rampart detached
    /// it from a primary that was down: this controller, another part of
    /// this process, or (with `[coordination]`) another instance did.
    fn was_detached(&self, node: &Node) -> bool {
        self.detached.contains(&node.id)
            || node.is_detached()
            || self
                .coordination
                .as_ref()
                .is_some_and(|c| c.detached_by_anyone(&self.shard.name, &node.addr))
    }

    /// `rampart promote --force`: makes `target` the primary now, whatever
    /// it may lack. The operator's answer to a shard that waits because no
    /// node can be proven to hold every acknowledged write.
    async fn force_promote(&mut self, target: Option<String>) -> Result<String, OpError> {
        let addr = target.ok_or_else(|| {
            OpError::Rejected("a forced promotion names the node to promote".into())
        })?;
        let target = self.shard.node_by_addr(&addr).cloned().ok_or_else(|| {
            OpError::NotFound(format!(
                "{addr} is not a node of shard '{}'",
                self.shard.name
            ))
        })?;
        let report = self.report(&target).await.map_err(|e| {
            OpError::Conflict(format!(
                "{addr} does not answer, so it cannot be promoted: {e}"
            ))
        })?;
        let most = self
            .shard
            .nodes
            .iter()
            .map(|n| n.max_offset())
            .max()
            .unwrap_or(0);
        let old = self.shard.primary_node().cloned();
        self.shard.set_failing_over(true);
        let step = match self.fence(old.as_ref().unwrap_or(&target)).await {
            Ok(epoch) => self.install(&target, None, epoch).await,
            Err(e) => Err(e),
        };
        let epoch = match step {
            Ok(epoch) => epoch,
            Err(e) => {
                if self.failover_started.is_none() {
                    if let Some(old) = &old {
                        self.unfence(old).await;
                    }
                    self.shard.set_failing_over(false);
                }
                return Err(OpError::Conflict(format!("promotion failed: {e}")));
            }
        };
        target.trust_again();
        self.failover_started = None;
        self.operator_only = false;
        self.refusal = None;
        let detail = format!(
            "forced by an operator{}: offset {}, the most any node was seen with {most}{}",
            old.map(|o| format!(" in place of {}", o.addr))
                .unwrap_or_default(),
            report.offset,
            match most.saturating_sub(report.offset) {
                0 => String::new(),
                n => format!(" (up to {n} bytes of the replication stream may be missing)"),
            }
        );
        self.event("promoted-by-operator", Some(&target), detail.clone());
        Ok(format!("promoted: {detail}, epoch {epoch}"))
    }

    /// Waits until the primary's offset holds still and the target has
    /// reached it.
    async fn catch_up(&self, primary: &Node, target: &Node) -> Result<(), String> {
        let deadline = Instant::now() + SWITCHOVER_CATCH_UP;
        let mut last = None;
        loop {
            let p = self.report(primary).await?.offset;
            let t = self.report(target).await?.offset;
            if t >= p && last == Some(p) {
                return Ok(());
            }
            last = Some(p);
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not reach the primary's offset {p} (at {t}) within {} ms",
                    target.addr,
                    SWITCHOVER_CATCH_UP.as_millis()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Opens the epoch a failover or switchover will name its primary in,
    /// and returns it. With `[coordination]` this is Stolon's first phase:
    /// the record says "epoch N+1, no primary yet", and the new primary is
    /// named only once every live instance has confirmed it holds writes
    /// (or `max_view_age_ms` passed: a silent instance holds writes by its
    /// own bound by then). Alone, there is nobody to tell.
    async fn fence(&mut self, old: &Node) -> Result<u64, String> {
        if let Some(epoch) = self.fenced_epoch {
            return Ok(epoch);
        }
        let epoch = self.shard.epoch() + 1;
        let Some(coordination) = self.coordination.clone() else {
            return Ok(epoch);
        };
        self.persist(epoch, old, true).await?;
        self.fenced_epoch = Some(epoch);
        self.shard.set_primary(old, epoch);
        let started = Instant::now();
        let silent = coordination.wait_confirmed(&self.shard.name, epoch).await;
        let detail = if silent.is_empty() {
            format!(
                "every live instance holds writes ({} ms)",
                started.elapsed().as_millis()
            )
        } else {
            format!(
                "{} did not confirm within {} ms: cut off from etcd, they hold writes by their own view-age bound",
                silent.join(", "),
                started.elapsed().as_millis()
            )
        };
        self.event("epoch-fenced", Some(old), detail);
        Ok(epoch)
    }

    /// Ends a fence whose switchover or promotion did not happen: the old
    /// primary goes on, in the fenced epoch.
    async fn unfence(&mut self, primary: &Node) {
        if self.fenced_epoch.is_some() {
            match self.persist(self.shard.epoch(), primary, false).await {
                Ok(()) => self.fenced_epoch = None,
                // The record stays fenced: the writes stay held until the
                // next holder (or this one, next tick) settles it.
                Err(e) => tracing::warn!(error = %e, "cannot lift the fence"),
            }
        }
        if self.fenced_epoch.is_none() {
            self.shard.set_failing_over(false);
        }
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

    /// Keeps every other reachable node following the primary.
    async fn reconcile(&mut self, primary: &Arc<Node>) {
        let others: Vec<Arc<Node>> = self
            .shard
            .nodes
            .iter()
            .filter(|n| n.id != primary.id && n.health() == Health::Up)
            .cloned()
            .collect();
        for node in others {
            match node.role() {
                Role::Primary => self.follow(&node, primary, "fenced").await,
                Role::Replica if node.master().as_deref() != Some(primary.addr.as_str()) => {
                    self.follow(&node, primary, "repointed").await
                }
                _ => {}
            }
        }
        if primary.health() == Health::Up {
            self.guard(primary).await;
        }
    }

    /// `REPLICAOF` the primary, at most once per `RETRY_AFTER` per node.
    async fn follow(&mut self, node: &Arc<Node>, primary: &Node, kind: &'static str) {
        if self
            .last_sent
            .get(&node.id)
            .is_some_and(|t| t.elapsed() < RETRY_AFTER)
        {
            return;
        }
        self.last_sent.insert(node.id, Instant::now());
        let Some((host, port)) = primary.addr.rsplit_once(':') else {
            return;
        };
        match self.command(node, &["REPLICAOF", host, port]).await {
            Ok(_) => node.set_detached(false),
            Err(e) => {
                return tracing::warn!(node = %node.addr, error = %e, "REPLICAOF failed; will retry")
            }
        }
        self.event(
            kind,
            Some(node),
            format!(
                "now follows {} (it was {})",
                primary.addr,
                match node.role() {
                    Role::Primary => "claiming to be primary".to_string(),
                    _ => format!("following {}", node.master().unwrap_or_default()),
                }
            ),
        );
    }

    /// With `manage_replication`: the primary refuses writes unless enough
    /// replicas are connected, so a primary cut off from its replicas (and
    /// about to be replaced) stops taking writes, even from clients that
    /// bypass Rampart.
    async fn guard(&mut self, primary: &Arc<Node>) {
        let replication = &self.replication;
        if !replication.manage_replication {
            return;
        }
        let min = self.shard.durability.requirement().acks.max(1).to_string();
        if self.guarded == Some(primary.id) {
            // Read it back now and then: it can be changed on the node
            // behind Rampart's back (clients through Rampart cannot).
            if self
                .guard_checked
                .is_some_and(|t| t.elapsed() < RETRY_AFTER)
            {
                return;
            }
            self.guard_checked = Some(Instant::now());
            let now = self
                .command(primary, &["CONFIG", "GET", "min-replicas-to-write"])
                .await;
            let found = match &now {
                Ok(OwnedFrame::Map { data, .. }) => data.values().next().and_then(frame_text),
                Ok(OwnedFrame::Array { data, .. }) => data.get(1).and_then(frame_text),
                _ => return,
            };
            if found.as_deref() == Some(min.as_str()) {
                return;
            }
            self.event(
                "guard-repaired",
                Some(primary),
                format!(
                    "min-replicas-to-write was {} on the primary; set to {min} again",
                    found.unwrap_or_default()
                ),
            );
        }
        let lag = replication.min_replicas_max_lag_s.to_string();
        let args = [
            "CONFIG",
            "SET",
            "min-replicas-to-write",
            &min,
            "min-replicas-max-lag",
            &lag,
        ];
        match self.command(primary, &args).await {
            Ok(_) => {
                self.guarded = Some(primary.id);
                tracing::info!(node = %primary.addr, min_replicas = %min, "primary guarded");
            }
            Err(e) => {
                tracing::warn!(node = %primary.addr, error = %e, "CONFIG SET failed; will retry")
            }
        }
    }

    /// Waits (bounded) until the new primary has as many replicas
    /// connected as writes need, so released writes are not failed for a
    /// quorum that is only seconds away.
    async fn wait_for_replicas(&self, primary: &Node, acks: u32) {
        let deadline = Instant::now() + CATCH_UP;
        let wanted = acks.max(1);
        while Instant::now() < deadline {
            if self
                .report(primary)
                .await
                .is_ok_and(|r| r.replicas >= wanted)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Records the shard's state. With `[coordination]` it is a
    /// compare-and-swap in etcd and its failure stops the step; alone, a
    /// file that cannot be written is logged and the step goes on (the
    /// nodes still say who is primary).
    async fn persist(&self, epoch: u64, primary: &Node, fenced: bool) -> Result<(), String> {
        let state = ShardState {
            epoch,
            primary: primary.addr.clone(),
            waiting: self.shard.awaiting_operator(),
            fenced,
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

    /// Probes a node now and records the result, so that decisions right
    /// after a change do not rest on a report from before it. Returns the
    /// role it reported.
    async fn observe(&self, node: &Node) -> Option<Role> {
        let report = self.report(node).await.ok()?;
        self.shard.observe(node, &report, Instant::now(), None);
        Some(report.role)
    }

    async fn report(&self, node: &Node) -> Result<Report, String> {
        let mut control = self.connect(node).await?;
        probe::replication(&mut control, self.timeout)
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends one command on a fresh connection; an error reply is an error.
    async fn command(&self, node: &Node, args: &[&str]) -> Result<OwnedFrame, String> {
        let mut control = self.connect(node).await?;
        match control.call(args, self.timeout).await {
            Ok(OwnedFrame::SimpleError { data, .. }) => Err(data),
            Ok(OwnedFrame::BlobError { data, .. }) => Err(String::from_utf8_lossy(&data).into()),
            Ok(frame) => Ok(frame),
            Err(e) => Err(format!("{}: {e}", node.addr)),
        }
    }

    async fn connect(&self, node: &Node) -> Result<Control, String> {
        match tokio::time::timeout(self.timeout, Control::connect(&node.addr, &self.opts)).await {
            Ok(Ok(control)) => Ok(control),
            Ok(Err(e)) => Err(format!("{}: {e}", node.addr)),
            Err(_) => Err(format!("{}: connect timed out", node.addr)),
        }
    }
}

/// How a stale node gave itself away, for events.
/// How far a replica may claim to be ahead of its primary's offset as
/// last probed: the writes of one probe interval, at any plausible rate.
const MAX_AHEAD: u64 = 1 << 30;

/// Why a candidate's report cannot be believed: it claims more data than
/// its primary ever had (a misconfigured or hostile node; electing it
/// would throw away the real replicas' copies).
fn implausible(claimed: u64, known: u64, primary: &str) -> Option<String> {
    (known > 0 && claimed > known.saturating_add(MAX_AHEAD)).then(|| {
        format!(
            "claims replication offset {claimed}, more than 1 GiB beyond the most its primary {primary} was ever seen with ({known}): not a candidate"
        )
    })
}

fn staleness(node: &Node) -> String {
    let how = if node.offset() < node.max_offset() {
        "went backwards"
    } else {
        "restarted"
    };
    format!(
        "{how} (offset {}, the most it was seen with {})",
        node.offset(),
        node.max_offset()
    )
}

#[cfg(test)]
mod tests {
    use super::implausible;

    #[test]
    fn a_replica_far_ahead_of_its_primary_is_not_believed() {
        assert!(implausible(1_000_000_000_000_000, 28_992, "p:1").is_some());
        assert!(implausible(28_992 + 4096, 28_992, "p:1").is_none());
        // Never probed (Rampart just started): nothing to compare with.
        assert!(implausible(1_000_000_000_000_000, 0, "p:1").is_none());
    }
}
