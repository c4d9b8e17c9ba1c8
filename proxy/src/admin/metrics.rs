//! `/metrics` in the Prometheus text format. Counters live where the work
//! happens (nodes, shards, links, plugins); this module only adds the
//! request latency histograms and renders everything.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::server::Context;
use crate::topology::{Health, Role};

/// What a batch of requests mostly was, for the latency histograms: the
/// class of its first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchClass {
    Read,
    Write,
    /// Transactions, blocking commands, anything on a dedicated connection.
    Other,
}

const CLASSES: [(BatchClass, &str); 3] = [
    (BatchClass::Read, "read"),
    (BatchClass::Write, "write"),
    (BatchClass::Other, "other"),
];

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 15] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

#[derive(Default)]
struct Histogram {
    /// Per bucket (not cumulative; summed when rendered), then +Inf.
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

/// Process-wide metrics that have no natural home elsewhere.
#[derive(Default)]
pub struct Metrics {
    latency: [Histogram; 3],
}

impl Metrics {
    /// Records how long a batch waited for its replies, from being sent to
    /// the backend until the client task had them.
    pub fn observe(&self, class: BatchClass, elapsed: Duration) {
        let us = elapsed.as_micros().min(u64::MAX as u128) as u64;
        let histogram = &self.latency[class as usize];
        let bucket = BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(BUCKETS_US.len());
        histogram.counts[bucket].fetch_add(1, Ordering::Relaxed);
        histogram.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

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

    help(o, "rampart_clients", "gauge", "Client connections.");
    let _ = writeln!(o, "rampart_clients {}", ctx.clients.load(Ordering::Relaxed));

    help(
        o,
        "rampart_node_requests_total",
        "counter",
        "Commands forwarded to each node.",
    );
    help(
        o,
        "rampart_node_up",
        "gauge",
        "1 when the node answers probes, 0.5 suspect, 0 down.",
    );
    help(
        o,
        "rampart_node_primary",
        "gauge",
        "1 for the shard's current primary.",
    );
    help(
        o,
        "rampart_node_role",
        "gauge",
        "The role the node reports: 1 primary, 2 replica, 0 unknown.",
    );
    help(
        o,
        "rampart_node_serves_reads",
        "gauge",
        "1 when the node may serve reads.",
    );
    help(
        o,
        "rampart_node_replication_offset",
        "gauge",
        "Replication offset at the last probe.",
    );
    help(
        o,
        "rampart_node_replication_lag_bytes",
        "gauge",
        "How far a replica trails its primary, in bytes.",
    );
    help(
        o,
        "rampart_node_replication_lag_seconds",
        "gauge",
        "How far a replica trails its primary, in time.",
    );
    for shard in &ctx.topology.shards {
        let primary = shard.primary_node().map(|p| p.id);
        for node in &shard.nodes {
            let labels = format!("shard=\"{}\",node=\"{}\"", shard.name, node.addr);
            let view = node.snapshot(primary == Some(node.id));
            let up = match view.health {
                Health::Up => 1.0,
                Health::Suspect => 0.5,
                Health::Down => 0.0,
            };
            let role = match view.role {
                Role::Primary => 1,
                Role::Replica => 2,
                Role::Unknown => 0,
            };
            let _ = writeln!(
                o,
                "rampart_node_requests_total{{{labels}}} {}",
                view.requests
            );
            let _ = writeln!(o, "rampart_node_up{{{labels}}} {up}");
            let _ = writeln!(o, "rampart_node_primary{{{labels}}} {}", view.primary as u8);
            let _ = writeln!(o, "rampart_node_role{{{labels}}} {role}");
            let _ = writeln!(
                o,
                "rampart_node_serves_reads{{{labels}}} {}",
                view.serves_reads as u8
            );
            let _ = writeln!(
                o,
                "rampart_node_replication_offset{{{labels}}} {}",
                view.offset
            );
            let _ = writeln!(
                o,
                "rampart_node_replication_lag_bytes{{{labels}}} {}",
                view.lag_bytes
            );
            let _ = writeln!(
                o,
                "rampart_node_replication_lag_seconds{{{labels}}} {}",
                view.lag_ms as f64 / 1e3
            );
        }
    }

    help(
        o,
        "rampart_shard_epoch",
        "gauge",
        "The shard's epoch: bumped by every promotion.",
    );
    help(
        o,
        "rampart_shard_failing_over",
        "gauge",
        "1 while a failover or switchover holds writes.",
    );
    help(
        o,
        "rampart_shard_held_clients",
        "gauge",
        "Clients whose writes wait for a primary.",
    );
    help(
        o,
        "rampart_shard_wait_total",
        "counter",
        "WAITs sent after synchronous writes.",
    );
    help(
        o,
        "rampart_shard_quorum_shortfalls_total",
        "counter",
        "WAITs that came back with fewer acknowledgements than required.",
    );
    help(
        o,
        "rampart_shard_noquorum_writes_total",
        "counter",
        "Writes answered with -NOQUORUM.",
    );
    help(
        o,
        "rampart_shard_required_acks",
        "gauge",
        "Replica acknowledgements a write needs (0: asynchronous).",
    );
    for shard in &ctx.topology.shards {
        let labels = format!("shard=\"{}\"", shard.name);
        let d = shard.durability.view();
        let _ = writeln!(o, "rampart_shard_epoch{{{labels}}} {}", shard.epoch());
        let _ = writeln!(
            o,
            "rampart_shard_failing_over{{{labels}}} {}",
            shard.is_failing_over() as u8
        );
        let _ = writeln!(
            o,
            "rampart_shard_held_clients{{{labels}}} {}",
            shard.held.load(Ordering::Relaxed)
        );
        let _ = writeln!(o, "rampart_shard_wait_total{{{labels}}} {}", d.waits);
        let _ = writeln!(
            o,
            "rampart_shard_quorum_shortfalls_total{{{labels}}} {}",
            d.shortfalls
        );
        let _ = writeln!(
            o,
            "rampart_shard_noquorum_writes_total{{{labels}}} {}",
            d.failed_writes
        );
        let _ = writeln!(o, "rampart_shard_required_acks{{{labels}}} {}", d.acks);
    }

    help(o, "rampart_failover_events_total", "counter", "Control-loop events by kind: promoted (failovers), promotion-refused, fenced, switchover, policy-rolled-back ...");
    for ((shard, kind), count) in ctx.events.counts() {
        let _ = writeln!(
            o,
            "rampart_failover_events_total{{shard=\"{shard}\",kind=\"{kind}\"}} {count}"
        );
    }

    help(
        o,
        "rampart_policy_calls_total",
        "counter",
        "Calls into the active router.",
    );
    help(
        o,
        "rampart_policy_traps_total",
        "counter",
        "Router calls that trapped (or ran out of time or memory).",
    );
    help(
        o,
        "rampart_policy_fallbacks_total",
        "counter",
        "Reads sent to the primary because the router failed.",
    );
    help(
        o,
        "rampart_policy_generation",
        "gauge",
        "The active router generation.",
    );
    for (shard, slot) in ctx.routers_view() {
        let a = &slot.active;
        let labels = format!(
            "shard=\"{shard}\",kind=\"router\",name=\"{}\"",
            a.policy.name
        );
        let _ = writeln!(
            o,
            "rampart_policy_calls_total{{{labels}}} {}",
            a.policy.calls
        );
        let _ = writeln!(
            o,
            "rampart_policy_traps_total{{{labels}}} {}",
            a.policy.traps
        );
        let _ = writeln!(
            o,
            "rampart_policy_fallbacks_total{{{labels}}} {}",
            a.policy.fallbacks
        );
        let _ = writeln!(
            o,
            "rampart_policy_generation{{shard=\"{shard}\",kind=\"router\"}} {}",
            a.generation
        );
    }
    out
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
}
