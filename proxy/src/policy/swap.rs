//! Hot swap: the operations the admin API, `RAMPART POLICY` and config
//! reloads share. Loading (compile, link, instantiate, configure,
//! self-check) runs on a blocking thread; only a router that passed every
//! step is published.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::slot::{Generation, GenerationView, SlotView};

/// Every policy in force.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoliciesView {
    /// Per shard: active, previous and shadow router generations.
    pub router: Vec<(String, SlotView)>,
    /// Per shard.
    pub quorum: Vec<(String, PolicyView)>,
    /// One for all nodes.
    pub detector: PolicyView,
}
use super::{Limits, WasmRouter};
use crate::route::{PolicyView, PrimaryOnly, Read, ReadPolicy, RoundRobinReplicas};
use crate::server::Context;
use crate::topology::Shard;

/// Where a router comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `builtin:primary-only`, `builtin:round-robin`.
    Builtin(String),
    /// A `.wasm` component on disk.
    File(String),
    /// A `.wasm` component uploaded over the admin API.
    Upload(Vec<u8>),
}

impl Source {
    /// `builtin:<name>` or a file path.
    pub fn parse(text: &str) -> Source {
        match text.strip_prefix("builtin:") {
            Some(name) => Source::Builtin(name.to_string()),
            None => Source::File(text.to_string()),
        }
    }
}

/// Whether a loaded router becomes active or runs beside the active one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Activate,
    Shadow,
}

/// Reads, compiles and configures a router, then checks it against the
/// shard: a few routing calls must neither trap nor name unknown nodes.
pub fn build(
    source: &Source,
    config: &str,
    shard: &Shard,
    changes: Arc<AtomicU64>,
    number: u64,
) -> Result<Generation, String> {
    let (policy, label, bytes): (Box<dyn ReadPolicy>, String, Option<Vec<u8>>) = match source {
        Source::Builtin(name) => {
            let policy: Box<dyn ReadPolicy> = match name.as_str() {
                "primary-only" => Box::new(PrimaryOnly),
                "round-robin" => Box::new(RoundRobinReplicas::default()),
                other => {
                    return Err(format!(
                        "unknown built-in router '{other}' (expected primary-only or round-robin)"
                    ))
                }
            };
            (policy, format!("builtin:{name}"), None)
        }
        Source::File(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
            let router = WasmRouter::load(path, &bytes, config, Limits::default(), changes)
                .map_err(|e| e.to_string())?;
            (Box::new(router), path.clone(), Some(bytes))
        }
        Source::Upload(bytes) => {
            let router = WasmRouter::load("upload", bytes, config, Limits::default(), changes)
                .map_err(|e| e.to_string())?;
            (Box::new(router), "upload".to_string(), Some(bytes.clone()))
        }
    };
    for client in 0..32 {
        let key = format!("rampart:self-check:{client}");
        let _ = policy.pick(
            shard,
            &Read {
                client_id: client,
                key: key.as_bytes(),
            },
        );
    }
    let checked = policy.describe();
    if checked.traps > 0 || checked.fallbacks > 0 {
        return Err(format!(
            "{label}: self-check: {} traps and {} fallbacks in 32 routing calls",
            checked.traps, checked.fallbacks
        ));
    }
    Ok(Generation::new(
        number,
        policy,
        label,
        bytes.as_deref(),
        config.to_string(),
    ))
}

impl Context {
    fn shard_index(&self, shard: &str) -> Result<usize, String> {
        self.topology
            .shards
            .iter()
            .position(|s| s.name == shard)
            .ok_or_else(|| format!("no shard named '{shard}'"))
    }

    /// Loads a router for a shard and makes it active or its shadow.
    /// Commands keep routing on the old generation until the new one is
    /// published.
    pub async fn load_router(
        &self,
        shard: &str,
        source: Source,
        config: String,
        mode: Mode,
    ) -> Result<GenerationView, String> {
        let index = self.shard_index(shard)?;
        let slot = &self.routers[index];
        let number = slot.next_number();
        let shard_ref = self.topology.shards[index].clone();
        let changes = self.topology_changes.clone();
        let built = tokio::task::spawn_blocking(move || {
            build(&source, &config, &shard_ref, changes, number)
        })
        .await
        .map_err(|e| format!("loading failed: {e}"))?;
        let generation = match built {
            Ok(generation) => generation,
            Err(e) => {
                self.events
                    .record(shard, "policy-rejected", None, 0, e.clone());
                return Err(e);
            }
        };
        let view = generation.view();
        let nodes = self.topology.shards[index].nodes.len();
        match mode {
            Mode::Activate => {
                slot.publish(generation);
                self.events.record(
                    shard,
                    "policy-activated",
                    None,
                    self.topology.shards[index].epoch(),
                    format!("router generation {number} from {}", view.source),
                );
            }
            Mode::Shadow => {
                slot.set_shadow(Some(generation), nodes);
                self.events.record(
                    shard,
                    "policy-shadowed",
                    None,
                    self.topology.shards[index].epoch(),
                    format!(
                        "router generation {number} from {} runs in shadow",
                        view.source
                    ),
                );
            }
        }
        Ok(view)
    }

    /// Makes the shadow router active.
    pub fn activate_shadow(&self, shard: &str) -> Result<u64, String> {
        let index = self.shard_index(shard)?;
        let number = self.routers[index]
            .activate_shadow()
            .ok_or("no router runs in shadow")?;
        self.events.record(
            shard,
            "policy-activated",
            None,
            0,
            format!("shadow router generation {number} activated"),
        );
        Ok(number)
    }

    /// Goes back to the previous router.
    pub fn rollback_router(&self, shard: &str) -> Result<u64, String> {
        let index = self.shard_index(shard)?;
        let number = self.routers[index]
            .rollback()
            .ok_or("no previous router generation to roll back to")?;
        self.events.record(
            shard,
            "policy-rolled-back",
            None,
            0,
            format!("router generation {number} active again"),
        );
        Ok(number)
    }

    /// Every shard's routers.
    pub fn routers_view(&self) -> Vec<(String, SlotView)> {
        self.topology
            .shards
            .iter()
            .zip(&self.routers)
            .map(|(shard, slot)| (shard.name.clone(), slot.view(shard)))
            .collect()
    }

    /// Every policy in force, for `GET /v1/policies` and `RAMPART POLICY LIST`.
    pub fn policies(&self) -> PoliciesView {
        PoliciesView {
            router: self.routers_view(),
            quorum: self
                .topology
                .shards
                .iter()
                .zip(&self.quorum_policies)
                .map(|(shard, q)| (shard.name.clone(), q.describe()))
                .collect(),
            detector: match &self.detector {
                Some(plugin) => plugin.describe(),
                None => PolicyView::native(self.config.probe.detector.name()),
            },
        }
    }
}
