//! Policy operations: load a router, quorum or detector (as the active
//! one, or a router as a shadow), activate a shadow, roll back. Loading
//! (compile, link, instantiate, configure, self-check) runs on a blocking
//! thread; only a policy that passed every step is published.

use std::sync::Arc;
use std::time::Duration;

use super::OpError;
use crate::context::Context;
use crate::coord::policies::scope;
use crate::policy::slot::{GenerationView, SlotView};
use crate::policy::swap::{build, build_detector, build_quorum, Kind, Mode, Source};

/// Every policy in force.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoliciesView {
    /// Per shard: active, previous and shadow router generations.
    pub router: Vec<(String, SlotView)>,
    /// Per shard.
    pub quorum: Vec<(String, GenerationView)>,
    /// One for all nodes.
    pub detector: GenerationView,
}

impl Context {
    /// Loads a router for a shard and makes it active or its shadow.
    /// Commands keep routing on the old generation until the new one is
    /// published. With `[coordination]` the other instances load it too.
    pub async fn load_router(
        &self,
        shard: &str,
        source: Source,
        config: String,
        mode: Mode,
    ) -> Result<GenerationView, OpError> {
        let scope = scope("router", Some(shard));
        let shared = self.prepare_share(&source).await?;
        let view = self
            .load_router_as(shard, source, config, mode, None)
            .await?;
        self.share(&scope, view.generation, shared).await?;
        Ok(view)
    }

    /// [`load_router`](Self::load_router) on this instance only, as
    /// generation `number` (or the next one, past any instance's).
    pub(super) async fn load_router_as(
        &self,
        shard: &str,
        source: Source,
        config: String,
        mode: Mode,
        number: Option<u64>,
    ) -> Result<GenerationView, OpError> {
        let found = self.shard(shard)?;
        let slot = &found.router;
        let shard_ref = found.topology.clone();
        let changes = self.topology_changes.clone();
        let limits = crate::policy::Limits::of(&self.config.plugins);
        // Numbered once accepted: a refused load uses no generation number.
        let built = tokio::task::spawn_blocking(move || {
            build(&source, &config, &shard_ref, changes, 0, limits)
        })
        .await
        .map_err(|e| OpError::Unavailable(format!("loading failed: {e}")))?;
        let mut generation = self.accepted(shard, built)?;
        let number = match number {
            Some(number) => number,
            None => self.shared_number(&scope("router", Some(shard)), || Ok(slot.next_number()))?,
        };
        slot.skip_to(number + 1);
        generation.number = number;
        let view = generation.view();
        let nodes = found.topology.nodes.len();
        match mode {
            Mode::Activate => {
                slot.publish(generation);
                self.events.record(
                    shard,
                    "policy-activated",
                    None,
                    found.topology.epoch(),
                    format!("router generation {number} from {}", view.source),
                );
            }
            Mode::Shadow => {
                slot.set_shadow(Some(generation), nodes);
                self.events.record(
                    shard,
                    "policy-shadowed",
                    None,
                    found.topology.epoch(),
                    format!(
                        "router generation {number} from {} runs in shadow",
                        view.source
                    ),
                );
            }
        }
        Ok(view)
    }

    /// Makes the shadow router active (on every instance).
    pub async fn activate_shadow(&self, shard: &str) -> Result<u64, OpError> {
        let number = self.activate_shadow_here(shard)?;
        self.share_router(shard).await?;
        Ok(number)
    }

    pub(super) fn activate_shadow_here(&self, shard: &str) -> Result<u64, OpError> {
        let number = self
            .shard(shard)?
            .router
            .activate_shadow()
            .ok_or_else(|| OpError::Conflict("no router runs in shadow".into()))?;
        self.events.record(
            shard,
            "policy-activated",
            None,
            0,
            format!("shadow router generation {number} activated"),
        );
        Ok(number)
    }

    /// Goes back to the previous router (on every instance).
    pub async fn rollback_router(&self, shard: &str) -> Result<u64, OpError> {
        let number = self.rollback_router_here(shard)?;
        self.share_router(shard).await?;
        Ok(number)
    }

