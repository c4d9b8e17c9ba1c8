//! `rampart policy test SOURCE --scenario FILE`: runs a policy plugin
//! against a shard described in a file, without Redis or a running
//! Rampart, and prints every decision; with `--expect`, a decision that
//! differs from the scenario's `expect`, a trap or a fallback fails the
//! run (status 1), so plugin authors can unit-test in CI.
//!
//! The plugin runs in the same sandbox, with the same limits and the same
//! load-time self-check, as in Rampart; the shard is made of real topology
//! nodes (never connected), so the plugin sees exactly the node records a
//! running Rampart would hand it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::Failure;
use crate::backend::NodePool;
use crate::config::{PluginsConfig, ReadFrom, ReplicationConfig};
use crate::failover::detect::Detector;
use crate::policy::swap::{self, Source};
use crate::policy::Limits;
use crate::route::Read;
use crate::topology::{Health, Node, ReplicaSet, Report, Role};

#[derive(clap::Args)]
pub struct Test {
    /// The plugin: a `.wasm` component, or `builtin:<name>`.
    source: String,
    /// The scenario (TOML): what the plugin is, the shard it sees, and the
    /// reads, election or probe results to ask it about.
    #[arg(long)]
    scenario: PathBuf,
    /// Fail (status 1) when a decision differs from its `expect`, or the
    /// plugin traps or gives an answer Rampart would not use.
    #[arg(long)]
    expect: bool,
}

/// A scenario file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    /// `router`, `quorum` or `detector`.
    kind: String,
    /// The text handed to the plugin's `configure`.
    #[serde(default)]
    config: String,
    /// The zone of the Rampart instance (routers prefer replicas in it).
    #[serde(default)]
    client_zone: Option<String>,
    /// The shard's nodes in configuration order: their ids are 1, 2, ...
    #[serde(default)]
    nodes: Vec<NodeSpec>,
    /// Router: reads to place.
    #[serde(default)]
    reads: Vec<ReadSpec>,
    /// Quorum: what to expect of `requirement` and `elect`.
    #[serde(default)]
    quorum: Option<QuorumSpec>,
    /// Detector: probe results, each judged as it arrives.
    #[serde(default)]
    probes: Vec<ProbeSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSpec {
    addr: String,
    /// `primary` or `replica`.
    role: String,
    /// `up`, `suspect` or `down`.
    #[serde(default = "up")]
    health: String,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default = "hundred")]
    priority: u32,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    lag_ms: u64,
    #[serde(default)]
    rtt_us: u64,
    /// A replica's link to its primary is up.
    #[serde(default = "yes")]
    connected: bool,
}

