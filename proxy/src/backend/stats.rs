//! What a node's links have seen, for the metrics, the routers and the
//! probes (one set of counters per node, shared by all its links).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// What a node's links have seen, for the metrics.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Requests answered with an error because their connection failed, or
    /// was down when they came.
    pub failed_requests: AtomicU64,
    /// Connections open now, shared and dedicated.
    pub connections: AtomicI64,
    /// Batches handed to links, and batches answered: the difference is
    /// the node's load right now (routers balance on it).
    pub(super) sent_batches: AtomicU64,
    pub(super) answered_batches: AtomicU64,
    /// Reads from the node's links that returned bytes: a node whose
    /// links keep receiving is alive, however late its probe's answer.
    pub(super) reads: AtomicU64,
    /// The node answers its probes with `-BUSY` or `-LOADING`: it is alive
    /// and running something long, so a reply that is slow to come is no
    /// sign of a dead connection.
    pub(super) busy: AtomicBool,
    /// Until when the node pauses writes (`CLIENT PAUSE ... WRITE` through
    /// Rampart): replies held by the pause are not late. `paused` is the
    /// lock-free check the request path makes.
    pub(super) paused: AtomicBool,
    pub(super) paused_until: std::sync::Mutex<Option<std::time::Instant>>,
}

impl LinkStats {
    /// Set by the node's probe while the node says it is busy.
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed) || self.is_paused()
    }

    /// The node pauses writes for `duration` from now (`None`: no more).
    pub fn pause_for(&self, duration: Option<Duration>) {
        *self.paused_until.lock().unwrap_or_else(|p| p.into_inner()) =
            duration.map(|d| std::time::Instant::now() + d);
        self.paused.store(duration.is_some(), Ordering::Relaxed);
    }

    /// Whether the node pauses writes now.
    pub fn is_paused(&self) -> bool {
        if !self.paused.load(Ordering::Relaxed) {
            return false;
        }
        let until = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        let paused = until.is_some_and(|until| std::time::Instant::now() < until);
        if !paused {
            self.paused.store(false, Ordering::Relaxed);
        }
        paused
    }

    /// Reads with bytes so far, across the node's links.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Batches sent to the node and not answered yet.
    pub fn inflight(&self) -> u64 {
        let answered = self.answered_batches.load(Ordering::Relaxed);
        self.sent_batches
            .load(Ordering::Relaxed)
            .saturating_sub(answered)
    }

    /// Batches answered so far, read before a probe of the node is sent:
    /// a write acknowledged after that shows as a different count.
    pub fn answered(&self) -> u64 {
        self.answered_batches.load(Ordering::SeqCst)
    }

    pub(super) fn count_answered(&self, batches: u64) {
        // SeqCst (free on x86, where any fetch_add is a locked one): the
        // count a probe reads must reflect every reply handed on before it.
        self.answered_batches.fetch_add(batches, Ordering::SeqCst);
    }

    pub(super) fn failed(&self, requests: usize) {
        self.failed_requests
            .fetch_add(requests as u64, Ordering::Relaxed);
    }
}
