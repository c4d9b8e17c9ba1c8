//! With `[coordination]`: policies changed on one instance are changed on
//! every instance. The instance that loads, shadows, activates or rolls
//! back writes the slot's new state to etcd ([`crate::coord::policies`]);
//! the others bring their slot to that state under the same generation
//! number: a rollback or activation they can do in place, anything else
//! they load from the record (plugin bytes from etcd, checked against
//! their sha256).

use std::sync::Arc;
use std::time::Duration;

use super::OpError;
use crate::context::Context;
use crate::coord::policies::{PolicyRecord, Shared, Spec};
use crate::policy::swap::{self, Mode, Source};

impl Context {
    /// The number the next generation of `scope` gets: after this
    /// instance's own (`local`) and after any instance's.
    pub(super) fn shared_number(
        &self,
        scope: &str,
        local: impl FnOnce() -> Result<u64, OpError>,
    ) -> Result<u64, OpError> {
        let local = local()?;
        Ok(match &self.coordination {
            Some(coordination) => local.max(coordination.shared_generation(scope) + 1),
            None => local,
        })
    }

    /// Before a load: how the other instances will load the same policy
    /// (a plugin's bytes are stored in etcd now). `None` when alone.
    pub(super) async fn prepare_share(&self, source: &Source) -> Result<Option<Shared>, OpError> {
        let Some(coordination) = &self.coordination else {
            return Ok(None);
        };
        match swap::wasm_bytes(source) {
            None => Ok(Some(Shared::Named {
                label: source.label(),
            })),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(bytes)) => {
                let sha256 = coordination.put_blob(&bytes).await.map_err(|e| {
                    OpError::Unavailable(format!(
                        "cannot store the plugin for the other instances: {e}"
                    ))
                })?;
                Ok(Some(Shared::Blob {
                    name: source.label(),
                    sha256,
                }))
            }
        }
    }

    /// After `scope` changed here (generation `number`, loaded from
    /// `loaded` if it is new): its state, for the other instances.
    pub(super) async fn share(
        &self,
        scope: &str,
        number: u64,
        loaded: Option<Shared>,
    ) -> Result<(), OpError> {
        let Some(coordination) = &self.coordination else {
            return Ok(());
        };
        if let Some(shared) = loaded {
            coordination.remember_source(scope, number, shared);
        }
        let record = self.policy_record(scope)?;
        coordination
            .share_policy(scope, &record)
            .await
            .map_err(|e| {
                OpError::Unavailable(format!(
                    "applied on this instance but not shared with the others ({e}); they keep their policy until it is loaded again"
                ))
            })
    }

    /// Shares a shard's router as it is here (after an activation or a
    /// rollback, by an operator or after traps).
    pub async fn share_router(&self, shard: &str) -> Result<(), OpError> {
        let scope = crate::coord::policies::scope("router", Some(shard));
        self.share(&scope, 0, None).await
    }

    /// What `scope` holds here, as a record.
    fn policy_record(&self, scope: &str) -> Result<PolicyRecord, OpError> {
        let coordination = self
            .coordination
            .as_ref()
            .ok_or_else(|| OpError::Conflict("no [coordination]".into()))?;
        let spec = |generation: u64, config: &str| Spec {
            generation,
            source: coordination.shared_source(scope, generation),
            config: config.to_string(),
        };
        let (active, shadow) = match scope.split_once('/') {
            Some(("router", shard)) => {
                let slot = &self.shard(shard)?.router;
                let active = slot.active();
                let shadow = slot.shadow_generation();
                (
                    spec(active.number, &active.config),
                    shadow.map(|g| spec(g.number, &g.config)),
                )
            }
            Some(("quorum", shard)) => {
                let generation = self.shard(shard)?.quorum.load();
                (spec(generation.number, &generation.config), None)
            }
            _ => {
                let view = self.detector.describe();
                (spec(view.generation, &view.config), None)
            }
        };
        Ok(PolicyRecord {
            origin: coordination.instance.clone(),
            active,
            shadow,
        })
    }

    /// Brings `scope` to the state another instance recorded.
    async fn converge(&self, scope: &str, record: &PolicyRecord) -> Result<(), OpError> {
        let want = &record.active;
        match scope.split_once('/') {
            Some(("router", shard)) => self.converge_router(shard, scope, record).await,
            Some(("quorum", shard)) => {
                if self.shard(shard)?.quorum.load().number == want.generation {
                    return Ok(());
                }
                let replication = self.replication_of(shard)?;
                let source = self
                    .resolve(&want.source, || swap::quorum_source(&replication))
                    .await?;
                self.load_quorum_as(
                    shard,
                    source,
                    want.config.clone(),
                    replication,
                    want.generation,
                )
                .await?;
                self.remember(scope, want);
                Ok(())
            }
            None if scope == "detector" => {
                if self.detector.generation() == want.generation {
                    return Ok(());
                }
                let probe = self.config.probe.clone();
                let source = self
                    .resolve(&want.source, || swap::detector_source(&probe))
                    .await?;
                self.load_detector_as(source, want.config.clone(), probe, want.generation)
                    .await?;
                self.remember(scope, want);
                Ok(())
            }
            _ => Err(OpError::NotFound(format!("unknown policy slot '{scope}'"))),
        }
    }

    async fn converge_router(
        &self,
        shard: &str,
        scope: &str,
        record: &PolicyRecord,
    ) -> Result<(), OpError> {
        let found = self.shard(shard)?;
        let slot = &found.router;
        let want = &record.active;
        if slot.active().number != want.generation {
            let shadow = slot.shadow_generation().map(|g| g.number);
            if slot.previous_number() == Some(want.generation) {
                self.rollback_router_here(shard)?;
            } else if shadow == Some(want.generation) {
                self.activate_shadow_here(shard)?;
            } else {
                self.load_shared_router(shard, want, Mode::Activate).await?;
            }
            self.remember(scope, want);
        }
        let shadow = slot.shadow_generation().map(|g| g.number);
        match &record.shadow {
            None if shadow.is_some() => slot.set_shadow(None, found.topology.nodes.len()),
            Some(want) if shadow != Some(want.generation) => {
                self.load_shared_router(shard, want, Mode::Shadow).await?;
                self.remember(scope, want);
            }
            _ => {}
        }
        Ok(())
    }

    /// Loads a router generation another instance recorded, as the active
    /// one or the shadow, under its number.
    async fn load_shared_router(
        &self,
        shard: &str,
        want: &Spec,
        mode: Mode,
    ) -> Result<(), OpError> {
        let configured = || {
            Source::parse(
                &self
                    .config
                    .shards
                    .get(shard)
                    .map(|s| s.router_source())
                    .unwrap_or_default(),
            )
        };
        let source = self.resolve(&want.source, configured).await?;
        self.load_router_as(
            shard,
            source,
            want.config.clone(),
            mode,
            Some(want.generation),
        )
        .await
        .map(|_| ())
    }

    fn remember(&self, scope: &str, spec: &Spec) {
        if let Some(coordination) = &self.coordination {
            coordination.remember_source(scope, spec.generation, spec.source.clone());
        }
    }

    /// The source a shared generation is loaded from here.
    async fn resolve(
        &self,
        shared: &Shared,
        configured: impl FnOnce() -> Source,
    ) -> Result<Source, OpError> {
        match shared {
            Shared::Configured => Ok(configured()),
            Shared::Named { label } => Ok(Source::parse(label)),
            Shared::Blob { name, sha256 } => {
                let coordination = self
                    .coordination
                    .as_ref()
                    .ok_or_else(|| OpError::Conflict("no [coordination]".into()))?;
                let bytes = coordination
                    .get_blob(sha256)
                    .await
                    .map_err(OpError::Unavailable)?;
                Ok(Source::Shared {
                    bytes,
                    shown: name.clone(),
                })
            }
        }
    }
}

