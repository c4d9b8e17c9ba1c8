//! Keeping a shard in line around its primary: fencing a node that must
//! not take writes, bringing strays back to follow the primary, and (with
//! `manage_replication`) guarding the primary's `min-replicas-to-write`.

use std::sync::Arc;

use super::*;

impl Controller {
    /// Opens the epoch a failover or switchover will name its primary in,
    /// and returns it. With `[coordination]` this is Stolon's first phase:
    /// the record says "epoch N+1, no primary yet", and the new primary is
    /// named only once every live instance has confirmed it holds writes
    /// (or `max_view_age_ms` passed: a silent instance holds writes by its
    /// own bound by then). Alone, there is nobody to tell.
    pub(super) async fn fence(&mut self, old: &Node) -> Result<u64, StepError> {
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
    pub(super) async fn unfence(&mut self, primary: &Node) {
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

    /// Keeps every other reachable node following the primary.
    pub(super) async fn reconcile(&mut self, primary: &Arc<Node>) {
        let others: Vec<Arc<Node>> = self
            .shard
            .nodes
            .iter()
            .filter(|n| n.id != primary.id && n.health() == Health::Up)
            .cloned()
            .collect();
        for node in others {
            match node.role() {
                Role::Primary => {
                    self.follow(&node, primary, "fenced").await;
                }
                Role::Replica if node.master().as_deref() != Some(primary.addr.as_str()) => {
                    self.follow(&node, primary, "repointed").await;
                }
                // Following already (its own configuration, an operator):
                // it may acknowledge writes from now on.
                _ => {
                    self.join(&node, primary).await;
                }
            }
        }
        if primary.health() == Health::Up {
            self.guard(primary).await;
        }
    }

    /// `REPLICAOF` the primary, at most once per `RETRY_AFTER` per node.
    /// Returns whether the node may follow it now: the command ran, or was
    /// sent and went unanswered (a paused node runs it when it resumes).
    pub(super) async fn follow(
        &mut self,
        node: &Arc<Node>,
        primary: &Node,
        kind: &'static str,
    ) -> bool {
        if self
            .last_sent
            .get(&node.id)
            .is_some_and(|t| t.elapsed() < RETRY_AFTER)
        {
            return false;
        }
        self.last_sent.insert(node.id, Instant::now());
        let Some((host, port)) = primary.addr.rsplit_once(':') else {
            return false;
        };
        if !self.join(node, primary).await {
            return false;
        }
        match self.command(node, &["REPLICAOF", host, port]).await {
            Ok(_) => node.set_detached(false),
            Err(e) => {
                tracing::warn!(node = %node.addr, error = %e, "REPLICAOF failed; will retry");
                return e.may_have_run();
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
        true
    }

    /// With `manage_replication`: the primary refuses writes unless enough
    /// replicas are connected, so a primary cut off from its replicas (and
    /// about to be replaced) stops taking writes, even from clients that
    /// bypass Rampart.
    pub(super) async fn guard(&mut self, primary: &Arc<Node>) {
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
            let was = found.unwrap_or_default();
            let change = match was.parse::<u32>().ok().zip(min.parse::<u32>().ok()) {
                Some((was, wanted)) if was < wanted => "raised back to",
                Some((was, wanted)) if was > wanted => "lowered back to",
                _ => "set back to",
            };
            self.event(
                "guard-repaired",
                Some(primary),
                format!(
                    "min-replicas-to-write was {was} on the primary; {change} {min}, what the shard's writes need"
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
    pub(super) async fn wait_for_replicas(&self, primary: &Node, acks: u32) {
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
}
