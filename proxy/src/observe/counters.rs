//! Process-wide counters and the request latency histograms: recorded by
//! the request path, rendered by `admin::metrics`. Counters with a natural
//! home (nodes, shards, links, plugins) live there instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What a batch of requests mostly was, for the latency histograms: the
/// class of its first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchClass {
    Read,
    Write,
    /// Transactions, blocking commands, anything on a dedicated connection.
    Other,
}

pub(crate) const CLASSES: [(BatchClass, &str); 3] = [
    (BatchClass::Read, "read"),
    (BatchClass::Write, "write"),
    (BatchClass::Other, "other"),
];

/// Upper bounds of the latency buckets, in microseconds.
pub(crate) const BUCKETS_US: [u64; 15] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

#[derive(Default)]
pub(crate) struct Histogram {
    /// Per bucket (not cumulative; summed when rendered), then +Inf.
    pub(crate) counts: [AtomicU64; BUCKETS_US.len() + 1],
    pub(crate) sum_us: AtomicU64,
}

/// Process-wide metrics that have no natural home elsewhere.
#[derive(Default)]
pub struct Metrics {
    pub(crate) latency: [Histogram; 3],
    /// Blocking commands unblocked because their client left.
    pub(crate) abandoned: AtomicU64,
    /// Elements popped for a client that left, pushed back.
    pub(crate) restored: AtomicU64,
    /// AUTH attempts with a wrong password.
    pub(crate) auth_failures: AtomicU64,
    /// Switchovers refused by `failover.switchover_interval_ms`.
    pub(crate) switchovers_refused: AtomicU64,
    /// Client TLS handshakes that failed or timed out.
    pub(crate) tls_handshake_failures: AtomicU64,
}

impl Metrics {
    pub fn count_abandoned(&self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_auth_failure(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_tls_handshake_failure(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_switchover_refused(&self) {
        self.switchovers_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_restored(&self) {
        self.restored.fetch_add(1, Ordering::Relaxed);
    }

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
