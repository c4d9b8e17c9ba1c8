//! Early warning: each second, the risks the topology shows (see
//! `topology/risks.rs`) that crossed a threshold become events, once per
//! crossing (and once more when they are over), so the timeline says when
//! a shard became one failure away from refusing writes, a replica came
//! close to needing a full resynchronisation, a node close to its
//! `maxmemory`, a node began missing probes or answering slower than its
//! own usual (`topology/trend.rs`), before it failed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::events::Events;
use crate::topology::{Health, Node, ReplicaSet};

/// A replica within this share of the backlog of needing a full resync.
const HEADROOM_WARN: f64 = 0.25;
/// ... and past this share again, the risk is over (hysteresis: a lag
/// hovering at the threshold is one warning, not one a second).
const HEADROOM_CLEAR: f64 = 0.5;

/// A node's memory is a risk when less than this share of `maxmemory` is
/// left, or it fills within this many seconds at the current growth ...
const MEMORY_WARN_SHARE: f64 = 0.10;
const MEMORY_WARN_S: f64 = 600.0;
/// ... and the risk is over past these (hysteresis, as for the backlog).
const MEMORY_CLEAR_SHARE: f64 = 0.20;
const MEMORY_CLEAR_S: f64 = 1800.0;

/// A node that has not failed is suspected when it missed this many of
/// its last probes, or the detector came this close to judging it down
/// (1 = down) ...
const MISSED_WARN: usize = 3;
const SUSPICION_WARN: f64 = 0.5;
/// ... and the risk is over once its remembered probes (the last 60)
/// hold no miss and little suspicion.
const SUSPICION_CLEAR: f64 = 0.25;

/// A node's latency has drifted when the median of its latest probes is
/// this many times its baseline and this much above it, in seconds (a
/// loopback probe takes a tenth of a millisecond: tripled, it is noise)
/// ...
const DRIFT_WARN_RATIO: f64 = 3.0;
const DRIFT_WARN_S: f64 = 0.002;
/// ... and it is over below these.
const DRIFT_CLEAR_RATIO: f64 = 2.0;
const DRIFT_CLEAR_S: f64 = 0.001;

/// Watches until `shutdown` fires.
pub async fn watch(
    topology: Arc<crate::topology::Topology>,
    events: Arc<Events>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut raised = Raised::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        for shard in topology.shards().iter() {
            check(shard, &events, &mut raised);
        }
    }
}

/// The risks raised and not over yet: (shard, node or "", kind).
#[derive(Default)]
struct Raised(HashSet<(String, String, &'static str)>);

impl Raised {
    fn is_raised(&self, shard: &ReplicaSet, node: &str, kind: &'static str) -> bool {
        self.0
            .contains(&(shard.name.clone(), node.to_string(), kind))
    }

    /// Records the risk `kind` as raised (`on`) or over; an event when that
    /// changes.
    fn set(
        &mut self,
        events: &Events,
        shard: &ReplicaSet,
        node: &str,
        kind: &'static str,
        on: bool,
        detail: impl FnOnce() -> String,
    ) {
        let key = (shard.name.clone(), node.to_string(), kind);
        let node = (!node.is_empty()).then_some(node);
        if on && self.0.insert(key.clone()) {
            events.record(&shard.name, kind, node, shard.epoch(), detail());
        } else if !on && self.0.remove(&key) {
            events.record(
                &shard.name,
                "risk-cleared",
                node,
                shard.epoch(),
                format!("{kind}: over"),
            );
        }
    }
}

fn check(shard: &ReplicaSet, events: &Events, raised: &mut Raised) {
    let acks = shard.durability.requirement().acks;
    if shard.primary_node().is_some() && acks > 0 {
        let spare = shard.spare_replicas();
        raised.set(events, shard, "", "risk-one-failure-from-refusing-writes", spare == 0, || {
            format!("exactly the {acks} replica(s) writes need follow the primary: one more failure and synchronous writes are refused (-NOQUORUM)")
        });
    }
    for node in shard.nodes.iter().filter(|n| !n.is_retired()) {
        let Some(risk) = node.memory_risk() else {
            continue;
        };
        let kind = "risk-memory-full-soon";
        let soon = |share: f64, seconds: f64| {
            risk.share < share || risk.full_in.is_some_and(|s| s < seconds)
        };
        let on = if raised.is_raised(shard, &node.addr, kind) {
            soon(MEMORY_CLEAR_SHARE, MEMORY_CLEAR_S)
        } else {
            soon(MEMORY_WARN_SHARE, MEMORY_WARN_S)
        };
        raised.set(events, shard, &node.addr, kind, on, || {
            let full_in = risk.full_in.map_or(String::from("not growing now"), |s| format!("full in {s:.0} s at the current growth"));
            format!(
                "{} bytes ({:.0}% of maxmemory) left: {full_in}; at maxmemory it evicts keys or refuses writes (-OOM) (raise maxmemory, or find what grows)",
                risk.headroom,
                risk.share * 100.0
            )
        });
    }
    for node in shard.nodes.iter().filter(|n| !n.is_retired()) {
        // A node judged down has failed: failover is on it, and its risks
        // stay as they were until it answers again.
        if node.health() != Health::Down {
            check_probes(shard, node, events, raised);
        }
    }
    let backlog = shard.backlog_bytes();
    for node in &shard.nodes {
        let Some(headroom) = shard.backlog_headroom(node) else {
            continue;
        };
        let share = headroom as f64 / backlog.max(1) as f64;
        let kind = "risk-backlog-overflow";
        let on = if raised.is_raised(shard, &node.addr, kind) {
            share < HEADROOM_CLEAR
        } else {
            share < HEADROOM_WARN
        };
        raised.set(events, shard, &node.addr, kind, on, || {
            format!("{headroom} bytes from needing a full resynchronisation: it lags {} of the primary's {backlog}-byte backlog (raise repl-backlog-size, or find why it falls behind)", backlog - headroom)
        });
    }
}

/// The trend of a node's probes: suspicion rising, latency drifting.
fn check_probes(shard: &ReplicaSet, node: &Node, events: &Events, raised: &mut Raised) {
    let trend = node.probe_trend();
    let kind = "risk-node-suspected";
    let on = if raised.is_raised(shard, &node.addr, kind) {
        trend.missed > 0 || trend.suspicion >= SUSPICION_CLEAR
    } else {
        trend.missed >= MISSED_WARN || trend.suspicion >= SUSPICION_WARN
    };
    raised.set(events, shard, &node.addr, kind, on, || {
        format!(
            "missed {} of its last {} probes (detector suspicion up to {:.2}, 1 = down): not failed yet (find why it stalls: a fork for a save, swapping, a slow command, the network)",
            trend.missed, trend.probes, trend.suspicion
        )
    });
    let (Some(latency), Some(baseline)) = (trend.latency_s, trend.baseline_s) else {
        return;
    };
    let kind = "risk-latency-drift";
    let drifted =
        |ratio: f64, above: f64| latency >= ratio * baseline && latency - baseline >= above;
    let on = if raised.is_raised(shard, &node.addr, kind) {
        drifted(DRIFT_CLEAR_RATIO, DRIFT_CLEAR_S)
    } else {
        drifted(DRIFT_WARN_RATIO, DRIFT_WARN_S)
    };
    raised.set(events, shard, &node.addr, kind, on, || {
        format!(
            "answers in {:.1} ms, {:.1}x its usual {:.2} ms (find what slows it: slow commands in SLOWLOG, a busy host, the network)",
            latency * 1e3,
            latency / baseline.max(1e-9),
            baseline * 1e3
        )
    });
}
