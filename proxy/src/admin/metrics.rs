//! `/metrics` in the Prometheus text format. Counters live where the work
//! happens (nodes, shards, links, plugins); this module only adds the
//! request latency histograms and renders everything.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::prom::{family, help};
use crate::context::Context;
use crate::observe::counters::{BUCKETS_US, CLASSES};

/// Renders every metric: the process-wide ones here, one after another
/// (a list reads better than helpers holding two lines each), then each
/// family's file.
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
    super::node_metrics::render(o, ctx);
    super::shard_metrics::render(o, ctx);
    super::policy_metrics::render(o, ctx);
    super::coordination_metrics::render(o, ctx);
    super::slot_metrics::render(o, ctx);
    super::memory_metrics::render(o, ctx);
    super::probe_metrics::render(o, ctx);
    out
}
