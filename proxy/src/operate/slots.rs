//! `rampart slots move`: moving hash slots to another shard while clients
//! use them (the move itself is [`crate::reshard`]'s).

use crate::context::Context;
use crate::reshard::start::StartError;
use crate::shard::slots::{parse_ranges, ranges_text, Moving};

use super::OpError;

impl Context {
    /// Starts moving `slots` (ranges, as in the configuration) to shard
    /// `to`, walking the source at most `rate` keys per second (0: as fast
    /// as it goes). Returns once keys are moving; the walk goes on in the
    /// background.
    pub async fn move_slots(&self, slots: &str, to: &str, rate: u64) -> Result<String, OpError> {
        let _changing = self.resharder.changing.lock().await;
        let (target, _) = self.serving_named(to)?;
        let ranges = parse_ranges(slots).map_err(|e| OpError::Rejected(format!("slots: {e}")))?;
        if ranges.is_empty() {
            return Err(OpError::Rejected(
                "name the slots to move, e.g. 8192-16383".into(),
            ));
        }
        if self.coordination.is_some() && self.config.backend.tls.is_some() {
            return Err(OpError::Conflict(
                "moving slots with [coordination] uses MIGRATE between the nodes, which Rampart does not offer with [backend.tls]".into(),
            ));
        }
        if self.coordination.is_none() && self.config.failover.state_dir.is_none() {
            return Err(OpError::Conflict(
                "moving slots needs failover.state_dir: the new slot map must survive a restart, or the moved keys would be routed to where they no longer are".into(),
            ));
        }
        if self
            .resharder
            .shared
            .as_ref()
            .is_some_and(|shared| !shared.is_ready())
        {
            return Err(OpError::Unavailable(StartError::NotRead.to_string()));
        }
        let map = self.slots.load();
        if let Some(moving) = map.moving() {
            return Err(OpError::Conflict(format!(
                "slots {} are moving to shard '{}'; one move at a time",
                ranges_text(&moving.ranges),
                self.shards.at(moving.to).name()
            )));
        }
        let (first, _) = ranges[0];
        let from = map.owner(first);
        let mut owners: Vec<usize> = ranges
            .iter()
            .flat_map(|&(a, b)| (a..=b).map(|slot| map.owner(slot)))
            .collect();
        owners.sort_unstable();
        owners.dedup();
        drop(map);
        if owners.len() > 1 {
            let names: Vec<String> = owners
                .iter()
                .map(|&i| self.shards.at(i).name().to_string())
                .collect();
            return Err(OpError::Rejected(format!(
                "slots {} are owned by shards {}: move them from one shard at a time",
                ranges_text(&ranges),
                names.join(", ")
            )));
        }
        if from == target {
            return Err(OpError::Rejected(format!(
                "shard '{to}' already owns slots {}",
                ranges_text(&ranges)
            )));
        }
        for index in [from, target] {
            if self.shards.at(index).fanout.is_some() {
                return Err(OpError::Conflict(format!(
                    "shard '{}' is a fan-out shard: moving slots needs Redis's own replication on both sides",
                    self.shards.at(index).name()
                )));
            }
        }
        self.slots.update(|p| {
            *p = crate::reshard::Progress {
                rate,
                ..Default::default()
            }
        });
        let moving = Moving {
            ranges,
            from,
            to: target,
            paused: true,
        };
        let text = format!(
            "moving slots {} ({} slots) from shard '{}' to '{to}'",
            ranges_text(&moving.ranges),
            moving.count(),
            self.shards.at(from).name()
        );
        match self.resharder.start(moving).await {
            Ok(()) => Ok(text),
            Err(e @ (StartError::Busy | StartError::Unacknowledged(_) | StartError::Changed)) => {
                Err(OpError::Conflict(e.to_string()))
            }
            Err(e @ (StartError::Save(_) | StartError::NotRead)) => {
                Err(OpError::Unavailable(e.to_string()))
            }
        }
    }
}

impl Context {
    /// Forgets a stopped instance of the `[coordination]` group: slot
    /// moves stop waiting for its acknowledgement (see
    /// `coord::slot_record`).
    pub async fn forget_instance(&self, instance: &str) -> Result<String, OpError> {
        use crate::coord::ForgetError;
        let Some(coordination) = &self.coordination else {
            return Err(OpError::Conflict(
                "no [coordination]: there are no other instances".into(),
            ));
        };
        match coordination.forget(instance).await {
            Ok(()) => Ok(format!(
                "forgot instance '{instance}': slot moves no longer wait for it; if it runs again it registers again, and must be stopped while forgotten"
            )),
            Err(e @ ForgetError::Unknown(_)) => Err(OpError::NotFound(e.to_string())),
            Err(e @ (ForgetError::Live(_) | ForgetError::Itself)) => {
                Err(OpError::Conflict(e.to_string()))
            }
            Err(e @ ForgetError::Etcd(_)) => Err(OpError::Unavailable(e.to_string())),
        }
    }
}
