//! `/metrics` in the Prometheus text format. Counters live where the work
//! happens (nodes, shards, links, plugins); this module only adds the
//! request latency histograms and renders everything.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::prom::{family, help};
use crate::context::Context;
use crate::observe::counters::{BUCKETS_US, CLASSES};
use crate::observe::policy_view::PolicyView;
use crate::replicate::DurabilityView;
use crate::topology::{Health, NodeView, ReplicaSet, Role};

/// Renders every metric.
pub fn render(ctx: &Context) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let o = &mut out;
    help(o, "rampart_request_batch_seconds", "histogram", "Time from sending a batch of requests to a node until its replies reached the client task, by the class of the batch's first command.");
    for (class, label) in CLASSES {
        let h = &ctx.metrics.latency[class as usize];
        let mut cumulative = 0;
        for (i, bound) in BUCKETS_US.iter().enumerate() {
            cumulative += h.counts[i].load(Ordering::Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(o, "rampart_request_batch_seconds_bucket{{class=\"{label}\",le=\"{le}\"}} {cumulative}");
        }
        cumulative += h.counts[BUCKETS_US.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "rampart_request_batch_seconds_bucket{{class=\"{label}\",le=\"+Inf\"}} {cumulative}"
        );
        let sum = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            o,
            "rampart_request_batch_seconds_sum{{class=\"{label}\"}} {sum}"
        );
        let _ = writeln!(
            o,
            "rampart_request_batch_seconds_count{{class=\"{label}\"}} {cumulative}"
        );
    }

    family(
        o,
        "rampart_clients",
        "gauge",
        "Client connections.",
        [(String::new(), ctx.clients.load(Ordering::Relaxed) as f64)],
    );
    family(
        o,
        "rampart_blocked_abandoned_total",
        "counter",
        "Blocking commands unblocked on their node because their client left.",
        [(
            String::new(),
            ctx.metrics.abandoned.load(Ordering::Relaxed) as f64,
        )],
    );
    family(
        o,
        "rampart_blocked_restored_total",
        "counter",
        "Elements popped in the instant their client left, pushed back where they came from.",
        [(
            String::new(),
            ctx.metrics.restored.load(Ordering::Relaxed) as f64,
        )],
    );
    family(
        o,
        "rampart_auth_failures_total",
        "counter",
        "AUTH (or HELLO ... AUTH) attempts with a wrong password.",
        [(
            String::new(),
            ctx.metrics.auth_failures.load(Ordering::Relaxed) as f64,
        )],
    );
    {
        use crate::backend::budget::Reason;
        let budget = &ctx.budget;
        family(
            o,
            "rampart_clients_evicted_total",
            "counter",
            "Clients disconnected for going over a memory cap ([limits] client_output_*, clients_output_total_mb, partial_requests_total_mb).",
            [Reason::Hard, Reason::Soft, Reason::Total, Reason::PartialRequests]
                .map(|r| (format!("reason=\"{}\"", r.name()), budget.evictions(r) as f64)),
        );
        family(
            o,
            "rampart_clients_output_bytes",
            "gauge",
            "Replies received from the nodes and not yet written to their clients.",
            [(String::new(), budget.total() as f64)],
        );
        family(
            o,
            "rampart_clients_output_cap_bytes",
            "gauge",
            "limits.clients_output_total_mb in bytes (0: no cap): past it the biggest client is disconnected.",
            [(String::new(), budget.total_cap() as f64)],
        );
        family(
            o,
            "rampart_clients_partial_request_bytes",
            "gauge",
            "Requests received in part, across clients.",
            [(String::new(), budget.partial() as f64)],
        );
    }
    family(
        o,
        "rampart_tls_handshake_failures_total",
        "counter",
        "Client connections closed because their TLS handshake failed or took over 10 s.",
        [(
            String::new(),
            ctx.metrics.tls_handshake_failures.load(Ordering::Relaxed) as f64,
        )],
    );
    family(
        o,
        "rampart_switchovers_refused_total",
        "counter",
        "Switchovers refused because one began less than failover.switchover_interval_ms ago.",
        [(
            String::new(),
            ctx.metrics.switchovers_refused.load(Ordering::Relaxed) as f64,
        )],
    );

    // Every sample of a metric must follow its HELP and TYPE as one group,
    // so the rendering goes metric by metric, not node by node.
    let mut nodes = Vec::new();
    for shard in &ctx.topology.shards {
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
        ctx.topology.shards.iter().flat_map(|shard| {
            shard.nodes.iter().filter_map(move |node| {
                let headroom = shard.backlog_headroom(node)?;
                Some((
                    format!("shard=\"{}\",node=\"{}\"", shard.name, node.addr),
                    headroom as f64,
                ))
            })
        }),
    );

    let shards: Vec<(String, &ReplicaSet, DurabilityView)> = ctx
        .topology
        .shards
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

    // Every policy in force: each shard's router and quorum, the detector.
    let views = ctx.policies();
    let mut policies: Vec<(String, PolicyView)> = Vec::new();
    for (shard, slot) in &views.router {
        policies.push((
            format!("shard=\"{shard}\",kind=\"router\""),
            slot.active.policy.clone(),
        ));
    }
    for (shard, quorum) in &views.quorum {
        policies.push((
            format!("shard=\"{shard}\",kind=\"quorum\""),
            quorum.policy.clone(),
        ));
    }
    policies.push((
        "shard=\"*\",kind=\"detector\"".to_string(),
        views.detector.policy.clone(),
    ));
    type PolicyMetric = (&'static str, &'static str, fn(&PolicyView) -> u64);
    const POLICY_METRICS: &[PolicyMetric] = &[
        (
            "rampart_policy_calls_total",
            "Calls into the policy.",
            |p| p.calls,
        ),
        (
            "rampart_policy_traps_total",
            "Calls that trapped (or ran out of time or memory).",
            |p| p.traps,
        ),
        (
            "rampart_policy_fallbacks_total",
            "Decisions made by the fallback because the policy failed.",
            |p| p.fallbacks,
        ),
    ];
    for (name, text, value) in POLICY_METRICS {
        family(
            o,
            name,
            "counter",
            text,
            policies
                .iter()
                .map(|(l, p)| (format!("{l},name=\"{}\"", p.name), value(p) as f64)),
        );
    }
    family(
        o,
        "rampart_policy_generation",
        "gauge",
        "The active router generation.",
        views.router.iter().map(|(shard, slot)| {
            (
                format!("shard=\"{shard}\",kind=\"router\""),
                slot.active.generation as f64,
            )
        }),
    );
    if let Some(coordination) = &ctx.coordination {
        let view = coordination.snapshot();
        family(
            o,
            "rampart_coordination_view_age_seconds",
            "gauge",
            "Since the last successful read of etcd was sent (-1: never).",
            [(
                String::new(),
                view.view_age_ms.map_or(-1.0, |ms| ms as f64 / 1000.0),
            )],
        );
        family(
            o,
            "rampart_coordination_lease_held",
            "gauge",
            "1 for each shard whose failover lease this instance holds.",
            ctx.topology.shards.iter().map(|s| {
                let held = view.lease_holders.get(&s.name) == Some(&view.instance);
                (format!("shard=\"{}\"", s.name), held as u8 as f64)
            }),
        );
        family(
            o,
            "rampart_coordination_instances",
            "gauge",
            "Live instances sharing the shards (each one's key in etcd).",
            [(String::new(), view.instances.len() as f64)],
        );
    }
    super::slot_metrics::render(o, ctx);
    super::memory_metrics::render(o, ctx);
    super::probe_metrics::render(o, ctx);
    out
}
