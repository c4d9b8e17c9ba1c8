//! Hot swap: the operations the admin API, `RAMPART POLICY` and config
//! reloads share. Loading (compile, link, instantiate, configure,
//! self-check) runs on a blocking thread; only a router that passed every
//! step is published.

use super::error::PolicyError;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::slot::Generation;

use super::{builtin, Limits, Spec, WasmDetector, WasmQuorum, WasmRouter};
use crate::config::DetectorKind;
use crate::failover::detect::{DetectorChoice, DetectorMaker};
use crate::replicate::quorum::{Builtin, Candidate, Quorum, QuorumPolicy};
use crate::route::{PrimaryOnly, Read, ReadPolicy, RoundRobinReplicas};
use crate::topology::ReplicaSet;

/// Where a policy comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `builtin:<name>`: a policy from `plugins/`, embedded in the binary
    /// and run as Wasm like any other plugin.
    Builtin(String),
    /// `native:<name>`: the same algorithm compiled into Rampart, for
    /// comparison (`tests/bench/routing.sh`) and as a last resort.
    Native(String),
    /// A `.wasm` component on disk: a path from the configuration file,
    /// or a name in `plugins.dir` given at runtime ([`Source::named`]).
    /// `shown` is how views and errors name it.
    File { path: PathBuf, shown: String },
    /// A `.wasm` component uploaded over the admin API, and the name it
    /// was given (`?name=`; the CLI sends the file's name).
    Upload {
        bytes: Vec<u8>,
        name: Option<String>,
    },
    /// A component another Rampart instance loaded, read from the
    /// coordination store; `shown` is the name it has there.
    Shared { bytes: Vec<u8>, shown: String },
}

impl Source {
    /// Where it came from, for events and views.
    pub fn label(&self) -> String {
        match self {
            Source::Builtin(name) => format!("builtin:{name}"),
            Source::Native(name) => format!("native:{name}"),
            Source::File { shown, .. } | Source::Shared { shown, .. } => shown.clone(),
            Source::Upload { bytes, name } => {
                let sha = super::slot::sha256_hex(bytes);
                format!("{}@{}", name.as_deref().unwrap_or("upload"), &sha[..12])
            }
        }
    }

    /// `builtin:<name>`, `native:<name>` or a file path, as written in
    /// the configuration file (the operator's, so any path is allowed).
    pub fn parse(text: &str) -> Source {
        if let Some(name) = text.strip_prefix("builtin:") {
            Source::Builtin(name.to_string())
        } else if let Some(name) = text.strip_prefix("native:") {
            Source::Native(name.to_string())
        } else {
            Source::path(text)
        }
    }

    /// A plugin file at a path from the configuration.
    pub fn path(text: &str) -> Source {
        Source::File {
            path: PathBuf::from(text),
            shown: text.to_string(),
        }
    }

    /// `builtin:<name>`, `native:<name>` or the name of a file in
    /// `plugins.dir`, as a client asks for it at runtime: never a path.
    pub fn named(text: &str, dir: Option<&str>) -> Result<Source, PolicyError> {
        match Source::parse(text) {
            Source::File { .. } => Ok(Source::File {
                path: super::file::resolve(dir, text)?,
                shown: text.to_string(),
            }),
            other => Ok(other),
        }
    }
}

/// The policies that can be loaded at runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Router,
    Quorum,
    Detector,
}

impl Kind {
    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "router" => Some(Kind::Router),
            "quorum" => Some(Kind::Quorum),
            "detector" => Some(Kind::Detector),
            _ => None,
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
    shard: &ReplicaSet,
    changes: Arc<AtomicU64>,
    number: u64,
    limits: Limits,
) -> Result<Generation, PolicyError> {
    let (policy, label, bytes): (Box<dyn ReadPolicy>, String, Option<Vec<u8>>) = match source {
        Source::Native(name) => {
            let policy: Box<dyn ReadPolicy> = match name.as_str() {
                "primary-only" => Box::new(PrimaryOnly),
                "round-robin" => Box::new(RoundRobinReplicas),
                other => {
                    return Err(PolicyError::Refused(format!(
                        "unknown native router '{other}' (expected primary-only or round-robin)"
                    )))
                }
            };
            (policy, source.label(), None)
        }
        _ => {
            let (name, bytes) = plugin_bytes(source)?;
            let router = WasmRouter::load(&name, &bytes, config, limits, changes)
                .map_err(|e| PolicyError::Broken(e.to_string()))?;
            (Box::new(router), source.label(), Some(bytes.into_owned()))
        }
    };
    for client in 0..32 {
        let key = format!("rampart:self-check:{client}");
        let _ = policy.pick(
            shard,
            &Read {
                client_id: client,
                key: key.as_bytes(),
                burst: 0,
            },
        );
    }
    let checked = policy.describe();
    if checked.traps > 0 || checked.fallbacks > 0 {
        return Err(PolicyError::Broken(format!(
            "{label}: self-check: {} traps and {} fallbacks in 32 routing calls; the last: {}",
            checked.traps,
            checked.fallbacks,
            checked.last_error.as_deref().unwrap_or("-")
        )));
    }
    Ok(Generation::new(
        number,
        policy,
        label,
        bytes.as_deref(),
        config.to_string(),
    ))
}