    pub(super) fn rollback_router_here(&self, shard: &str) -> Result<u64, OpError> {
        let number = self.shard(shard)?.router.rollback().ok_or_else(|| {
            OpError::Conflict("no previous router generation to roll back to".into())
        })?;
        self.events.record(
            shard,
            "policy-rolled-back",
            None,
            0,
            format!("router generation {number} active again"),
        );
        Ok(number)
    }

    /// Replaces a shard's quorum policy: `builtin:<none|one|majority|all>`
    /// (timeout and shortfall from the configuration) or a plugin (with the
    /// configured built-in as its fallback). Checked off the hot path; the
    /// new requirement applies to every write not yet sent, and the next
    /// election is the new policy's.
    pub async fn load_quorum(
        &self,
        shard: &str,
        source: Source,
        config: String,
    ) -> Result<GenerationView, OpError> {
        let replication = self.replication_of(shard)?;
        self.load_quorum_with(shard, source, config, replication)
            .await
    }

    /// [`load_quorum`](Self::load_quorum) with the built-in's settings
    /// from `replication` (a reloaded configuration's).
    pub async fn load_quorum_with(
        &self,
        shard: &str,
        source: Source,
        config: String,
        replication: crate::config::ReplicationConfig,
    ) -> Result<GenerationView, OpError> {
        let scope = scope("quorum", Some(shard));
        let number =
            self.shared_number(&scope, || Ok(self.shard(shard)?.quorum.load().number + 1))?;
        let shared = self.prepare_share(&source).await?;
        let view = self
            .load_quorum_as(shard, source, config, replication, number)
            .await?;
        self.share(&scope, number, shared).await?;
        Ok(view)
    }

    pub(super) async fn load_quorum_as(
        &self,
        shard: &str,
        source: Source,
        config: String,
        replication: crate::config::ReplicationConfig,
        number: u64,
    ) -> Result<GenerationView, OpError> {
        let found = self.shard(shard)?;
        let replicas = found.topology.replica_count();
        let label = source.label();
        let limits = crate::policy::Limits::of(&self.config.plugins);
        let built = tokio::task::spawn_blocking(move || {
            build_quorum(&source, &config, &replication, replicas, limits)
        })
        .await
        .map_err(|e| OpError::Unavailable(format!("loading failed: {e}")))?;
        let generation = self
            .accepted(shard, built)?
            .generation(number, label.clone());
        let view = generation.view_with(generation.policy.describe());
        found
            .topology
            .durability
            .set(generation.policy.requirement(replicas));
        found.quorum.store(std::sync::Arc::new(generation));
        self.events.record(
            shard,
            "policy-activated",
            None,
            found.topology.epoch(),
            format!("quorum {} from {label}", view.policy.name),
        );
        Ok(view)
    }

    /// Replaces the detector of every node: `builtin:<fixed-timeout|
    /// phi-accrual>` (settings from the configuration) or a plugin. Each
    /// probe switches at its next round, with a fresh history.
    pub async fn load_detector(
        &self,
        source: Source,
        config: String,
    ) -> Result<GenerationView, OpError> {
        self.load_detector_with(source, config, self.config.probe.clone())
            .await
    }

    /// [`load_detector`](Self::load_detector) with the built-in's settings
    /// from `probe` (a reloaded configuration's).
    pub async fn load_detector_with(
        &self,
        source: Source,
        config: String,
        probe: crate::config::ProbeConfig,
    ) -> Result<GenerationView, OpError> {
        let scope = scope("detector", None);
        let number = self.shared_number(&scope, || Ok(self.detector.generation() + 1))?;
        let shared = self.prepare_share(&source).await?;
        let view = self.load_detector_as(source, config, probe, number).await?;
        self.share(&scope, number, shared).await?;
        Ok(view)
    }

