//! One shard as the request path and the operations see it: its nodes
//! and their roles (the [`topology::ReplicaSet`] the control loop keeps), the
//! router in force, the quorum policy, the write path (the nodes' own
//! replication, or the fan-out writer) and the way to its failover
//! controller. Code that has found the shard it needs talks to this and
//! nothing else about it.

pub mod build;
pub mod info;
pub mod locate;
pub mod notifications;
pub mod slots;
pub mod split;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use crate::failover::request::PrimaryChange;
use crate::policy::slot::{Generation, RouterSlot};
use crate::replicate::fanout::Fanout;
use crate::replicate::QuorumPolicy;
use crate::topology;

/// The quorum policy generation a shard runs.
pub type QuorumGeneration = Generation<Box<dyn QuorumPolicy>>;

pub struct Shard {
    /// Nodes, roles, health, epoch, durability: what probes and the
    /// failover controller maintain.
    pub topology: Arc<topology::ReplicaSet>,
    /// The active router generation, its shadow and the previous one.
    pub router: RouterSlot,
    /// Replaced whole by a policy load.
    pub quorum: ArcSwap<QuorumGeneration>,
    /// The fan-out writer, in fan-out mode.
    pub fanout: Option<Arc<Fanout>>,
    /// Switchovers and forced promotions for the failover controller (it
    /// runs on leaders only; a fan-out shard has none).
    pub(crate) controller: mpsc::Sender<PrimaryChange>,
}

impl Shard {
    pub fn name(&self) -> &str {
        &self.topology.name
    }
}

/// Every shard the request path routes to, by index: configuration order
/// (by name), then shards added by reloads at the end. A shard removed
/// while running stays in the list, retired (see [`Shards::serving`]), so
/// an index taken from a map or a cursor is always valid.
pub struct Shards {
    list: ArcSwap<Vec<Arc<Shard>>>,
}

impl Shards {
    pub fn new(list: Vec<Arc<Shard>>) -> Shards {
        Shards {
            list: ArcSwap::from_pointee(list),
        }
    }

    /// Every shard as of now.
    pub fn all(&self) -> Arc<Vec<Arc<Shard>>> {
        self.list.load_full()
    }

    pub fn len(&self) -> usize {
        self.list.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shard `index`.
    pub fn at(&self, index: usize) -> Arc<Shard> {
        let list = self.list.load();
        debug_assert!(index < list.len(), "shard {index} of {}", list.len());
        list.get(index).unwrap_or(&list[0]).clone()
    }

    /// The first shard in service (by name): where keyless commands go.
    pub fn first(&self) -> Arc<Shard> {
        self.at(self.first_index())
    }

    /// The index of [`Shards::first`].
    pub fn first_index(&self) -> usize {
        let list = self.list.load();
        list.iter()
            .position(|s| !s.topology.is_retired())
            .unwrap_or(0)
    }

    /// The indices of the shards in service: those a command for every
    /// shard goes to. A shard removed while running keeps its index (maps
    /// and cursors may name it) but is left out.
    pub fn serving(&self) -> Vec<usize> {
        let list = self.list.load();
        (0..list.len())
            .filter(|&i| !list[i].topology.is_retired())
            .collect()
    }

    /// The shards in service (see [`Shards::serving`]).
    pub fn all_serving(&self) -> Vec<Arc<Shard>> {
        let list = self.list.load();
        list.iter()
            .filter(|s| !s.topology.is_retired())
            .cloned()
            .collect()
    }

    /// The shard called `name`, with its index.
    pub fn named(&self, name: &str) -> Option<(usize, Arc<Shard>)> {
        self.list
            .load()
            .iter()
            .enumerate()
            .find(|(_, s)| s.name() == name)
            .map(|(i, s)| (i, s.clone()))
    }

    /// The shard in service called `name`, with its index.
    pub fn serving_named(&self, name: &str) -> Option<(usize, Arc<Shard>)> {
        self.named(name)
            .filter(|(_, shard)| !shard.topology.is_retired())
    }

    /// The index of `shard`.
    pub fn index_of(&self, shard: &Arc<Shard>) -> usize {
        self.list
            .load()
            .iter()
            .position(|s| Arc::ptr_eq(s, shard))
            .unwrap_or(0)
    }

    /// Adds a shard at the end; returns its index.
    pub fn push(&self, shard: Arc<Shard>) -> usize {
        let mut index = 0;
        self.list.rcu(|list| {
            let mut list = Vec::clone(list);
            index = list.len();
            list.push(shard.clone());
            list
        });
        index
    }
}

/// A shard a reload added, for the service that starts what runs for it
/// (its probes, and on a leader its failover controller).
pub struct Added {
    pub shard: Arc<Shard>,
    pub section: crate::config::ShardConfig,
    pub requests: mpsc::Receiver<PrimaryChange>,
}