/// The bytes of a plugin source, and the name to report it by (a
/// built-in router's is its own name).
/// The component's bytes, for a plugin (not for `builtin:`/`native:`).
pub fn wasm_bytes(source: &Source) -> Option<Result<Vec<u8>, PolicyError>> {
    match source {
        Source::Builtin(_) | Source::Native(_) => None,
        _ => Some(plugin_bytes(source).map(|(_, bytes)| bytes.into_owned())),
    }
}

fn plugin_bytes(source: &Source) -> Result<(String, std::borrow::Cow<'static, [u8]>), PolicyError> {
    match source {
        Source::File { path, shown } => {
            super::file::read(path, shown).map(|bytes| (shown.clone(), bytes.into()))
        }
        Source::Upload { bytes, .. } | Source::Shared { bytes, .. } => {
            super::file::check_magic(bytes, "the upload")?;
            Ok((source.label(), bytes.clone().into()))
        }
        Source::Builtin(name) => builtin::router(name)
            .map(|bytes| (name.clone(), bytes.into()))
            .ok_or_else(|| {
                PolicyError::Refused(format!(
                    "unknown built-in router '{name}' (expected one of {})",
                    builtin::router_names()
                ))
            }),
        Source::Native(name) => Err(PolicyError::Refused(format!(
            "native:{name} is not a plugin"
        ))),
    }
}

/// The built-in quorum (`quorum` if given, else the configured one) as the
/// embedded Wasm plugin, with the native equivalent as its fallback.
pub fn builtin_quorum(
    replication: &crate::config::ReplicationConfig,
    quorum: Option<Quorum>,
    limits: Limits,
) -> Result<Built<Box<dyn QuorumPolicy>>, PolicyError> {
    let native = Builtin::configured(replication, quorum);
    let settings = format!(
        "quorum={} timeout_ms={} on_shortfall={}",
        native.quorum.name(),
        native.timeout_ms,
        if native.fail_on_shortfall {
            "fail"
        } else {
            "accept"
        }
    );
    let spec = Spec {
        name: "builtin:quorum-standard",
        bytes: builtin::QUORUM,
        config: &settings,
        limits,
    };
    let plugin =
        WasmQuorum::load(spec, Box::new(native)).map_err(|e| PolicyError::Broken(e.to_string()))?;
    Ok(Built {
        policy: Box::new(plugin),
        wasm: Some(builtin::QUORUM.into()),
        config: settings,
    })
}

/// A policy just built, with the component it came from (none for native
/// code) and the text its `configure` was given: what its generation shows.
pub struct Built<P> {
    pub policy: P,
    pub wasm: Option<std::borrow::Cow<'static, [u8]>>,
    pub config: String,
}

impl<P> Built<P> {
    pub fn native(policy: P) -> Built<P> {
        Built {
            policy,
            wasm: None,
            config: String::new(),
        }
    }

    pub fn generation(self, number: u64, source: String) -> Generation<P> {
        Generation::new(
            number,
            self.policy,
            source,
            self.wasm.as_deref(),
            self.config,
        )
    }
}

/// The detector `probe.detector` names, as the embedded Wasm plugin with
/// the probe settings as its configuration.
pub fn builtin_detector(
    probe: &crate::config::ProbeConfig,
    limits: Limits,
) -> Result<Built<DetectorChoice>, PolicyError> {
    let name = probe.detector.name();
    let settings = match probe.detector {
        DetectorKind::FixedTimeout => format!("down_after_ms={}", probe.down_after_ms),
        DetectorKind::PhiAccrual => format!(
            "threshold={} window={} min_std_ms={} first_gap_ms={}",
            probe.phi_threshold, probe.phi_window, probe.phi_min_std_ms, probe.interval_ms
        ),
    };
    let bytes = builtin::detector(name)
        .ok_or_else(|| PolicyError::Refused(format!("no built-in detector '{name}'")))?;
    let plugin = WasmDetector::load(Spec {
        name: &format!("builtin:{name}"),
        bytes,
        config: &settings,
        limits,
    })
    .map_err(|e| PolicyError::Broken(e.to_string()))?;
    Ok(Built {
        policy: DetectorChoice::Plugin(std::sync::Arc::new(plugin)),
        wasm: Some(bytes.into()),
        config: settings,
    })
}

