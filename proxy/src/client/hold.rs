//! Held writes: while a shard has no primary (a failover is choosing
//! one), a request that needs one waits for it instead of failing, within
//! `failover.hold_writes_ms` and `max_held_clients`.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use crate::context::Context;
use crate::resp::Value;
use crate::topology::ReplicaSet;

/// Waits, while `shard` has no usable primary (a failover is choosing
/// one), up to `failover.hold_writes_ms` from `arrived` (requests
/// pipelined together share one hold), so a failover costs clients a
/// pause instead of errors. At most `failover.max_held_clients` wait;
/// beyond that, past the time bound, and at shutdown, false: the caller
/// answers an error. True once there is a primary.
pub(super) async fn until_primary(ctx: &Context, shard: &ReplicaSet, arrived: Instant) -> bool {
    if shard.primary().is_some() {
        return true;
    }
    let failover = &ctx.config.failover;
    if shard.held.fetch_add(1, Ordering::AcqRel) >= failover.max_held_clients {
        shard.held.fetch_sub(1, Ordering::AcqRel);
        return false;
    }
    let deadline = arrived + std::time::Duration::from_millis(failover.hold_writes_ms);
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

/// The error for a request that needs the primary of `shard`, which has
/// none reachable.
pub(super) fn no_primary(shard: &str) -> Value {
    Value::err(format!(
        "ERR rampart: no reachable primary for shard '{shard}'"
    ))
}
