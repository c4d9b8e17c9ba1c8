//! The last minutes of what the dashboard charts, sampled once a second:
//! requests and errors per second per shard, request latency (p50, p99)
//! per class, each replica's lag, and the clients each shard holds during
//! a failover. Kept here rather than only in the page so a dashboard
//! opened during an incident shows what led up to it. Bounded: the last
//! [`KEPT`] samples, a few hundred bytes each.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::counters::{Metrics, BUCKETS_US, CLASSES};
use crate::topology::{ReplicaSet, Role};

/// Samples kept: ten minutes at one a second.
pub const KEPT: usize = 600;
/// How often a sample is taken.
pub const INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Wall-clock time of the sample, in milliseconds since the epoch (as
    /// events carry theirs).
    pub at_ms: u64,
    pub shards: Vec<ShardSample>,
    /// Per class (`read`, `write`, `other`), over the last interval; none
    /// when the class saw no request.
    pub latency: Vec<ClassLatency>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardSample {
    pub name: String,
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    pub held_clients: usize,
    /// Each replica's lag behind the primary, by address.
    pub lag_ms: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassLatency {
    pub class: &'static str,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// The samples taken after `after_ms`, oldest first.
    pub fn since(&self, after_ms: u64) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples
            .iter()
            .filter(|s| s.at_ms > after_ms)
            .cloned()
            .collect()
    }

    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }
}

/// The counters at the last sample, to turn totals into rates.
#[derive(Default)]
struct Previous {
    /// Per shard (by name: shards come and go): requests and errors of
    /// all its nodes.
    shards: Vec<(String, (u64, u64))>,
    /// Per class: each latency bucket's count.
    buckets: Vec<Vec<u64>>,
}

/// Samples every [`INTERVAL`] until `shutdown` fires.
pub async fn sample(
    history: Arc<History>,
    topology: Arc<crate::topology::Topology>,
    metrics: Arc<Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: Option<(tokio::time::Instant, Previous)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = tokio::time::Instant::now();
        let shards = topology.shards();
        let current = read(&shards, &metrics);
        if let Some((at, before)) = &previous {
            let seconds = now.duration_since(*at).as_secs_f64().max(0.001);
            history.push(difference(&shards, before, &current, seconds));
        }
        previous = Some((now, current));
    }
}

fn read(shards: &[Arc<ReplicaSet>], metrics: &Metrics) -> Previous {
    Previous {
        shards: shards
            .iter()
            .map(|shard| {
                let counts = shard.nodes.iter().fold((0, 0), |(r, e), node| {
                    let errors = node.pool.stats().failed_requests.load(Ordering::Relaxed);
                    (r + node.requests.load(Ordering::Relaxed), e + errors)
                });
                (shard.name.clone(), counts)
            })
            .collect(),
        buckets: CLASSES
            .iter()
            .map(|(class, _)| {
                metrics.latency[*class as usize]
                    .counts
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .collect()
            })
            .collect(),
    }
}

fn difference(
    shards: &[Arc<ReplicaSet>],
    before: &Previous,
    now: &Previous,
    seconds: f64,
) -> Sample {
    let per_second = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
    let earlier = |name: &str| {
        before
            .shards
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, counts)| *counts)
    };
    let shards = shards
        .iter()
        .zip(&now.shards)
        .filter_map(|(shard, (name, now))| Some((shard, earlier(name)?, *now)))
        .map(|(shard, (r0, e0), (r1, e1))| ShardSample {
            name: shard.name.clone(),
            requests_per_s: per_second(r0, r1),
            errors_per_s: per_second(e0, e1),
            held_clients: shard.held.load(Ordering::Relaxed),
            lag_ms: shard
                .nodes
                .iter()
                .filter(|n| n.role() == Role::Replica)
                .map(|n| (n.addr.clone(), n.lag_ms()))
                .collect(),
        })
        .collect();
    let latency = CLASSES
        .iter()
        .zip(before.buckets.iter().zip(&now.buckets))
        .filter_map(|((_, name), (b0, b1))| {
            let counts: Vec<u64> = b0
                .iter()
                .zip(b1)
                .map(|(a, b)| b.saturating_sub(*a))
                .collect();
            Some(ClassLatency {
                class: name,
                p50_ms: quantile(&counts, 0.5)?,
                p99_ms: quantile(&counts, 0.99)?,
            })
        })
        .collect();
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Sample {
        at_ms,
        shards,
        latency,
    }
}

/// The `q` quantile of a histogram's bucket counts, in milliseconds,
/// interpolated within its bucket as Prometheus's `histogram_quantile`
/// does; `None` for an empty histogram. The last bucket (+Inf) counts as
/// its lower bound.
fn quantile(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, &count) in counts.iter().enumerate() {
        if count > 0 && (seen + count) as f64 >= rank {
            let lower = if i == 0 { 0 } else { BUCKETS_US[i - 1] };
            let Some(&upper) = BUCKETS_US.get(i) else {
                return Some(lower as f64 / 1000.0);
            };
            let within = (rank - seen as f64) / count as f64;
            return Some((lower as f64 + within * (upper - lower) as f64) / 1000.0);
        }
        seen += count;
    }
    Some(BUCKETS_US[BUCKETS_US.len() - 1] as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut counts = vec![0u64; BUCKETS_US.len() + 1];
        assert_eq!(quantile(&counts, 0.5), None);
        // 100 requests between 250 and 500 us.
        counts[2] = 100;
        assert_eq!(quantile(&counts, 0.5), Some(0.375));
        // One slow request past every bound.
        counts[BUCKETS_US.len()] = 1;
        assert_eq!(quantile(&counts, 1.0), Some(5000.0));
        assert!(quantile(&counts, 0.99).unwrap() < 0.5);
    }
}