/// Where a shard's quorum policy comes from by its configuration: the
/// plugin if one is set, else the built-in for `quorum`.
pub fn quorum_source(replication: &crate::config::ReplicationConfig) -> Source {
    match &replication.quorum_plugin {
        Some(path) => Source::path(path),
        None => Source::Builtin(replication.quorum.name().to_string()),
    }
}

/// Where the detector comes from by the configuration.
pub fn detector_source(probe: &crate::config::ProbeConfig) -> Source {
    match &probe.detector_plugin {
        Some(path) => Source::path(path),
        None => Source::Builtin(probe.detector.name().to_string()),
    }
}

/// A quorum policy from `source`, checked: its requirement and an election
/// must run without a trap.
pub fn build_quorum(
    source: &Source,
    config: &str,
    replication: &crate::config::ReplicationConfig,
    replicas: u32,
    limits: Limits,
) -> Result<Built<Box<dyn QuorumPolicy>>, PolicyError> {
    let built: Built<Box<dyn QuorumPolicy>> = match source {
        Source::Builtin(name) | Source::Native(name) => {
            let quorum = Quorum::parse(name).ok_or_else(|| {
                PolicyError::Refused(format!(
                    "unknown built-in quorum '{name}' (expected none, one, majority or all)"
                ))
            })?;
            match source {
                Source::Native(_) => {
                    Built::native(Box::new(Builtin::configured(replication, Some(quorum))))
                }
                _ => builtin_quorum(replication, Some(quorum), limits)?,
            }
        }
        _ => {
            let (name, bytes) = plugin_bytes(source)?;
            let fallback = Box::new(Builtin::configured(replication, None));
            let spec = Spec {
                name: &name,
                bytes: &bytes,
                config,
                limits,
            };
            let plugin =
                WasmQuorum::load(spec, fallback).map_err(|e| PolicyError::Broken(e.to_string()))?;
            Built {
                policy: Box::new(plugin),
                wasm: Some(bytes),
                config: config.to_string(),
            }
        }
    };
    let policy = &built.policy;
    let _ = policy.requirement(replicas);
    let candidates: Vec<Candidate> = (1..=replicas.max(1))
        .map(|id| Candidate {
            id,
            offset: u64::from(id) * 100,
            priority: 100,
        })
        .collect();
    let _ = policy.elect(&candidates);
    let checked = policy.describe();
    if checked.fallbacks > 0 {
        return Err(PolicyError::Broken(format!(
            "{}: self-check: {} traps and {} unusable answers in a requirement and an election; the last: {}",
            source.label(),
            checked.traps,
            checked.fallbacks - checked.traps,
            checked.last_error.as_deref().unwrap_or("-")
        )));
    }
    built.policy.forget_self_check();
    Ok(built)
}

/// A detector from `source`, checked: a few probe results must be judged
/// without a trap.
pub fn build_detector(
    source: &Source,
    config: &str,
    probe: &crate::config::ProbeConfig,
    limits: Limits,
) -> Result<Built<DetectorChoice>, PolicyError> {
    if let Source::Builtin(name) | Source::Native(name) = source {
        let kind = match name.as_str() {
            "fixed-timeout" => DetectorKind::FixedTimeout,
            "phi-accrual" => DetectorKind::PhiAccrual,
            other => {
                return Err(PolicyError::Refused(format!(
                    "unknown built-in detector '{other}' (expected fixed-timeout or phi-accrual)"
                )))
            }
        };
        let mut probe = probe.clone();
        probe.detector = kind;
        return match source {
            Source::Native(_) => Ok(Built::native(DetectorChoice::Builtin(probe))),
            _ => builtin_detector(&probe, limits),
        };
    }
    let (name, bytes) = plugin_bytes(source)?;
    let plugin = std::sync::Arc::new(
        WasmDetector::load(Spec {
            name: &name,
            bytes: &bytes,
            config,
            limits,
        })
        .map_err(|e| PolicyError::Broken(e.to_string()))?,
    );
    // A node id no real node has, so the check leaves no trace on them.
    let mut detector = plugin.clone().for_node(u32::MAX);
    let now = std::time::Instant::now();
    for ok in [true, true, false] {
        detector.observe(now, ok);
        let _ = detector.verdict(now);
    }
    let checked = plugin.describe();
    if checked.traps > 0 {
        return Err(PolicyError::Broken(format!(
            "{}: self-check: {} traps judging three probes; the last: {}",
            source.label(),
            checked.traps,
            checked.last_error.as_deref().unwrap_or("-")
        )));
    }
    plugin.forget_self_check();
    Ok(Built {
        policy: DetectorChoice::Plugin(plugin),
        wasm: Some(bytes),
        config: config.to_string(),
    })
}
