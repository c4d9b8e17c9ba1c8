//! Moving a shard's primary on purpose: a switchover (checked: nothing
//! acknowledged is lost), a forced promotion (the operator's choice when
//! no node can be proven safe), and, in fan-out mode, copying a node
//! afresh.

use std::time::Duration;

use tokio::sync::oneshot;

use super::OpError;
use crate::config::FailoverRole;
use crate::context::Context;
use crate::failover::request::PrimaryChange;
use crate::shard::Shard;

impl Context {
    /// Marks a fan-out node stale, so that it is copied afresh from a node
    /// in sync.
    pub fn resync(&self, shard: &str, node: &str) -> Result<String, OpError> {
        let Some(fanout) = &self.shard(shard)?.fanout else {
            return Err(OpError::Conflict(format!(
                "shard '{shard}' is not in fan-out mode (Redis replication resyncs its own replicas)"
            )));
        };
        if fanout.force_resync(node) {
            Ok(format!("{node} will be copied afresh"))
        } else {
            Err(OpError::NotFound(format!(
                "{node} is not a node of shard '{shard}'"
            )))
        }
    }

    /// Asks the shard's failover controller to move the primary role to
    /// `target` (or to the replica the election picks), at most once per
    /// `failover.switchover_interval_ms`.
    pub async fn switchover(&self, shard: &str, target: Option<String>) -> Result<String, OpError> {
        let found = self.shard(shard)?;
        self.leader()?;
        let interval = Duration::from_millis(self.config.failover.switchover_interval_ms);
        if let Err(ago) = found.topology.admit_switchover(interval) {
            self.metrics.count_switchover_refused();
            return Err(OpError::TooSoon(format!(
                "switchover refused: the last one began {:.1} s ago and failover.switchover_interval_ms allows one every {:.1} s",
                ago.as_secs_f64(),
                interval.as_secs_f64()
            )));
        }
        if let Some(fanout) = &found.fanout {
            return fanout.switchover(target);
        }
        ask_controller(&found, target, false).await
    }

    /// `rampart promote --force`: makes `node` the primary of `shard` now,
    /// without proof that it holds every acknowledged write. Not
    /// rate-limited: it is the way out of a shard that waits.
    pub async fn force_promote(&self, shard: &str, node: String) -> Result<String, OpError> {
        let found = self.shard(shard)?;
        self.leader()?;
        if found.fanout.is_some() {
            return Err(OpError::Conflict(
                "a fan-out shard picks its primary with `rampart switchover --to`".into(),
            ));
        }
        ask_controller(&found, Some(node), true).await
    }

    /// Only a leader moves primaries.
    fn leader(&self) -> Result<(), OpError> {
        match self.config.failover.role {
            FailoverRole::Follower => Err(OpError::Conflict(
                "this Rampart is a follower (failover.role); ask the leader".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// Hands a request to the shard's failover controller and waits for its
/// answer.
async fn ask_controller(
    shard: &Shard,
    target: Option<String>,
    force: bool,
) -> Result<String, OpError> {
    let (reply, answer) = oneshot::channel();
    shard
        .controller
        .send(PrimaryChange {
            target,
            force,
            reply,
        })
        .await
        .map_err(|_| OpError::Unavailable("the failover controller is not running".into()))?;
    answer
        .await
        .map_err(|_| OpError::Unavailable("the failover controller stopped".into()))?
}
