//! Each node's role, health, place in replication, traffic and errors in
//! `/metrics`, one metric at a time (every sample of a metric follows its
//! HELP and TYPE as one group).

use super::prom::family;
use crate::context::Context;
use crate::topology::{Health, NodeView, Role};

/// Long for its table of metrics (name, type, help, value), one row each.
pub(super) fn render(o: &mut String, ctx: &Context) {
    // Every sample of a metric must follow its HELP and TYPE as one group,
    // so the rendering goes metric by metric, not node by node.
    let mut nodes = Vec::new();
    for shard in ctx.topology.shards().iter() {
        let primary = shard.primary_node().map(|p| p.id);
        for node in shard.nodes.iter().filter(|n| !n.is_retired()) {
            let labels = format!("shard=\"{}\",node=\"{}\"", shard.name, node.addr);
            nodes.push((
                labels,
                node.snapshot(primary == Some(node.id), shard.is_fanout()),
            ));
        }
    }
    type NodeMetric = (
        &'static str,
        &'static str,
        &'static str,
        fn(&NodeView) -> f64,
    );
    const NODE_METRICS: &[NodeMetric] = &[
        (
            "rampart_node_requests_total",
            "counter",
            "Commands forwarded to each node.",
            |n| n.requests as f64,
        ),
        (
            "rampart_node_errors_total",
            "counter",
            "Commands answered with an error because the node's connection failed or was down.",
            |n| n.errors as f64,
        ),
        (
            "rampart_node_connections",
            "gauge",
            "Connections open to the node (shared links and dedicated connections).",
            |n| n.connections as f64,
        ),
        (
            "rampart_node_up",
            "gauge",
            "1 when the node answers probes, 0.5 suspect, 0 down.",
            |n| match n.health {
                Health::Up => 1.0,
                Health::Suspect => 0.5,
                Health::Down => 0.0,
            },
        ),
        (
            "rampart_node_in_sync",
            "gauge",
            "1 when the node has run every write but the last few (always 1 in native mode; in fan-out mode 0 while it is down, catching up, stale or being resynced).",
            |n| n.sync.is_none_or(|s| s == crate::topology::SyncState::InSync) as u8 as f64,
        ),
        (
            "rampart_node_primary",
            "gauge",
            "1 for the shard's current primary.",
            |n| n.primary as u8 as f64,
        ),
        (
            "rampart_node_role",
            "gauge",
            "The role the node reports: 1 primary, 2 replica, 0 unknown.",
            |n| match n.role {
                Role::Primary => 1.0,
                Role::Replica => 2.0,
                Role::Unknown => 0.0,
            },
        ),
        (
            "rampart_node_serves_reads",
            "gauge",
            "1 when the node may serve reads.",
            |n| n.serves_reads as u8 as f64,
        ),
        (
            "rampart_node_replication_offset",
            "gauge",
            "Replication offset at the last probe.",
            |n| n.offset as f64,
        ),
        (
            "rampart_node_replication_lag_bytes",
            "gauge",
            "How far a replica trails its primary, in bytes.",
            |n| n.lag_bytes as f64,
        ),
        (
            "rampart_node_replication_lag_seconds",
            "gauge",
            "How far a replica trails its primary, in time.",
            |n| n.lag_ms as f64 / 1e3,
        ),
        (
            "rampart_node_probe_rtt_seconds",
            "gauge",
            "Round trip of the last answered probe.",
            |n| n.rtt_us as f64 / 1e6,
        ),
    ];
    for (name, kind, text, value) in NODE_METRICS {
        family(
            o,
            name,
            kind,
            text,
            nodes.iter().map(|(l, n)| (l.clone(), value(n))),
        );
    }

    family(
        o,
        "rampart_node_backlog_headroom_bytes",
        "gauge",
        "For a replica following the primary: how many more bytes it can fall behind before the primary's backlog no longer holds what it lacks and it needs a full resynchronisation.",
        ctx.topology.shards().iter().flat_map(|shard| {
            shard.nodes.iter().filter_map(move |node| {
                let headroom = shard.backlog_headroom(node)?;
                Some((
                    format!("shard=\"{}\",node=\"{}\"", shard.name, node.addr),
                    headroom as f64,
                ))
            })
        }),
    );
}
