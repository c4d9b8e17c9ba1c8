//! Adding a shard while running (a reload found a new `[shards.<name>]`):
//! it starts with no slots, and receives them by `rampart slots move`.

use std::sync::Arc;

use super::OpError;
use crate::config::{Mode, ShardConfig};
use crate::context::Context;
use crate::shard::{build, Added, Shard};

impl Context {
    /// Builds shard `name` from its section and puts it in service: its
    /// nodes probed, its failover controller started (on a leader). It
    /// owns no slots until some are moved to it, so no request reaches it
    /// before then.
    pub async fn add_shard(&self, name: &str, section: &ShardConfig) -> Result<String, OpError> {
        if self.shards.named(name).is_some() {
            return Err(OpError::Conflict(format!("shard '{name}' exists")));
        }
        if self.coordination.is_some() {
            return Err(OpError::Conflict(
                "adding a shard while running is not available with [coordination]: restart every instance with the new file".into(),
            ));
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
}
