//! Command -> node. Writes, transactions and anything unknown go to the
//! primary; read-only commands go where the shard's read policy says.
//!
//! One small trait per decision: [`ReadPolicy`] picks a replica for a read,
//! and the algorithms sit side by side in `policies.rs`. Whatever a policy
//! picks, the host serves the read from it only if it may (see
//! [`session`]): a router, built in or a plugin, cannot break the shard's
//! read consistency.

mod policies;
pub mod session;

use std::sync::Arc;

pub use policies::{PrimaryOnly, RoundRobinReplicas};
pub use session::ReadToken;

use crate::observe::policy_view::PolicyView;
use crate::resp::Class;
use crate::topology::position::Served;
use crate::topology::{Health, Node, ReplicaSet, Role};

/// What a read policy knows about the read it places.
#[derive(Debug, Clone, Copy)]
pub struct Read<'a> {
    pub client_id: u64,
    /// The command's first argument: the key, for nearly every read
    /// (empty when there is none).
    pub key: &'a [u8],
    /// Which burst of the client's input the read came in (a count of
    /// reads from its socket): a router spreading reads in turn keeps one
    /// burst's reads on one replica, so a pipeline stays one batch.
    pub burst: u64,
}

impl Read<'_> {
    /// This read's turn for a router spreading reads in turn: the next
    /// turn for each new burst seen on this thread, the same turn for the
    /// rest of a burst. So the reads a client pipelined together go to one
    /// node as one batch (split over two replicas, each link would carry
    /// half of it, twice the batches for the same reads), and successive
    /// bursts, of one client or of many, go round.
    pub fn turn(&self) -> usize {
        thread_local! {
            /// The last burst seen (client, burst) and its turn; per thread,
            /// so reads never contend on it.
            static TURN: std::cell::Cell<((u64, u64), usize)> =
                const { std::cell::Cell::new(((u64::MAX, u64::MAX), usize::MAX)) };
        }
        TURN.with(|t| {
            let (last, turn) = t.get();
            let burst = (self.client_id, self.burst);
            let turn = if last == burst {
                turn
            } else {
                turn.wrapping_add(1)
            };
            t.set((burst, turn));
            turn
        })
    }
}

/// Chooses the node for a read-only command. `None` means "the primary".
pub trait ReadPolicy: Send + Sync {
    fn pick<'s>(&self, shard: &'s ReplicaSet, read: &Read) -> Option<&'s Arc<Node>>;

    /// What is deciding, for the admin views.
    fn describe(&self) -> PolicyView;
}

/// Where a command goes, and for a read whether a replica serves it;
/// `Err` when the shard has no primary to send it to.
pub fn route<'s>(
    shard: &'s ReplicaSet,
    router: &dyn ReadPolicy,
    class: Class,
    read: &Read,
    token: &ReadToken,
) -> Result<(&'s Arc<Node>, bool), NoPrimary> {
    if class == Class::Read {
        let placed = place_read(shard, router, read, token);
        shard
            .positions
            .count(placed.err().unwrap_or(Served::Replica));
        if let Ok(node) = placed {
            return Ok((node, true));
        }
    }
    shard.primary().map(|p| (p, false)).ok_or(NoPrimary)
}

/// The replica for a read: the policy's pick if the client may read there,
/// else the client's home replica or any other it may read from; else why
/// the primary serves it.
fn place_read<'s>(
    shard: &'s ReplicaSet,
    router: &dyn ReadPolicy,
    read: &Read,
    token: &ReadToken,
) -> Result<&'s Arc<Node>, Served> {
    let check = token.check(shard, shard.positions.consistency());
    match router.pick(shard, read) {
        Some(node) if check.allows(node) => return Ok(node),
        Some(node) if node.role() == Role::Primary => return Err(Served::Chosen),
        Some(_) => {}
        None => return Err(no_replica_chosen(shard)),
    }
    if let Some(home) = token.home(shard, &check) {
        return Ok(home);
    }
    // Any replica the client may read from, starting at a place of its own
    // so that clients turned away from their pick spread out.
    let count = shard.nodes.len();
    let start = (read.client_id as usize) % count.max(1);
    let other = (0..count)
        .map(|i| &shard.nodes[(start + i) % count])
        .find(|node| check.allows(node));
    match other {
        Some(node) => Ok(node),
        None if shard.nodes.iter().any(|n| n.serves_reads()) => Err(Served::NotCaughtUp),
        None => Err(no_replica_chosen(shard)),
    }
}

/// Why the primary serves a read no replica was chosen for.
fn no_replica_chosen(shard: &ReplicaSet) -> Served {
    let up = |n: &&Arc<Node>| n.role() == Role::Replica && n.health() == Health::Up;
    if shard.nodes.iter().any(|n| n.serves_reads()) {
        Served::Chosen
    } else if shard.nodes.iter().any(|n| up(&n)) {
        Served::Lagging
    } else {
        Served::NoReplica
    }
}

/// The shard has no reachable primary right now.
#[derive(Debug, Clone, Copy)]
pub struct NoPrimary;
