//! Adding and removing shards while running (a reload found a new
//! `[shards.<name>]`, or one gone): a shard added starts with no slots and
//! receives them by `rampart slots move`; a shard removed must own none.

use std::sync::Arc;

use super::OpError;
use crate::config::{Mode, ShardConfig};
use crate::context::Context;
use crate::shard::slots::ranges_text;
use crate::shard::{build, Added, Shard};

impl Context {
    /// Builds shard `name` from its section and puts it in service: its
    /// nodes probed, its failover controller started (on a leader). It
    /// owns no slots until some are moved to it, so no request reaches it
    /// before then.
    pub async fn add_shard(&self, name: &str, section: &ShardConfig) -> Result<String, OpError> {
        if let Some((_, shard)) = self.shards.named(name) {
            return Err(OpError::Conflict(match shard.topology.is_retired() {
                true => format!(
                    "shard '{name}' was removed while running; adding it back needs a restart"
                ),
                false => format!("shard '{name}' exists"),
            }));
        }
        if section.replication.mode == Mode::Fanout {
            return Err(OpError::Conflict(
                "a fan-out shard is added by a restart (its writer starts with Rampart)".into(),
            ));
        }
        if !section
            .slots
            .as_deref()
            .unwrap_or_default()
            .trim()
            .is_empty()
        {
            return Err(OpError::Rejected(format!(
                "a shard added while running starts with no slots (its keys are still on the shards that own them): set slots = \"\" for '{name}' and move slots to it with `rampart slots move`"
            )));
        }
        let limits = crate::policy::Limits::of(&self.config.plugins);
        let rejected = |e: build::BuildError| OpError::Rejected(e.to_string());
        let set = build::replica_set(
            &self.config,
            name,
            section,
            &self.members,
            &self.resolver,
            String::new(),
        )
        .await
        .map_err(rejected)?;
        let router =
            build::router(section, &set, &self.topology_changes, limits).map_err(rejected)?;
        let quorum = build::quorum(section, &set, limits).map_err(rejected)?;
        let (controller, requests) = tokio::sync::mpsc::channel(4);
        let shard = Arc::new(Shard {
            topology: set.clone(),
            router,
            quorum,
            fanout: None,
            controller,
        });
        // The replica set first: views and probes find it before any map
        // could name the shard.
        self.topology.push(set.clone());
        if let Some(coordination) = &self.coordination {
            coordination.add_shard(set.clone());
        }
        let index = self.shards.push(shard.clone());
        let nodes = set.nodes.iter().count();
        self.added_shards
            .send(Added {
                shard,
                section: section.clone(),
                requests,
            })
            .map_err(|_| OpError::Unavailable("Rampart is shutting down".into()))?;
        let detail =
            format!("shard '{name}' added with {nodes} nodes and no slots (shard {index})");
        self.events
            .record(name, "shard-added", None, 0, detail.clone());
        Ok(detail)
    }

    /// Takes shard `name` out of service: nothing is sent to it any more
    /// (commands for every shard leave it out, keyless commands go to the
    /// first shard still serving), its nodes are no longer probed and its
    /// failover controller ends. Clients piped to its nodes (subscribed,
    /// tracking, MONITOR) see it and disconnect (`client/pipe.rs`), so that
    /// they subscribe again where `PUBLISH` now goes. It must own no slots
    /// and be in no move.
    pub async fn remove_shard(&self, name: &str) -> Result<String, OpError> {
        let _changing = self.resharder.changing.lock().await;
        let (index, shard) = self.serving_named(name)?;
        if self
            .resharder
            .shared
            .as_ref()
            .is_some_and(|shared| !shared.is_ready())
        {
            return Err(OpError::Unavailable(
                crate::reshard::start::StartError::NotRead.to_string(),
            ));
        }
        if shard.fanout.is_some() {
            return Err(OpError::Conflict(
                "a fan-out shard is removed by a restart (its writer runs with Rampart)".into(),
            ));
        }
        if self.shards.serving() == [index] {
            return Err(OpError::Conflict(format!(
                "shard '{name}' is the only shard in service"
            )));
        }
        let map = self.slots.load();
        let owned = map.ranges_of(index);
        if !owned.is_empty() {
            return Err(OpError::Conflict(format!(
                "shard '{name}' owns slots {}: move them to another shard first (`rampart slots move {} --to <shard>`)",
                ranges_text(&owned),
                ranges_text(&owned)
            )));
        }
        if let Some(moving) = map.moving().filter(|m| m.from == index || m.to == index) {
            return Err(OpError::Conflict(format!(
                "slots {} are moving {} shard '{name}'; wait for the move to finish",
                ranges_text(&moving.ranges),
                if moving.to == index { "to" } else { "from" }
            )));
        }
        drop(map);
        shard.topology.retire();
        self.topology.remove(&shard.topology);
        let detail = format!(
            "shard '{name}' removed: nothing is sent to it any more, and clients piped to its nodes are disconnected; its nodes may be shut down"
        );
        self.events
            .record(name, "shard-removed", None, 0, detail.clone());
        Ok(detail)
    }
}
