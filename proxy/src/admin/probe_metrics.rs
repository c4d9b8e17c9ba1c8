//! Each node's last probes in `/metrics`: misses and the detector's
//! suspicion before the node is judged down, and its latency against its
//! own baseline (see `topology/trend.rs`).

use crate::context::Context;

use super::prom::{family, per_node};

pub(super) fn render(o: &mut String, ctx: &Context) {
    let nodes = per_node(ctx, |node| node.probe_trend());
    family(
        o,
        "rampart_node_probes_missed",
        "gauge",
        "Probes the node failed to answer in time among its last 60.",
        nodes.iter().map(|(l, t)| (l.clone(), t.missed as f64)),
    );
    family(
        o,
        "rampart_node_suspicion",
        "gauge",
        "The failure detector's highest suspicion of the node over its last 60 probes (0 answering as usual, 1 judged down).",
        nodes.iter().map(|(l, t)| (l.clone(), t.suspicion)),
    );
    family(
        o,
        "rampart_node_latency_seconds",
        "gauge",
        "Median round trip of the node's latest 16 probes.",
        nodes
            .iter()
            .filter_map(|(l, t)| t.latency_s.map(|s| (l.clone(), s))),
    );
    family(
        o,
        "rampart_node_latency_baseline_seconds",
        "gauge",
        "The node's usual probe round trip (an average over about an hour; absent for its first 60 probes).",
        nodes
            .iter()
            .filter_map(|(l, t)| t.baseline_s.map(|s| (l.clone(), s))),
    );
}
