//! Held writes: while a shard has no primary (a failover is choosing
//! one), or its primary is up but the link to it is not connected yet, a
//! request that needs one waits for it instead of failing, within
//! `failover.hold_writes_ms` and `max_held_clients`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::Link;
use crate::context::Context;
use crate::resp::Value;
use crate::topology::{Node, ReplicaSet};

/// Waits, while `shard` has no usable primary (a failover is choosing
/// one), up to `failover.hold_writes_ms` from `arrived` (requests
/// pipelined together share one hold), so a failover costs clients a
/// pause instead of errors. At most `failover.max_held_clients` wait;
/// beyond that, past the time bound, and at shutdown, false: the caller
/// answers an error. True once there is a primary.
pub(super) async fn until_primary(ctx: &Context, shard: &ReplicaSet, arrived: Instant) -> bool {
    until(ctx, shard, arrived, None, || shard.primary().is_some()).await
}

/// Waits, within the same bounds, while `link`, the link a request would
/// take to `primary` (the shard's primary and up), is not connected: it
/// is being opened, or reconnects after the node answered again (a
/// restart), or the node died and the detector has not said so yet. The
/// request was never sent, so it can wait rather than fail. True once the
/// link connects, or once the shard's primary is another (or none): the
/// caller routes again. False at once past the hold, so that a link that
/// keeps failing as it connects cannot keep a request going round.
pub(super) async fn until_connected(
    ctx: &Context,
    shard: &ReplicaSet,
    arrived: Instant,
    primary: &Arc<Node>,
    link: &Link,
) -> bool {
    if Instant::now() >= deadline(ctx, arrived) {
        return false;
    }
    let moved = || !shard.primary().is_some_and(|p| Arc::ptr_eq(p, primary));
    until(ctx, shard, arrived, Some(link), || link.is_up() || moved()).await
}

/// Waits, within the same bounds from `arrived`, until `shard` has a usable
/// primary other than `old` (a node a failover or switchover is
/// replacing). True once it has.
pub(super) async fn until_replaced(
    ctx: &Context,
    shard: &ReplicaSet,
    arrived: Instant,
    old: &Arc<Node>,
) -> bool {
    let replaced = || shard.primary().is_some_and(|p| !Arc::ptr_eq(p, old));
    until(ctx, shard, arrived, None, replaced).await
}

/// When a hold of requests read at `arrived` ends.
fn deadline(ctx: &Context, arrived: Instant) -> Instant {
    arrived + Duration::from_millis(ctx.config.failover.hold_writes_ms)
}

/// Holds until `ready`, looked at on every change of the shard (and when
/// `link`, if given, connects), within `failover.hold_writes_ms` from
/// `arrived` and `failover.max_held_clients`; false past either, and at
/// shutdown.
async fn until(
    ctx: &Context,
    shard: &ReplicaSet,
    arrived: Instant,
    link: Option<&Link>,
    ready: impl Fn() -> bool,
) -> bool {
    if ready() {
        return true;
    }
    let failover = &ctx.config.failover;
    if shard.held.fetch_add(1, Ordering::AcqRel) >= failover.max_held_clients {
        shard.held.fetch_sub(1, Ordering::AcqRel);
        return false;
    }
    let deadline = deadline(ctx, arrived);
    let mut changed = shard.watch();
    let mut shutdown = ctx.shutdown.clone();
    let found = loop {
        if ready() {
            break true;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break false,
            _ = shutdown.changed() => break false,
            result = changed.changed() => if result.is_err() {
                break false;
            },
            _ = async { link?.connected().await; Some(()) }, if link.is_some() => {}
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