/// Applies the records other instances write, until shutdown. A record
/// that cannot be applied for want of etcd is tried again; one that
/// cannot be applied at all (a plugin this instance refuses) is an event.
pub async fn follow_shared_policies(ctx: Arc<Context>) {
    let Some(coordination) = ctx.coordination.clone() else {
        return;
    };
    let mut changes = coordination.policy_changes();
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let mut retry = false;
        for (scope, record, revision) in coordination.pending_policies() {
            let shard = scope.split_once('/').map_or("*", |(_, shard)| shard);
            match ctx.converge(&scope, &record).await {
                Ok(()) => {
                    coordination.mark_applied(&scope, revision);
                    ctx.events.record(
                        shard,
                        "policy-followed",
                        None,
                        0,
                        format!(
                            "{scope}: generation {} as instance {} has it",
                            record.active.generation, record.origin
                        ),
                    );
                }
                Err(OpError::Unavailable(e)) => {
                    tracing::warn!(%scope, error = %e, "cannot apply the shared policy yet");
                    retry = true;
                }
                Err(e) => {
                    coordination.mark_applied(&scope, revision);
                    ctx.events.record(
                        shard,
                        "policy-rejected",
                        None,
                        0,
                        format!(
                            "{scope} as instance {} has it cannot run here: {e}",
                            record.origin
                        ),
                    );
                }
            }
        }
        let pause = if retry {
            Duration::from_secs(1)
        } else {
            Duration::MAX
        };
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
    }
}
