//! Where each node stands in the shard's history of writes, in numbers a
//! read can be checked against: what lets a replica serve a client's read
//! only once it provably holds what that client has seen.
//!
//! Native shards count in replication offsets. A replica's offset from its
//! last probe is a lower bound of what it holds from then on (offsets only
//! grow while it follows the same history). The primary's offset from a
//! probe *started* at `t` is an upper bound of everything any node held
//! before `t`, and covers every write whose reply Rampart had received
//! before `t` (the write ran before the `INFO` did). A probe's start is the
//! one moment both are known, so that is what a [`Mark`] records.
//!
//! Fan-out shards count in positions of Rampart's own log of writes: a
//! node's position is the log entries it has answered, and the log's head
//! bounds what any node can hold. Both are exact and known at once.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use serde::Serialize;

use crate::config::ReadConsistency;

/// A moment, in nanoseconds since the process started: small enough for an
/// atomic, and strictly ordered with every other stamp.
pub type Stamp = u64;

pub fn stamp() -> Stamp {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    Instant::now().duration_since(base).as_nanos() as Stamp
}

/// The stamp of an `Instant` (one taken before the process's first stamp
/// counts as the start).
pub fn stamp_of(at: Instant) -> Stamp {
    let now = Instant::now();
    stamp().saturating_sub(now.saturating_duration_since(at).as_nanos() as Stamp)
}

/// The primary as one probe found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Which history the offset is in: the epoch and the primary's node id.
    pub history: History,
    /// When the probe started.
    pub started: Stamp,
    /// Batches the primary's links had answered when the probe started:
    /// while the count is unchanged, no write has been acknowledged since.
    pub answered: u64,
    pub offset: u64,
}

/// A shard's history of writes: offsets compare only within one. A new
/// epoch or a different primary starts another (a follower instance
/// re-derives the primary without an epoch of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct History {
    pub epoch: u64,
    pub primary: u32,
}

/// Why a read went where it went, counted per shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// By a replica.
    Replica,
    /// By the primary because the router chose it.
    Chosen,
    /// By the primary because no replica the router could choose had
    /// caught up with what the client has seen.
    NotCaughtUp,
    /// By the primary because every replica is too far behind
    /// (`max_read_lag_ms`).
    Lagging,
    /// By the primary because no replica is up and following it.
    NoReplica,
}

pub const SERVED: [(Served, &str, &str); 5] = [
    (Served::Replica, "replica", ""),
    (Served::Chosen, "primary", "chosen"),
    (Served::NotCaughtUp, "primary", "not-caught-up"),
    (Served::Lagging, "primary", "lagging"),
    (Served::NoReplica, "primary", "no-replica"),
];

/// The shard's read consistency, its marks and counters.
pub struct Positions {
    consistency: AtomicU8,
    mark: ArcSwapOption<Mark>,
    /// Fan-out: the next log position to be handed out.
    log_head: AtomicU64,
    reads: [AtomicU64; SERVED.len()],
}

/// Counters as the admin views show them.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ReadsView {
    pub consistency: &'static str,
    pub replica: u64,
    pub primary_chosen: u64,
    pub primary_not_caught_up: u64,
    pub primary_lagging: u64,
    pub primary_no_replica: u64,
}

impl Positions {
    pub fn new(consistency: ReadConsistency) -> Positions {
        Positions {
            consistency: AtomicU8::new(consistency as u8),
            mark: ArcSwapOption::empty(),
            log_head: AtomicU64::new(0),
            reads: Default::default(),
        }
    }

    pub fn consistency(&self) -> ReadConsistency {
        match self.consistency.load(Ordering::Relaxed) {
            0 => ReadConsistency::Session,
            1 => ReadConsistency::Eventual,
            _ => ReadConsistency::Global,
        }
    }

    pub fn set_consistency(&self, consistency: ReadConsistency) {
        self.consistency.store(consistency as u8, Ordering::Relaxed);
    }

    pub fn set_mark(&self, mark: Mark) {
        self.mark.store(Some(Arc::new(mark)));
    }

    pub fn mark(&self) -> Option<Mark> {
        self.mark.load().as_deref().copied()
    }

    pub fn advance_log(&self, head: u64) {
        self.log_head.fetch_max(head, Ordering::AcqRel);
    }

    pub fn log_head(&self) -> u64 {
        self.log_head.load(Ordering::Acquire)
    }

    /// Counts a read (on the request path: one relaxed add, indexed by
    /// the reason, which is its place in [`SERVED`]).
    pub fn count(&self, served: Served) {
        self.reads[served as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn counted(&self, served: Served) -> u64 {
        self.reads[served as usize].load(Ordering::Relaxed)
    }

    pub fn view(&self) -> ReadsView {
        ReadsView {
            consistency: self.consistency().name(),
            replica: self.counted(Served::Replica),
            primary_chosen: self.counted(Served::Chosen),
            primary_not_caught_up: self.counted(Served::NotCaughtUp),
            primary_lagging: self.counted(Served::Lagging),
            primary_no_replica: self.counted(Served::NoReplica),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_is_its_place_in_served() {
        for (i, (served, ..)) in SERVED.iter().enumerate() {
            assert_eq!(*served as usize, i);
        }
    }

    #[test]
    fn stamps_order_and_instants_map_into_them() {
        let before = Instant::now();
        let a = stamp();
        let b = stamp();
        assert!(b >= a);
        assert!(stamp_of(before) <= a);
        let later = Instant::now();
        assert!(stamp_of(later) >= b);
    }
}
