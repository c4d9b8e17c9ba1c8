//! Nodes joining and leaving a running shard. A reload that adds a node
//! to `nodes` makes it as Rampart makes every node at start (its links,
//! its probe); the failover controller then has it follow the primary
//! (`REPLICAOF`, as for any node not following), it serves reads once the
//! probes find it in sync, and it counts for elections only once it was
//! told to follow. A node taken out of `nodes` is retired in place: no
//! longer probed, routed to, or promoted (connections Rampart opened to it
//! stay open, unused, until the node closes them or Rampart restarts).
//! The primary cannot be removed (switch over first); neither can nodes of
//! a fan-out shard, whose log is per node (a restart applies that).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, OnceLock};

use crate::backend::{LinkOptions, NodePool};
use crate::config::{BackendConfig, ShardConfig};
use crate::failover::probe::{self, Probing};
use crate::topology::{Health, Node, ReplicaSet};

/// Makes nodes, at start and on reloads.
pub struct Members {
    link_options: LinkOptions,
    backend: BackendConfig,
    workers: usize,
    zones: ZoneNumbers,
    /// Shared by every node (see [`Node`]'s `changes`).
    pub changes: Arc<AtomicU64>,
    next_id: AtomicU32,
    /// Set once the probes may start (after the shards are wired).
    probing: OnceLock<Arc<Probing>>,
    /// What was refused last, per shard: said once, not at every lookup.
    refused: std::sync::Mutex<BTreeMap<String, Vec<String>>>,
}

/// What a reload did to a shard's nodes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Not done, each with why.
    pub refused: Vec<String>,
}

impl Members {
    pub fn new(
        link_options: LinkOptions,
        backend: BackendConfig,
        workers: usize,
        zones: BTreeMap<String, u32>,
    ) -> Members {
        Members {
            link_options,
            backend,
            workers,
            zones: ZoneNumbers(std::sync::Mutex::new(zones)),
            changes: Arc::new(AtomicU64::new(0)),
            next_id: AtomicU32::new(1),
            probing: OnceLock::new(),
            refused: Default::default(),
        }
    }

