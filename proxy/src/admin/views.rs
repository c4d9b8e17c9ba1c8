//! JSON views the admin API serves besides the topology: the slot map
//! with the move in progress, and the risks Rampart sees coming.

use crate::context::Context;

/// Which shard in service owns which hash slots, and the move in
/// progress.
pub(super) fn slots(ctx: &Context) -> serde_json::Value {
    let map = ctx.slots.load();
    let shards: Vec<serde_json::Value> = ctx
        .shards
        .all()
        .iter()
        .enumerate()
        .filter(|(_, shard)| !shard.topology.is_retired())
        .map(|(index, shard)| {
            serde_json::json!({
                "shard": shard.name(),
                "slots": crate::shard::slots::ranges_text(&map.ranges_of(index)),
                "count": map.count_of(index),
            })
        })
        .collect();
    let moving = map.moving().map(|m| {
        serde_json::json!({
            "slots": crate::shard::slots::ranges_text(&m.ranges),
            "count": m.count(),
            "from": ctx.shards.at(m.from).name(),
            "to": ctx.shards.at(m.to).name(),
            "paused": m.paused,
            "progress": ctx.slots.progress(),
        })
    });
    serde_json::json!({ "shards": shards, "moving": moving })
}

/// Early warning, as `/metrics` and the events have it (see
/// `topology/risks.rs`): per shard, replicas to spare before synchronous
/// writes are refused; per replica, how far it can fall further behind
/// before the primary's backlog no longer holds what it lacks; per node
/// with `maxmemory`, the room left and when it runs out; per node, its
/// missed probes, the detector's suspicion and its latency against its
/// own baseline.
pub(super) fn risks(ctx: &Context) -> serde_json::Value {
    let shards: Vec<serde_json::Value> = ctx
        .topology
        .shards()
        .iter()
        .map(|shard| {
            let backlog = shard.backlog_bytes();
            let acks = shard.durability.requirement().acks;
            let nodes: Vec<serde_json::Value> = shard
                .nodes
                .iter()
                .filter(|n| !n.is_retired())
                .filter_map(|node| {
                    let headroom = shard.backlog_headroom(node)?;
                    Some(serde_json::json!({
                        "addr": node.addr,
                        "backlog_headroom_bytes": headroom,
                        "backlog_headroom_share": headroom as f64 / backlog.max(1) as f64,
                    }))
                })
                .collect();
            let memory: Vec<serde_json::Value> = shard
                .nodes
                .iter()
                .filter(|n| !n.is_retired())
                .filter_map(|node| {
                    let risk = node.memory_risk()?;
                    Some(serde_json::json!({
                        "addr": node.addr,
                        "used_bytes": node.memory().used,
                        "max_bytes": node.memory().max,
                        "headroom_bytes": risk.headroom,
                        "headroom_share": risk.share,
                        "full_in_s": risk.full_in,
                    }))
                })
                .collect();
            let probes: Vec<serde_json::Value> = shard
                .nodes
                .iter()
                .filter(|n| !n.is_retired())
                .map(|node| {
                    let trend = node.probe_trend();
                    serde_json::json!({
                        "addr": node.addr,
                        "health": node.health(),
                        "probes": trend.probes,
                        "missed": trend.missed,
                        "suspicion": trend.suspicion,
                        "latency_s": trend.latency_s,
                        "baseline_s": trend.baseline_s,
                    })
                })
                .collect();
            serde_json::json!({
                "shard": shard.name,
                "memory": memory,
                "probes": probes,
                "acks": acks,
                // Meaningful only when writes wait for replicas.
                "spare_replicas": (acks > 0).then(|| shard.spare_replicas()),
                "backlog_bytes": backlog,
                "replicas": nodes,
            })
        })
        .collect();
    serde_json::json!({ "shards": shards })
}
