//! Each node's memory against its `maxmemory` in `/metrics`: the early
//! warning before Redis evicts keys or refuses writes.

use crate::context::Context;

use super::prom::{family, per_node};

pub(super) fn render(o: &mut String, ctx: &Context) {
    let nodes = per_node(ctx, |node| {
        (node.memory(), node.memory_risk().and_then(|r| r.full_in))
    });
    family(
        o,
        "rampart_node_memory_used_bytes",
        "gauge",
        "used_memory as the probes last sampled it (about once a second).",
        nodes.iter().map(|(l, (m, _))| (l.clone(), m.used as f64)),
    );
    family(
        o,
        "rampart_node_memory_max_bytes",
        "gauge",
        "maxmemory (0: no limit).",
        nodes.iter().map(|(l, (m, _))| (l.clone(), m.max as f64)),
    );
    family(
        o,
        "rampart_node_memory_full_in_seconds",
        "gauge",
        "For a node with maxmemory whose memory grows: seconds until it reaches maxmemory at the current growth (absent when not growing).",
        nodes
            .iter()
            .filter_map(|(l, (_, full_in))| full_in.map(|s| (l.clone(), s))),
    );
}
