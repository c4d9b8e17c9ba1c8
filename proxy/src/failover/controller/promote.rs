//! Replacing a primary: failover of one judged down (elect the replica
//! that provably holds every acknowledged write, promote it, repoint the
//! others, bump the epoch), the installation of a new primary, detaching
//! replicas from a dead primary, and an operator's forced promotion.

use std::sync::Arc;
use std::time::Instant;

use super::judge::{implausible, kept, staleness};
use super::*;

impl Controller {
    pub(super) async fn failover(&mut self, old: &Arc<Node>) {
        self.begin(old);
        if let Err(e) = self.fence(old).await {
            tracing::warn!(error = %e, "cannot fence the epoch; will retry");
            return;
        }
        if self.operator_only {
            self.refuse("Rampart restarted while this shard waited for an operator".into())
                .await;
            return;
        }
        // A stale old primary answers: the replicas that follow it may
        // resynchronise from it (and throw their copies away) at any
        // moment, even while this election runs. Detached first, what
        // they report is what they keep.
        if old.health() != Health::Down {
            self.detach(old).await;
        }
        let Ballot {
            mut reports,
            candidates,
            intact,
            replicas,
        } = self.gather(old).await;
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
        let target = match self.elect(&candidates) {
            Ok(target) => target,
            Err(why) => {
                self.refuse(why).await;
                return;
            }
        };
        let Some(elected) = reports.remove(&target.id) else {
            return;
        };
        let offset = elected.offset;
        if let Err(why) = self.freeze(&target, &elected).await {
            self.event("promotion-failed", Some(&target), why.to_string());
            return;
        }
        // A stale old primary still answers: it is repointed with the
        // others (its data is not wanted). A dead one is fenced when back.
        let skip = (old.health() == Health::Down).then_some(old.id);
        let epoch = match self.fence(old).await {
            Ok(epoch) => epoch,
            Err(e) => return tracing::warn!(error = %e, "cannot fence the epoch; will retry"),
        };
        if let Err(e) = self.install(&target, skip, epoch).await {
            self.event("promotion-failed", Some(&target), e.to_string());
            return;
        }
        self.announce(old, &target, offset, acks);
    }

    /// The start of a failover: the shard holds writes, and the event
    /// says why (the primary down, or stale).
    fn begin(&mut self, old: &Arc<Node>) {
        if self.failover_started.is_some() {
            return;
        }
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

    /// Asks every member but `old` where it stands now: the candidates,
    /// how many of them are intact, and how many members there are.
    async fn gather(&mut self, old: &Arc<Node>) -> Ballot {
        // Fresh reports, not the last probe's: offsets move until the very
        // moment the old primary stopped.
        let mut reports = std::collections::HashMap::new();
        let mut candidates = Vec::new();
        let mut intact = 0;
        let shard = self.shard.clone();
        // Only nodes that may have followed the old primary can hold
        // writes it acknowledged; one that was down all its epoch cannot,
        // and neither counts towards the replicas needed nor may be elected.
        let members: Vec<&Arc<Node>> = shard
            .nodes
            .iter()
            .filter(|n| n.id != old.id && self.member(n))
            .collect();
        let mut answers = Vec::new();
        for node in members.iter().copied() {
            if let Ok(report) = self.report(node).await {
                answers.push((node, report));
            }
        }
        for (at, (node, report)) in answers.iter().enumerate() {
            // What the old primary was seen with, or what the others hold
            // now if more (the last writes may have come after its last
            // probe): no replica can be far beyond both.
            let others = answers
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != at)
                .map(|(_, (_, r))| r.offset)
                .max()
                .unwrap_or(0);
            let known = old.max_offset().max(others);
            if let Some(why) = implausible(report.offset, known, &old.addr) {
                self.say_once(node, "replica-implausible", why);
                continue;
            }
            if report.role == Role::Replica || self.was_detached(node) {
                // A replica whose offset went backwards lost what it had:
                // it answers, but cannot vouch for past writes.
                if report.offset >= self.most_seen(node) {
                    intact += 1;
                }
                candidates.push(Candidate {
                    id: node.id,
                    offset: report.offset,
                    priority: report.priority,
                });
                reports.insert(node.id, report.clone());
            }
        }
        Ballot {
            reports,
            candidates,
            intact,
            replicas: members.len() as u32,
        }
    }