    pub(super) async fn load_detector_as(
        &self,
        source: Source,
        config: String,
        probe: crate::config::ProbeConfig,
        number: u64,
    ) -> Result<GenerationView, OpError> {
        let label = source.label();
        let limits = crate::policy::Limits::of(&self.config.plugins);
        let built =
            tokio::task::spawn_blocking(move || build_detector(&source, &config, &probe, limits))
                .await
                .map_err(|e| OpError::Unavailable(format!("loading failed: {e}")))?;
        let generation = self.accepted("*", built)?.generation(number, label.clone());
        self.detector.replace(generation);
        let view = self.detector.describe();
        self.events.record(
            "*",
            "policy-activated",
            None,
            0,
            format!("detector {} from {label}", view.policy.name),
        );
        Ok(view)
    }

    /// Loads a policy of any kind, as the admin API and `RAMPART POLICY`
    /// ask; what is now in force, as JSON. Only routers have shadows (a
    /// quorum or detector decides nothing per request to compare).
    pub async fn load_policy(
        &self,
        kind: Kind,
        shard: &str,
        source: Source,
        config: String,
        mode: Mode,
    ) -> Result<serde_json::Value, OpError> {
        fn json<T: serde::Serialize>(
            view: Result<T, OpError>,
        ) -> Result<serde_json::Value, OpError> {
            view.and_then(|v| {
                serde_json::to_value(v).map_err(|e| OpError::Unavailable(e.to_string()))
            })
        }
        match (kind, mode) {
            (Kind::Router, _) => json(self.load_router(shard, source, config, mode).await),
            (Kind::Quorum, Mode::Activate) => json(self.load_quorum(shard, source, config).await),
            (Kind::Detector, Mode::Activate) => json(self.load_detector(source, config).await),
            (_, Mode::Shadow) => Err(OpError::Conflict(
                format!("only routers run in shadow; a {kind:?} policy is loaded directly")
                    .to_lowercase(),
            )),
        }
    }

    /// The shard's configured `replication` settings.
    pub(super) fn replication_of(
        &self,
        shard: &str,
    ) -> Result<crate::config::ReplicationConfig, OpError> {
        self.config
            .shards
            .get(shard)
            .map(|s| s.replication.clone())
            .ok_or_else(|| OpError::NotFound(format!("no shard named '{shard}'")))
    }

    /// A policy that failed to load is an event, and the error.
    fn accepted<T>(
        &self,
        shard: &str,
        built: Result<T, crate::policy::error::PolicyError>,
    ) -> Result<T, OpError> {
        built.map_err(|e| {
            self.events
                .record(shard, "policy-rejected", None, 0, e.to_string());
            e.into()
        })
    }

    /// Every shard's routers.
    pub fn routers_view(&self) -> Vec<(String, SlotView)> {
        self.shards
            .all()
            .iter()
            .map(|shard| (shard.name().to_string(), shard.router.view(&shard.topology)))
            .collect()
    }

    /// Every policy in force, for `GET /v1/policies` and `RAMPART POLICY LIST`.
    pub fn policies(&self) -> PoliciesView {
        PoliciesView {
            router: self.routers_view(),
            quorum: self
                .shards
                .all()
                .iter()
                .map(|shard| {
                    let generation = shard.quorum.load();
                    let view = generation.view_with(generation.policy.describe());
                    (shard.name().to_string(), view)
                })
                .collect(),
            detector: self.detector.describe(),
        }
    }
}

/// A router generation that traps again and again soon after it was
/// loaded is replaced by the one before it.
pub async fn roll_back_failing_routers(ctx: Arc<Context>) {
    const PROBATION: Duration = Duration::from_secs(60);
    const TRAPS: u64 = 3;
    let mut shutdown = ctx.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return,
        }
        for shard in ctx.shards.all().iter() {
            let (slot, shard) = (&shard.router, &shard.topology);
            if let Some((from, to)) = slot.roll_back_if_failing(PROBATION, TRAPS) {
                ctx.events.record(
                    &shard.name,
                    "policy-rolled-back",
                    None,
                    shard.epoch(),
                    format!("router generation {from} trapped {TRAPS} times within {} s of loading; generation {to} is active again", PROBATION.as_secs()),
                );
                // Every instance goes back, not only the one that saw
                // the traps.
                if let Err(e) = ctx.share_router(&shard.name).await {
                    tracing::warn!(shard = %shard.name, error = %e, "rollback not shared");
                }
            }
        }
    }
}
