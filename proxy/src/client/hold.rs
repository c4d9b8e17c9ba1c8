//! Held writes: while a shard has no primary (a failover is choosing
//! one), a request that needs one waits for it instead of failing, within
//! `failover.hold_writes_ms` and `max_held_clients`.

use std::sync::atomic::Ordering;

use super::connection::{Connection, Flow};
use crate::resp::Value;

impl Connection {
    /// While the shard has no usable primary (a failover is choosing one),
    /// a request that needs it waits, up to `failover.hold_writes_ms` from
    /// when it arrived (requests pipelined together share one hold), so a
    /// failover costs clients a pause instead of errors. At most
    /// `failover.max_held_clients` wait; beyond that, and past the time
    /// bound, the caller answers an error. True once there is a primary.
    pub(super) async fn await_primary(&mut self) -> bool {
        let ctx = self.ctx.clone();
        let shard = self.shard.topology.clone();
        if shard.primary().is_some() {
            return true;
        }
        if self.flush().await == Flow::Stop {
            return false;
        }
        let failover = &ctx.config.failover;
        if shard.held.fetch_add(1, Ordering::AcqRel) >= failover.max_held_clients {
            shard.held.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let deadline = self.arrived + std::time::Duration::from_millis(failover.hold_writes_ms);
        let mut changed = shard.watch();
        let mut shutdown = ctx.shutdown.clone();
        let found = loop {
            if shard.primary().is_some() {
                break true;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break false,
                _ = shutdown.changed() => break false,
                result = changed.changed() => if result.is_err() {
                    break false;
                },
            }
        };
        shard.held.fetch_sub(1, Ordering::AcqRel);
        found
    }

    pub(super) fn no_primary(&self) -> Value {
        no_primary(self.shard.name())
    }
}

/// The error for a request that needs the primary of `shard`, which has
/// none reachable.
pub(super) fn no_primary(shard: &str) -> Value {
    Value::err(format!(
        "ERR rampart: no reachable primary for shard '{shard}'"
    ))
}
