//! Building one shard from its section of the configuration: its replica
//! set (nodes looked up), its router and its quorum policy. Used for every
//! shard at start, and for a shard a reload adds.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::QuorumGeneration;
use crate::config::{Config, FailoverRole, Mode, ShardConfig};
use crate::failover::members::Members;
use crate::net::dns::Resolver;
use crate::policy::slot::RouterSlot;
use crate::policy::swap::{self, Source};
use crate::topology::ReplicaSet;

/// A part of a shard that could not be built: the field and why.
#[derive(Debug, thiserror::Error)]
#[error("shards.{shard}.{field}: {reason}")]
pub struct BuildError {
    pub shard: String,
    pub field: &'static str,
    pub reason: String,
}

impl BuildError {
    fn new(shard: &str, field: &'static str, reason: impl ToString) -> BuildError {
        BuildError {
            shard: shard.to_string(),
            field,
            reason: reason.to_string(),
        }
    }
}

/// The shard's nodes (DNS entries looked up now), its read settings and
/// the slots it owns (`slots`, as text).
pub async fn replica_set(
    config: &Config,
    name: &str,
    section: &ShardConfig,
    members: &Members,
    resolver: &Resolver,
    slots: String,
) -> Result<Arc<ReplicaSet>, BuildError> {
    let addrs = crate::net::dns::expand(resolver, &section.nodes)
        .await
        .map_err(|e| BuildError::new(name, "nodes", e))?;
    let nodes = addrs
        .iter()
        .map(|addr| members.make(addr, section, false))
        .collect();
    // Numbered as at start, whatever zones a reloaded file adds.
    let zone = config.proxy.zone.as_ref().map_or(0, |z| members.zone(z));
    Ok(Arc::new(
        ReplicaSet::new(
            name.to_string(),
            nodes,
            section.read_from,
            // With [coordination] every instance routes by the records in
            // etcd instead.
            config.failover.role == FailoverRole::Follower && config.coordination.is_none(),
            section.replication.max_read_lag_ms,
        )
        .with_client_zone(zone)
        .with_fanout(section.replication.mode == Mode::Fanout)
        .with_reads(
            section.read_consistency,
            Duration::from_millis(config.probe.interval_ms),
        )
        .with_slots(slots),
    ))
}

/// The router its section names, as generation 1.
pub fn router(
    section: &ShardConfig,
    set: &ReplicaSet,
    changes: &Arc<AtomicU64>,
    limits: crate::policy::Limits,
) -> Result<RouterSlot, BuildError> {
    let source = Source::parse(&section.router_source());
    let generation = swap::build(
        &source,
        &section.router_config,
        set,
        changes.clone(),
        1,
        limits,
    )
    .map_err(|e| BuildError::new(&set.name, "router", e))?;
    tracing::info!(shard = %set.name, router = %generation.source, "router loaded");
    Ok(RouterSlot::from_generation(generation))
}

/// The quorum policy its section names, its requirement put in force.
pub fn quorum(
    section: &ShardConfig,
    set: &ReplicaSet,
    limits: crate::policy::Limits,
) -> Result<ArcSwap<QuorumGeneration>, BuildError> {
    let replication = &section.replication;
    let source = swap::quorum_source(replication);
    let built = swap::build_quorum(
        &source,
        &replication.quorum_config,
        replication,
        set.replica_count(),
        limits,
    )
    .map_err(|e| BuildError::new(&set.name, "replication", e))?;
    let generation = built.generation(1, source.label());
    set.durability
        .set(generation.policy.requirement(set.replica_count()));
    Ok(ArcSwap::from_pointee(generation))
}
