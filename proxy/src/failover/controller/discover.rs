//! Finding the primary when none is known (at start, or after it was
//! forgotten): from the nodes' own claims and the persisted epoch, never
//! from the order of the configuration; and, while no instance can read
//! etcd, keeping the replicas' copies safe from a primary that may be
//! replaced.

use super::*;

impl Controller {
    /// Picks the primary at start-up: the persisted epoch's primary if it
    /// still claims the role, else the claimant with the highest offset,
    /// else (nobody claims it) the node the replicas follow, which the next
    /// tick will find down and fail over from.
    pub(super) async fn discover(&mut self) {
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
        // The record's members describe its primary's epoch; a primary
        // chosen otherwise starts one whose followers are unknown.
        self.members = persisted
            .as_ref()
            .filter(|s| s.epoch == epoch)
            .and_then(|s| s.members.clone())
            .map(|m| m.into_iter().collect());
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
    pub(super) async fn keep_copies_while_blind(&mut self) {
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
}
