//! A switchover an operator asked for: writes held, the target caught up,
//! promoted, the old primary repointed, writes released.

use super::*;

impl Controller {
    /// Moves the primary role on purpose: hold new writes, wait until the
    /// old primary's offset has stopped moving (writes in flight have
    /// landed) and the target has all of it, promote the target, repoint
    /// everyone else (the old primary included), release the writes.
    /// Nothing acknowledged is lost and no client sees an error; if the
    /// target does not catch up in time, nothing changes.
    pub(super) async fn switchover(&mut self, target: Option<String>) -> Result<String, OpError> {
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
        let report = self
            .report(&target)
            .await
            .map_err(|e| OpError::Conflict(e.to_string()))?;
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
                self.event("switchover-aborted", Some(&target), e.to_string());
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
}