    /// A node of shard `config`, not probed yet; `joining` a running
    /// shard, or there from the start.
    pub fn make(&self, addr: &str, config: &ShardConfig, joining: bool) -> Arc<Node> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let zone = config.zones.get(addr).map_or(0, |z| self.zone(z));
        Arc::new_cyclic(|weak: &std::sync::Weak<Node>| {
            let weak = weak.clone();
            // A failed shared link is a passive health signal.
            let on_failure = Arc::new(move |_reason: &str| {
                if let Some(node) = weak.upgrade() {
                    if node.health() == Health::Up {
                        node.set_health(Health::Suspect);
                    }
                }
            });
            let pool = NodePool::new(
                addr.to_string(),
                self.link_options.clone(),
                self.backend.links_for(config),
                self.backend.idle_dedicated_per_node,
                self.workers,
                on_failure,
            );
            let node = Node::new(id, addr.to_string(), pool, self.changes.clone()).in_zone(zone);
            match joining {
                true => node.joining(),
                false => node,
            }
        })
    }

    /// The number of zone `name` (see [`ZoneNumbers`]).
    pub fn zone(&self, name: &str) -> u32 {
        self.zones.number(name)
    }

    /// Starts probing every node of `shards`, and any added later.
    pub fn start_probes(&self, shards: &[Arc<ReplicaSet>], probing: Arc<Probing>) -> usize {
        let mut count = 0;
        for shard in shards {
            for node in shard.nodes.iter() {
                count += 1;
                probe::spawn(shard.clone(), node.clone(), probing.clone());
            }
        }
        let _ = self.probing.set(probing);
        count
    }

    /// Starts probing the nodes of a shard added while running.
    pub fn probe_shard(&self, shard: &Arc<ReplicaSet>) {
        if let Some(probing) = self.probing.get() {
            for node in shard.nodes.iter() {
                probe::spawn(shard.clone(), node.clone(), probing.clone());
            }
        }
    }

    /// Brings `shard`'s nodes in line with `addrs`, the nodes its section
    /// `config` names now (DNS entries looked up).
    pub fn apply(
        &self,
        shard: &Arc<ReplicaSet>,
        addrs: &[String],
        config: &ShardConfig,
    ) -> Changes {
        let mut changes = Changes::default();
        let live: Vec<&Arc<Node>> = shard.nodes.iter().filter(|n| !n.is_retired()).collect();
        let added: Vec<&String> = addrs
            .iter()
            .filter(|addr| !live.iter().any(|n| &n.addr == *addr))
            .collect();
        let removed: Vec<&Arc<Node>> = live
            .iter()
            .filter(|n| !addrs.contains(&n.addr))
            .copied()
            .collect();
        if added.is_empty() && removed.is_empty() {
            if let Ok(mut last) = self.refused.lock() {
                last.remove(&shard.name);
            }
            return changes;
        }
        if shard.is_fanout() {
            changes.refused.push(format!(
                "shard '{}' is a fan-out shard: its nodes change at the next start",
                shard.name
            ));
            return changes;
        }
        let primary = shard.primary_node().map(|p| p.id);
        for node in removed {
            if Some(node.id) == primary {
                changes.refused.push(format!(
                    "{} is shard '{}''s primary: switch over first, then remove it",
                    node.addr, shard.name
                ));
                continue;
            }
            node.set_retired(true);
            changes.removed.push(node.addr.clone());
        }
        for addr in added {
            // Back after a removal: the same node, in service again.
            if let Some(old) = shard.nodes.iter().find(|n| &n.addr == addr) {
                old.set_retired(false);
                self.probe(shard, old);
                changes.added.push(addr.clone());
                continue;
            }
            let node = self.make(addr, config, true);
            match shard.nodes.push(node.clone()) {
                Ok(_) => {
                    self.probe(shard, &node);
                    changes.added.push(addr.clone());
                }
                Err(e) => changes.refused.push(format!("{addr}: {e}")),
            }
        }
        if let Ok(mut last) = self.refused.lock() {
            if last.get(&shard.name) == Some(&changes.refused) {
                changes.refused.clear();
            } else {
                last.insert(shard.name.clone(), changes.refused.clone());
            }
        }
        changes
    }

    fn probe(&self, shard: &Arc<ReplicaSet>, node: &Arc<Node>) {
        if let Some(probing) = self.probing.get() {
            probe::spawn(shard.clone(), node.clone(), probing.clone());
        }
    }
}

/// Zones by number, as routers compare them: numbered at start from the
/// configuration (1, 2, ... in name order; 0 is none), and a zone first
/// named by a reload (a shard added with `zones`) gets the next number.
/// Numbers never change while running, so a shard added later compares
/// its nodes' zones with the instance's own (`proxy.zone`) as the shards
/// from the start do.
struct ZoneNumbers(std::sync::Mutex<BTreeMap<String, u32>>);

impl ZoneNumbers {
    fn number(&self, name: &str) -> u32 {
        let mut zones = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&number) = zones.get(name) {
            return number;
        }
        let next = zones.values().max().copied().unwrap_or(0) + 1;
        zones.insert(name.to_string(), next);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_named_later_get_new_numbers_and_old_ones_keep_theirs() {
        let start: BTreeMap<String, u32> = [("b".to_string(), 1), ("d".to_string(), 2)].into();
        let zones = ZoneNumbers(std::sync::Mutex::new(start));
        // "a" sorts first, but numbers at start stay as they were.
        assert_eq!(zones.number("a"), 3);
        assert_eq!(zones.number("b"), 1);
        assert_eq!(zones.number("d"), 2);
        assert_eq!(zones.number("a"), 3);
        assert_eq!(zones.number("c"), 4);
    }
}
