//! Each shard's primary, epoch, durability, held writes and reads in
//! `/metrics`.

use std::sync::atomic::Ordering;

use super::prom::family;
use crate::context::Context;
use crate::replicate::DurabilityView;
use crate::topology::ReplicaSet;

/// Long for its table of metrics (name, type, help, value), one row each.
pub(super) fn render(o: &mut String, ctx: &Context) {
    let all = ctx.topology.shards();
    let shards: Vec<(String, &ReplicaSet, DurabilityView)> = all
        .iter()
        .map(|s| (format!("shard=\"{}\"", s.name), &**s, s.durability.view()))
        .collect();
    type ShardMetric = (
        &'static str,
        &'static str,
        &'static str,
        fn(&ReplicaSet, &DurabilityView) -> f64,
    );
    const SHARD_METRICS: &[ShardMetric] = &[
        (
            "rampart_shard_epoch",
            "gauge",
            "The shard's epoch: bumped by every promotion.",
            |s, _| s.epoch() as f64,
        ),
        (
            "rampart_shard_failing_over",
            "gauge",
            "1 while a failover or switchover holds writes.",
            |s, _| s.is_failing_over() as u8 as f64,
        ),
        (
            "rampart_shard_awaiting_operator",
            "gauge",
            "1 while no node can be proven to hold every acknowledged write and the shard waits for `rampart promote --force`.",
            |s, _| s.awaiting_operator().is_some() as u8 as f64,
        ),
        (
            "rampart_shard_held_clients",
            "gauge",
            "Clients whose writes wait for a primary.",
            |s, _| s.held.load(Ordering::Relaxed) as f64,
        ),
        (
            "rampart_shard_view_stale",
            "gauge",
            "With [coordination]: 1 while this instance holds the shard's writes because its view of etcd is too old.",
            |s, _| s.is_view_stale() as u8 as f64,
        ),
        (
            "rampart_failover_lost_bytes_total",
            "counter",
            "Bytes of the replication stream acknowledged to clients as asynchronous writes that a promoted replica lacked (the old primary's last probed offset minus the new primary's: a lower bound).",
            |s, _| s.durability.lost_bytes.load(Ordering::Relaxed) as f64,
        ),
        (
            "rampart_shard_wait_total",
            "counter",
            "WAITs sent after synchronous writes.",
            |_, d| d.waits as f64,
        ),
        (
            "rampart_shard_quorum_shortfalls_total",
            "counter",
            "WAITs that came back with fewer acknowledgements than required.",
            |_, d| d.shortfalls as f64,
        ),
        (
            "rampart_shard_noquorum_writes_total",
            "counter",
            "Writes answered with -NOQUORUM.",
            |_, d| d.failed_writes as f64,
        ),
        (
            "rampart_shard_required_acks",
            "gauge",
            "Replica acknowledgements a write needs (0: asynchronous).",
            |_, d| d.acks as f64,
        ),
        (
            "rampart_shard_spare_replicas",
            "gauge",
            "Replicas that could acknowledge a write now beyond those a write needs: at 0 one more replica failure makes synchronous writes fail (-NOQUORUM).",
            |s, _| s.spare_replicas() as f64,
        ),
        (
            "rampart_shard_backlog_bytes",
            "gauge",
            "The primary's replication backlog (repl-backlog-size; 0: unknown).",
            |s, _| s.backlog_bytes() as f64,
        ),
    ];
    for (name, kind, text, value) in SHARD_METRICS {
        family(
            o,
            name,
            kind,
            text,
            shards.iter().map(|(l, s, d)| (l.clone(), value(s, d))),
        );
    }
    family(
        o,
        "rampart_reads_total",
        "counter",
        "Reads by who served them: a replica, or the primary and why (chosen by the router, no replica caught up with what the client has seen under read_consistency, every replica lagging past max_read_lag_ms, no replica up).",
        shards.iter().flat_map(|(l, s, _)| {
            crate::topology::position::SERVED
                .iter()
                .map(move |&(served, by, reason)| {
                    (
                        format!("{l},served_by=\"{by}\",reason=\"{reason}\""),
                        s.positions.counted(served) as f64,
                    )
                })
        }),
    );

    family(
        o,
        "rampart_failover_events_total",
        "counter",
        "Control-loop events by kind: promoted (failovers), promotion-refused, fenced, switchover, policy-rolled-back ...",
        ctx.events.counts().into_iter().map(|((shard, kind), count)| {
            (format!("shard=\"{shard}\",kind=\"{kind}\""), count as f64)
        }),
    );
}
