//! The shared picture of the data tier: shards, their nodes, each node's role
//! and health as last observed. Written by the control loop (probes, the data
//! path's passive signals), read by the request path on every command, so the
//! per-node fields are atomics and reading them takes no lock.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::backend::NodePool;
use crate::config::ReadFrom;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Unknown,
    Primary,
    Replica,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Answering probes.
    Up,
    /// Missed a probe or failed on the data path, not yet long enough to be down.
    Suspect,
    /// Not answering.
    Down,
}

/// One Redis node.
pub struct Node {
    pub id: u32,
    pub addr: String,
    role: AtomicU8,
    health: AtomicU8,
    /// Replication offset from the last probe.
    offset: AtomicU64,
    /// For a replica: whether its link to the primary is up (`connected`).
    replica_connected: AtomicU8,
    /// Commands forwarded to this node.
    pub requests: AtomicU64,
    /// `redis_version` from INFO, for HELLO replies.
    pub version: Mutex<Option<String>>,
    pub pool: NodePool,
    /// Shared by all nodes: bumped when any node's role or health changes,
    /// so policies that cache the node list know to refresh it.
    changes: Arc<AtomicU64>,
}

impl Node {
    pub fn new(id: u32, addr: String, pool: NodePool, changes: Arc<AtomicU64>) -> Node {
        Node {
            changes,
            id,
            addr,
            role: AtomicU8::new(Role::Unknown as u8),
            health: AtomicU8::new(Health::Down as u8),
            offset: AtomicU64::new(0),
            replica_connected: AtomicU8::new(0),
            requests: AtomicU64::new(0),
            version: Mutex::new(None),
            pool,
        }
    }

    pub fn role(&self) -> Role {
        match self.role.load(Ordering::Acquire) {
            1 => Role::Primary,
            2 => Role::Replica,
            _ => Role::Unknown,
        }
    }

    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Acquire) {
            0 => Health::Up,
            1 => Health::Suspect,
            _ => Health::Down,
        }
    }

    pub fn offset(&self) -> u64 {
        self.offset.load(Ordering::Acquire)
    }

    pub fn count_requests(&self, n: u64) {
        self.requests.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_health(&self, health: Health) {
        if self.health.swap(health as u8, Ordering::AcqRel) != health as u8 {
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Records what a probe saw.
    pub fn observe(&self, role: Role, offset: u64, replica_connected: bool) {
        let role_changed = self.role.swap(role as u8, Ordering::AcqRel) != role as u8;
        self.offset.store(offset, Ordering::Release);
        let link_changed = self
            .replica_connected
            .swap(replica_connected as u8, Ordering::AcqRel)
            != replica_connected as u8;
        if role_changed || link_changed {
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A replica that may serve reads: answering probes and following its
    /// primary.
    pub fn serves_reads(&self) -> bool {
        self.health() == Health::Up
            && self.role() == Role::Replica
            && self.replica_connected.load(Ordering::Acquire) == 1
    }

    pub fn snapshot(&self, primary: bool) -> NodeView {
        NodeView {
            id: self.id,
            addr: self.addr.clone(),
            role: self.role(),
            health: self.health(),
            offset: self.offset(),
            primary,
            serves_reads: self.serves_reads(),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }
}

/// A primary and its replicas.
pub struct Shard {
    pub name: String,
    pub nodes: Vec<Arc<Node>>,
    pub read_from: ReadFrom,
    /// Index into `nodes` of the primary, `usize::MAX` when none is known.
    primary: AtomicUsize,
}

const NO_PRIMARY: usize = usize::MAX;

impl Shard {
    pub fn new(name: String, nodes: Vec<Arc<Node>>, read_from: ReadFrom) -> Shard {
        Shard {
            name,
            nodes,
            read_from,
            primary: AtomicUsize::new(NO_PRIMARY),
        }
    }

    pub fn primary(&self) -> Option<&Arc<Node>> {
        self.nodes.get(self.primary.load(Ordering::Acquire))
    }

    /// Re-derives the primary from what the nodes report about themselves.
    /// Several nodes claiming the role (a split brain left by someone else)
    /// is resolved towards the one with the highest replication offset and
    /// logged; automatic failover and fencing are the failover module's job.
    pub fn refresh_primary(&self) {
        let claimants: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                n.role() == Role::Primary && n.health() != Health::Down
            })
            .collect();
        let chosen = match claimants.len() {
            0 => NO_PRIMARY,
            1 => claimants[0],
            _ => {
                let best = claimants
                    .iter()
                    .copied()
                    .max_by_key(|&i| self.nodes[i].offset())
                    .unwrap_or(NO_PRIMARY);
                tracing::warn!(shard = %self.name, claimants = ?claimants.iter().map(|&i| &self.nodes[i].addr).collect::<Vec<_>>(),
                    "several nodes claim to be primary; using the one with the highest offset");
                best
            }
        };
        let before = self.primary.swap(chosen, Ordering::AcqRel);
        if before != chosen {
            match self.nodes.get(chosen) {
                Some(node) => {
                    tracing::info!(shard = %self.name, primary = %node.addr, "primary discovered")
                }
                None => tracing::warn!(shard = %self.name, "no reachable primary"),
            }
        }
    }

    pub fn snapshot(&self) -> ShardView {
        let primary = self.primary.load(Ordering::Acquire);
        ShardView {
            name: self.name.clone(),
            read_from: format!("{:?}", self.read_from).to_lowercase(),
            nodes: self
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| n.snapshot(i == primary))
                .collect(),
        }
    }
}

/// Every shard.
pub struct Topology {
    pub shards: Vec<Arc<Shard>>,
}

impl Topology {
    /// The shard a command goes to. Single-shard for now.
    pub fn shard(&self) -> &Arc<Shard> {
        &self.shards[0]
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&Arc<Shard>, &Arc<Node>)> {
        self.shards
            .iter()
            .flat_map(|s| s.nodes.iter().map(move |n| (s, n)))
    }

    pub fn snapshot(&self) -> TopologyView {
        TopologyView {
            shards: self.shards.iter().map(|s| s.snapshot()).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TopologyView {
    pub shards: Vec<ShardView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardView {
    pub name: String,
    pub read_from: String,
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub id: u32,
    pub addr: String,
    pub role: Role,
    pub health: Health,
    pub offset: u64,
    pub primary: bool,
    pub serves_reads: bool,
    pub requests: u64,
}
