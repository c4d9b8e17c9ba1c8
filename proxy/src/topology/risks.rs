//! Failures Rampart can see coming, computed from what the probes keep:
//! how many replicas a shard can lose before its writes are refused, and
//! how far each replica can fall further behind before the primary's
//! replication backlog no longer holds what it lacks (then Redis must copy
//! it whole, a full resynchronisation that loads the primary and leaves
//! the shard a replica short for its duration).

use std::sync::atomic::Ordering;

use super::{Node, ReplicaSet, SyncState};

/// How close a node is to its `maxmemory`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryRisk {
    /// Bytes left before `maxmemory`.
    pub headroom: u64,
    /// The headroom as a share of `maxmemory`.
    pub share: f64,
    /// Seconds until full at the current growth; `None` when not growing.
    pub full_in: Option<f64>,
}

impl Node {
    /// For a node with `maxmemory` set and sampled: how much room is left
    /// and how long it lasts at the rate memory grows now. At `maxmemory`
    /// Redis evicts keys or, with `noeviction`, refuses writes (`-OOM`).
    pub fn memory_risk(&self) -> Option<MemoryRisk> {
        let memory = self.memory();
        if memory.max == 0 {
            return None;
        }
        let headroom = memory.max.saturating_sub(memory.used);
        Some(MemoryRisk {
            headroom,
            share: headroom as f64 / memory.max as f64,
            full_in: (memory.growth > 1.0).then(|| headroom as f64 / memory.growth),
        })
    }
}

impl ReplicaSet {
    /// Replicas that could acknowledge a write now, beyond the
    /// acknowledgements a write needs: at 0, one more replica failure and
    /// synchronous writes are refused (`-NOQUORUM`). Negative: refused
    /// already.
    pub fn spare_replicas(&self) -> i64 {
        let acks = i64::from(self.durability.requirement().acks);
        let live = if self.fanout {
            let in_sync = self
                .nodes
                .iter()
                .filter(|n| n.sync() == SyncState::InSync)
                .count();
            in_sync.saturating_sub(1)
        } else {
            self.nodes
                .iter()
                .filter(|n| self.follows_primary(n))
                .count()
        };
        live as i64 - acks
    }

    /// The primary's replication backlog, in bytes (0: unknown, or none).
    pub fn backlog_bytes(&self) -> u64 {
        self.primary_node()
            .map_or(0, |p| p.backlog.load(Ordering::Relaxed))
    }

    /// For a replica of the primary (as it last reported, answering
    /// probes now or not: a paused replica is the one at risk): how many
    /// more bytes it can fall behind before the backlog no longer holds
    /// what it lacks. Its lag is the primary's offset now less the
    /// replica's last reported one, so a replica that stopped answering
    /// is seen falling behind as the primary writes.
    pub fn backlog_headroom(&self, node: &Node) -> Option<u64> {
        let primary = self.primary_node()?;
        let backlog = primary.backlog.load(Ordering::Relaxed);
        let follows = node.id != primary.id
            && node.role() == super::Role::Replica
            && node.master().as_deref() == Some(primary.addr.as_str());
        (backlog > 0 && follows).then(|| {
            let lag = primary.offset().saturating_sub(node.offset());
            backlog.saturating_sub(lag)
        })
    }
}
