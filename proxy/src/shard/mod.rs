//! One shard as the request path and the operations see it: its nodes
//! and their roles (the [`topology::ReplicaSet`] the control loop keeps), the
//! router in force, the quorum policy, the write path (the nodes' own
//! replication, or the fan-out writer) and the way to its failover
//! controller. Code that has found the shard it needs talks to this and
//! nothing else about it.

pub mod info;
pub mod locate;
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
