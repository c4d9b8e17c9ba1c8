//! A bounded history of what the control loop did (discoveries, failovers,
//! fencing, refusals), for `GET /v1/events` and the dashboard. Each event is
//! also logged, inside the span of the step that caused it.
//!
//! Failover and fencing events are kept apart from routine ones (policy
//! loads, switchover attempts, config reloads, script kills): each kind has
//! its own bound, so a client loading plugins or asking for switchovers in
//! a loop can push only its own kind of event out, never the record of a
//! failover an operator needs to read afterwards.
//!
//! Flapping is damped: the same kind of event about the same node of the
//! same shard is kept at most [`BURST`] times per [`BURST_WINDOW`]; the
//! rest are counted (`rampart_failover_events_total` sees every one) and the next
//! one kept after the window says how many were left out. A node claiming
//! and losing a role every probe cannot flood the history. Promotions and
//! fencing are always kept.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Increases by one per event, so a poller can ask for what is new.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub shard: String,
    /// `primary-discovered`, `primary-down`, `promoted`, `repointed`,
    /// `fenced`, `promotion-refused`, `failover-aborted`, ...
    pub kind: &'static str,
    pub node: Option<String>,
    /// The shard's epoch after the event.
    pub epoch: u64,
    pub detail: String,
}

pub struct Events {
    capacity: usize,
    inner: Mutex<History>,
    /// Every event ever recorded, by shard and kind (the history forgets;
    /// these counters do not).
    counts: Mutex<std::collections::BTreeMap<(String, &'static str), u64>>,
    /// Recent bursts of one kind of event about one node.
    bursts: Mutex<HashMap<BurstKey, Burst>>,
}

/// A shard, an event kind and the node it is about.
type BurstKey = (String, &'static str, Option<String>);

/// Events of one kind about one node kept at most this many times per
/// [`BURST_WINDOW`].
const BURST: u32 = 5;
const BURST_WINDOW: Duration = Duration::from_secs(10);

struct Burst {
    since: Instant,
    kept: u32,
    left_out: u32,
}

impl Events {
    pub fn new(capacity: usize) -> Events {
        Events {
            capacity: capacity.max(1),
            inner: Mutex::default(),
            counts: Mutex::default(),
            bursts: Mutex::default(),
        }
    }

    /// Records and logs an event.
    pub fn record(
        &self,
        shard: &str,
        kind: &'static str,
        node: Option<&str>,
        epoch: u64,
        detail: impl Into<String>,
    ) {
        let mut detail = detail.into();
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((shard.to_string(), kind))
            .or_default() += 1;
        match self.damp(shard, kind, node) {
            None => {
                tracing::debug!(shard, kind, node, epoch, %detail, "event left out (flapping)");
                return;
            }
            Some(0) => {}
            Some(left_out) => {
                detail = format!(
                    "{detail} ({left_out} more like it in the {} s before, left out)",
                    BURST_WINDOW.as_secs()
                );
            }
        }
        match kind {
            "promotion-refused" | "promotion-failed" | "primary-down" | "fenced" => {
                tracing::warn!(shard, kind, node, epoch, %detail, "failover event")
            }
            _ => tracing::info!(shard, kind, node, epoch, %detail, "failover event"),
        }
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.seq += 1;
        let event = Event {
            seq: inner.seq,
            at_ms,
            shard: shard.to_string(),
            kind,
            node: node.map(str::to_string),
            epoch,
            detail,
        };
        let capacity = self.capacity;
        let kept = if is_routine(kind) {
            &mut inner.routine
        } else {
            &mut inner.failover
        };
        if kept.len() == capacity {
            kept.pop_front();
        }
        kept.push_back(event);
    }

    /// Whether to keep an event: `None` to leave it out, else how many like
    /// it were left out before it.
    fn damp(&self, shard: &str, kind: &'static str, node: Option<&str>) -> Option<u32> {
        if matches!(kind, "promoted" | "fenced") {
            return Some(0);
        }
        let mut bursts = self.bursts.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // Forget quiet keys, so the map stays as small as what flaps.
        if bursts.len() > 1024 {
            bursts.retain(|_, b| now.duration_since(b.since) < BURST_WINDOW);
        }
        let burst = bursts
            .entry((shard.to_string(), kind, node.map(str::to_string)))
            .or_insert(Burst {
                since: now,
                kept: 0,
                left_out: 0,
            });
        if now.duration_since(burst.since) >= BURST_WINDOW {
            let left_out = std::mem::take(&mut burst.left_out);
            burst.since = now;
            burst.kept = 1;
            return Some(left_out);
        }
        if burst.kept < BURST {
            burst.kept += 1;
            return Some(0);
        }
        burst.left_out += 1;
        None
    }

    /// How many events of each kind each shard has had.
    pub fn counts(&self) -> Vec<((String, &'static str), u64)> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Events with a sequence number above `after`, oldest first.
    pub fn since(&self, after: u64) -> Vec<Event> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut events: Vec<Event> = inner
            .failover
            .iter()
            .chain(&inner.routine)
            .filter(|e| e.seq > after)
            .cloned()
            .collect();
        events.sort_by_key(|e| e.seq);
        events
    }
}

#[derive(Default)]
struct History {
    /// The last sequence number given out.
    seq: u64,
    /// Failover, fencing and node-health events.
    failover: VecDeque<Event>,
    /// Everything [`is_routine`].
    routine: VecDeque<Event>,
}

/// Events an operator or client can cause at will, and so in floods.
fn is_routine(kind: &str) -> bool {
    [
        "policy-",
        "config-",
        "guard-",
        "script-kill",
        "switchover-",
        "client-",
        "settings-",
    ]
    .iter()
    .any(|prefix| kind.starts_with(prefix))
        || matches!(kind, "catching-up" | "caught-up" | "resync-started")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_ordered() {
        let events = Events::new(2);
        for kind in ["a", "b", "c"] {
            events.record("main", kind, None, 1, "");
        }
        let all = events.since(0);
        assert_eq!(all.iter().map(|e| e.kind).collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(events.since(2).len(), 1);
    }

    #[test]
    fn flapping_is_kept_a_few_times_and_counted() {
        let events = Events::new(1000);
        for _ in 0..100 {
            events.record("main", "primary-lost", Some("a:1"), 1, "");
            events.record("main", "primary-discovered", Some("a:1"), 1, "");
            events.record("main", "promoted", Some("b:1"), 2, "");
        }
        events.record("main", "primary-lost", Some("c:1"), 1, "another node");
        let kept = events.since(0);
        let count = |kind: &str, node: &str| {
            kept.iter()
                .filter(|e| e.kind == kind && e.node.as_deref() == Some(node))
                .count()
        };
        assert_eq!(count("primary-lost", "a:1"), BURST as usize);
        assert_eq!(count("primary-discovered", "a:1"), BURST as usize);
        assert_eq!(
            count("promoted", "b:1"),
            100,
            "promotions are never left out"
        );
        assert_eq!(count("primary-lost", "c:1"), 1);
        let counted: u64 = events
            .counts()
            .iter()
            .filter(|((_, kind), _)| *kind == "primary-lost")
            .map(|(_, n)| n)
            .sum();
        assert_eq!(counted, 101, "every event is counted");
    }

    #[test]
    fn a_flood_of_routine_events_keeps_the_failovers() {
        let events = Events::new(3);
        events.record("main", "promoted", None, 2, "");
        for _ in 0..1000 {
            events.record("main", "switchover-started", None, 2, "");
            events.record("main", "policy-rejected", None, 2, "");
        }
        let all = events.since(0);
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].kind, "promoted");
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    }
}