fn up() -> String {
    "up".into()
}
fn hundred() -> u32 {
    100
}
fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadSpec {
    key: String,
    #[serde(default)]
    client: u64,
    /// A node's address, or `primary`.
    #[serde(default)]
    expect: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuorumSpec {
    #[serde(default)]
    expect_acks: Option<u32>,
    /// The replica to promote, or `none`. The candidates are the replicas
    /// that are up, with their offsets and priorities.
    #[serde(default)]
    expect_elect: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeSpec {
    /// The node probed (its address).
    node: String,
    /// When the probe started, in milliseconds from the scenario's start.
    at_ms: u64,
    ok: bool,
    /// The verdict after this probe: `up`, `suspect` or `down`.
    #[serde(default)]
    expect: Option<String>,
}

pub fn test(args: Test) -> Result<(), Failure> {
    let text = crate::config::read_text(&args.scenario, crate::config::MAX_CONFIG_BYTES)
        .map_err(|e| Failure::Usage(format!("{}: {e}", args.scenario.display())))?;
    let scenario: Scenario = toml::from_str(&text)
        .map_err(|e| Failure::Usage(format!("{}: {e}", args.scenario.display())))?;
    let source = source_of(&args.source, &args.scenario)?;
    let shard = shard_of(&scenario)?;
    let limits = Limits::of(&PluginsConfig::default());
    let mut run = Run::default();
    match scenario.kind.as_str() {
        "router" => router(&scenario, &source, shard, limits, &mut run)?,
        "quorum" => quorum(&scenario, &source, &shard, limits, &mut run)?,
        "detector" => detector(&scenario, &source, &shard, limits, &mut run)?,
        other => {
            return Err(Failure::Usage(format!(
                "{}: kind = \"{other}\": expected router, quorum or detector",
                args.scenario.display()
            )))
        }
    }
    println!(
        "{} decision(s), {} as expected, {} not; {} trap(s), {} fallback(s)",
        run.decisions, run.matched, run.mismatched, run.traps, run.fallbacks
    );
    if let Some(error) = &run.last_error {
        println!("last error: {error}");
    }
    if args.expect && (run.mismatched > 0 || run.traps > 0 || run.fallbacks > 0) {
        return Err(Failure::Failed(
            "the plugin did not decide as the scenario expects".into(),
        ));
    }
    Ok(())
}

/// What a run saw.
#[derive(Default)]
struct Run {
    decisions: usize,
    matched: usize,
    mismatched: usize,
    traps: u64,
    fallbacks: u64,
    last_error: Option<String>,
}

impl Run {
    /// Prints one decision and whether it is what was expected.
    fn decided(&mut self, what: &str, answer: &str, expect: Option<&str>) {
        self.decisions += 1;
        let verdict = match expect {
            None => String::new(),
            Some(wanted) if wanted == answer => {
                self.matched += 1;
                "   ok".into()
            }
            Some(wanted) => {
                self.mismatched += 1;
                format!("   MISMATCH: expected {wanted}")
            }
        };
        println!("{what} -> {answer}{verdict}");
    }

    fn took(&mut self, view: crate::observe::policy_view::PolicyView) {
        self.traps = view.traps;
        self.fallbacks = view.fallbacks;
        self.last_error = view.last_error;
    }
}

/// `builtin:`/`native:` as written; a path relative to the scenario's
/// directory when it is not found from here.
fn source_of(text: &str, scenario: &Path) -> Result<Source, Failure> {
    if text.starts_with("builtin:") || text.starts_with("native:") {
        return Ok(Source::parse(text));
    }
    let here = PathBuf::from(text);
    let path = match scenario.parent() {
        Some(dir) if !here.exists() && dir.join(&here).exists() => dir.join(here),
        _ => here,
    };
    Ok(Source::path(&path.display().to_string()))
}

/// The shard the scenario describes, as a running Rampart would hold it.
fn shard_of(scenario: &Scenario) -> Result<Arc<ReplicaSet>, Failure> {
    let changes = Arc::new(AtomicU64::new(0));
    let zones: BTreeMap<&str, u32> = scenario
        .nodes
        .iter()
        .filter_map(|n| n.zone.as_deref())
        .chain(scenario.client_zone.as_deref())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .zip(1..)
        .collect();
    let nodes: Vec<Arc<Node>> = scenario
        .nodes
        .iter()
        .zip(1..)
        .map(|(spec, id)| {
            let pool = NodePool::unconnected(spec.addr.clone());
            let zone = spec.zone.as_deref().map_or(0, |z| zones[z]);
            Arc::new(Node::new(id, spec.addr.clone(), pool, changes.clone()).in_zone(zone))
        })
        .collect();
    let primary = scenario.nodes.iter().position(|n| n.role == "primary");
    let client_zone = scenario.client_zone.as_deref().map_or(0, |z| zones[z]);
    let shard = Arc::new(
        ReplicaSet::new("scenario".into(), nodes, ReadFrom::Replicas, false, 10_000)
            .with_client_zone(client_zone),
    );
    if let Some(index) = primary {
        shard.set_primary(&shard.nodes[index], 1);
    }
    let now = Instant::now();
    for (spec, node) in scenario.nodes.iter().zip(&shard.nodes) {
        let role = match spec.role.as_str() {
            "primary" => Role::Primary,
            "replica" => Role::Replica,
            other => {
                return Err(Failure::Usage(format!(
                    "node {}: role = \"{other}\": expected primary or replica",
                    spec.addr
                )))
            }
        };
        let report = Report {
            role,
            offset: spec.offset,
            connected: spec.connected,
            master: primary.map(|i| scenario.nodes[i].addr.clone()),
            priority: spec.priority,
            replicas: 0,
            replid: String::new(),
            replid2: String::new(),
            backlog: 0,
        };
        shard.observe(node, &report, now, None);
        node.set_lag(0, spec.lag_ms);
        node.set_rtt(Duration::from_micros(spec.rtt_us));
        node.set_health(health(&spec.health).ok_or_else(|| {
            Failure::Usage(format!(
                "node {}: health = \"{}\": expected up, suspect or down",
                spec.addr, spec.health
            ))
        })?);
    }
    shard.refresh();
    // Readable as a probe would find it: a connected replica, up, within
    // the default `max_read_lag_ms` (the scenario states lags, not the
    // offsets over time that would prove them).
    for (spec, node) in scenario.nodes.iter().zip(&shard.nodes) {
        let readable = shard.follows_primary(node) && spec.lag_ms <= 10_000;
        node.simulate_readable(readable);
    }
    Ok(shard)
}

fn health(text: &str) -> Option<Health> {
    match text {
        "up" => Some(Health::Up),
        "suspect" => Some(Health::Suspect),
        "down" => Some(Health::Down),
        _ => None,
    }
}

fn health_name(health: Health) -> &'static str {
    match health {
        Health::Up => "up",
        Health::Suspect => "suspect",
        Health::Down => "down",
    }
}

fn router(
    scenario: &Scenario,
    source: &Source,
    shard: Arc<ReplicaSet>,
    limits: Limits,
    run: &mut Run,
) -> Result<(), Failure> {
    let changes = Arc::new(AtomicU64::new(1));
    let generation = swap::build(source, &scenario.config, &shard, changes, 1, limits)
        .map_err(|e| Failure::Failed(e.to_string()))?;
    println!("loaded {} as a router", generation.source);
    for (burst, read) in scenario.reads.iter().enumerate() {
        let before = generation.policy.describe().fallbacks;
        let choice = generation.policy.pick(
            &shard,
            &Read {
                client_id: read.client,
                key: read.key.as_bytes(),
                // Each read of a scenario is a burst of its own.
                burst: burst as u64,
            },
        );
        let mut answer = match choice {
            Some(node) if shard.primary_node().is_some_and(|p| p.id == node.id) => "primary".into(),
            Some(node) => node.addr.clone(),
            None => "primary".into(),
        };
        let after = generation.policy.describe();
        if after.fallbacks > before {
            // Rampart's own choice, not the plugin's: say why.
            answer.push_str(&format!(
                " (fallback: {})",
                after.last_error.as_deref().unwrap_or("no answer")
            ));
        }
        let what = format!("read {:?} (client {})", read.key, read.client);
        run.decided(&what, &answer, read.expect.as_deref());
    }
    run.took(generation.policy.describe());
    Ok(())
}

fn quorum(
    scenario: &Scenario,
    source: &Source,
    shard: &ReplicaSet,
    limits: Limits,
    run: &mut Run,
) -> Result<(), Failure> {
    let replicas = shard.replica_count();
    let built = swap::build_quorum(
        source,
        &scenario.config,
        &ReplicationConfig::default(),
        replicas,
        limits,
    )
    .map_err(|e| Failure::Failed(e.to_string()))?;
    println!("loaded {} as a quorum policy", source.label());
    let expect = scenario.quorum.as_ref();
    let requirement = built.policy.requirement(replicas);
    run.decided(
        &format!("requirement with {replicas} replica(s)"),
        &requirement.acks.to_string(),
        expect
            .and_then(|q| q.expect_acks)
            .map(|acks| acks.to_string())
            .as_deref(),
    );
    println!(
        "  (acks within {} ms, {} on shortfall)",
        requirement.timeout_ms,
        if requirement.fail_on_shortfall {
            "fail"
        } else {
            "accept"
        }
    );
    let candidates: Vec<crate::replicate::quorum::Candidate> = shard
        .nodes
        .iter()
        .filter(|n| n.role() == Role::Replica && n.health() == Health::Up)
        .map(|n| crate::replicate::quorum::Candidate {
            id: n.id,
            offset: n.offset(),
            priority: n.priority(),
        })
        .collect();
    let elected = built.policy.elect(&candidates);
    let answer = elected
        .and_then(|id| shard.nodes.iter().find(|n| n.id == id))
        .map_or_else(|| "none".to_string(), |n| n.addr.clone());
    run.decided(
        &format!("election among {} candidate(s)", candidates.len()),
        &answer,
        expect.and_then(|q| q.expect_elect.as_deref()),
    );
    run.took(built.policy.describe());
    Ok(())
}

fn detector(
    scenario: &Scenario,
    source: &Source,
    shard: &ReplicaSet,
    limits: Limits,
    run: &mut Run,
) -> Result<(), Failure> {
    let probe = crate::config::ProbeConfig::default();
    let built = swap::build_detector(source, &scenario.config, &probe, limits)
        .map_err(|e| Failure::Failed(e.to_string()))?;
    println!("loaded {} as a detector", source.label());
    let start = Instant::now();
    let mut detectors: BTreeMap<u32, Box<dyn Detector>> = BTreeMap::new();
    for probe_spec in &scenario.probes {
        let Some(node) = shard.node_by_addr(&probe_spec.node) else {
            return Err(Failure::Usage(format!(
                "probe of {}: not a node of the scenario",
                probe_spec.node
            )));
        };
        let detector = detectors
            .entry(node.id)
            .or_insert_with(|| match &built.policy {
                crate::failover::detect::DetectorChoice::Builtin(config) => {
                    crate::failover::detect::build(config)
                }
                crate::failover::detect::DetectorChoice::Plugin(plugin) => {
                    plugin.clone().for_node(node.id)
                }
            });
        let at = start + Duration::from_millis(probe_spec.at_ms);
        detector.observe(at, probe_spec.ok);
        let verdict = health_name(detector.verdict(at));
        let what = format!(
            "{} at {} ms: probe {}",
            probe_spec.node,
            probe_spec.at_ms,
            if probe_spec.ok { "answered" } else { "failed" }
        );
        run.decided(&what, verdict, probe_spec.expect.as_deref());
    }
    if let crate::failover::detect::DetectorChoice::Plugin(plugin) = &built.policy {
        run.took(plugin.describe());
    }
    Ok(())
}
