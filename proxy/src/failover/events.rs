//! A bounded history of what the control loop did (discoveries, failovers,
//! fencing, refusals), for `GET /v1/events` and the dashboard. Each event is
//! also logged, inside the span of the step that caused it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

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
    inner: Mutex<(u64, VecDeque<Event>)>,
    /// Every event ever recorded, by shard and kind (the history forgets;
    /// these counters do not).
    counts: Mutex<std::collections::BTreeMap<(String, &'static str), u64>>,
}

impl Events {
    pub fn new(capacity: usize) -> Events {
        Events {
            capacity: capacity.max(1),
            inner: Mutex::new((0, VecDeque::new())),
            counts: Mutex::default(),
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
        let detail = detail.into();
        match kind {
            "promotion-refused" | "promotion-failed" | "primary-down" | "fenced" => {
                tracing::warn!(shard, kind, node, epoch, %detail, "failover event")
            }
            _ => tracing::info!(shard, kind, node, epoch, %detail, "failover event"),
        }
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((shard.to_string(), kind))
            .or_default() += 1;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.0 += 1;
        let event = Event {
            seq: inner.0,
            at_ms,
            shard: shard.to_string(),
            kind,
            node: node.map(str::to_string),
            epoch,
            detail,
        };
        if inner.1.len() == self.capacity {
            inner.1.pop_front();
        }
        inner.1.push_back(event);
    }

    /// How many events of each kind each shard has had.
    pub fn counts(&self) -> Vec<((String, &'static str), u64)> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Events with a sequence number above `after`, oldest first.
    pub fn since(&self, after: u64) -> Vec<Event> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.1.iter().filter(|e| e.seq > after).cloned().collect()
    }
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
}