    /// The candidate the quorum policy elects, or why there is none.
    fn elect(&self, candidates: &[Candidate]) -> Result<Arc<Node>, String> {
        let Some(target) = self
            .unit
            .quorum
            .load()
            .policy
            .elect(candidates)
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
            return Err(why);
        };
        Ok(target)
    }

    /// The promotion done: the event, with what the new primary may lack.
    fn announce(&mut self, old: &Arc<Node>, target: &Arc<Node>, offset: u64, acks: u32) {
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
            Some(target),
            format!(
                "replaced {} at replication offset {offset}, {took} ms after it was judged down; {loss}",
                old.addr
            ),
        );
    }

    /// Makes `target` the primary of a new epoch: promote it, remember
    /// the choice, point every other node (but `skip`) at it, guard it,
    /// give the replicas a moment to connect, and publish it, which
    /// releases held writes. Returns the new epoch.
    pub(super) async fn install(
        &mut self,
        target: &Arc<Node>,
        skip: Option<u32>,
        epoch: u64,
    ) -> Result<u64, StepError> {
        self.command(target, &["REPLICAOF", "NO", "ONE"]).await?;
        self.observe(target).await;
        // A new primary: every node must be told now, however recently it
        // was told something else.
        self.last_sent.clear();
        self.detached.clear();
        self.stale_reported = false;
        let shard = self.shard.clone();
        // Everyone who may follow it from now on may acknowledge its
        // writes; the others join when they are told, later.
        let mut members = std::collections::BTreeSet::new();
        for node in shard
            .nodes
            .iter()
            .filter(|n| n.id != target.id && Some(n.id) != skip)
        {
            if self.follow(node, target, "repointed").await {
                members.insert(node.addr.clone());
            }
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
        let before = self.members.replace(members);
        if let Err(e) = self.persist(epoch, target, false).await {
            self.members = before;
            self.shard.set_awaiting_operator(waiting);
            return Err(e.into());
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

    /// Stops the elected replica following anyone, then checks that what
    /// it holds now is still what it was elected with: the same
    /// replication history, at least as far. Between its report and this
    /// moment a replica can finish a full resynchronisation from a primary
    /// that came back empty; promoted then, it would lose every write it
    /// held. On a mismatch the node stays detached and the next tick
    /// elects again from fresh reports, where its loss shows.
    async fn freeze(&mut self, target: &Arc<Node>, elected: &Report) -> Result<(), StepError> {
        self.command(target, &["REPLICAOF", "NO", "ONE"]).await?;
        self.detached.insert(target.id);
        target.set_detached(true);
        let now = self.report(target).await?;
        match kept(elected, &now) {
            true => Ok(()),
            false => Err(StepError::Changed(format!(
                "not promoted: between its election (offset {}, history {}) and its promotion it resynchronised (now offset {}, history {}), so it may lack acknowledged writes; electing again",
                elected.offset, elected.replid, now.offset, now.replid
            ))),
        }
    }

    /// Whether a primary that answers must still be replaced: it
    /// restarted or its offset went backwards, so it may lack writes that
    /// were acknowledged. Without a quorum (asynchronous writes) a
    /// restarted primary that holds at least as much as every replica is
    /// kept: there is no acknowledgement to protect beyond what the nodes
    /// hold, and replacing it would lose more.
    pub(super) fn distrusts(&self, primary: &Node) -> bool {
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
    pub(super) async fn detach(&mut self, old: &Node) {
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
        let state = match old.health() {
            Health::Down => "is down and cannot be replaced yet".to_string(),
            _ => staleness(old),
        };
        for node in &following {
            match self.command(node, &["REPLICAOF", "NO", "ONE"]).await {
                Ok(_) => {
                    self.detached.insert(node.id);
                    node.set_detached(true);
                    self.event(
                        "replica-detached",
                        Some(node),
                        format!("no longer follows {}, which {state}: the replica keeps its copy of the acknowledged writes whatever the old primary returns with", old.addr),
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
    pub(super) fn was_detached(&self, node: &Node) -> bool {
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
    pub(super) async fn force_promote(
        &mut self,
        target: Option<String>,
    ) -> Result<String, OpError> {
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
    pub(super) async fn catch_up(&self, primary: &Node, target: &Node) -> Result<(), StepError> {
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
                return Err(StepError::Changed(format!(
                    "{} did not reach the primary's offset {p} (at {t}) within {} ms",
                    target.addr,
                    SWITCHOVER_CATCH_UP.as_millis()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What the members said when asked for a failover.
struct Ballot {
    reports: std::collections::HashMap<u32, Report>,
    candidates: Vec<Candidate>,
    /// Candidates whose offset never went backwards.
    intact: u32,
    /// Members but the old primary (answering or not).
    replicas: u32,
}
