//! What the probes' history says about a node before it fails: its memory
//! against `maxmemory` (sampled about once a second), and its last probes:
//! how many failed, how close the detector came to judging it down, and
//! how long its answers take now against how long they usually take.
//! `observe/risks.rs` turns these into events; `/metrics` exports them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

/// A node's memory as the probes sample it (about once a second).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Memory {
    /// `used_memory`, bytes.
    pub used: u64,
    /// `maxmemory`, bytes; 0: no limit.
    pub max: u64,
    /// How fast `used` grows, bytes per second, smoothed over the last
    /// samples (negative: it shrinks).
    pub growth: f64,
    at: Option<std::time::Instant>,
}

impl Memory {
    /// The sample after this one: growth smoothed (a weight of 0.3 for the
    /// newest rate) so one burst does not read as a trend.
    pub(super) fn next(self, used: u64, max: u64, now: std::time::Instant) -> Memory {
        let growth = match self.at {
            Some(at) if now > at => {
                let rate = (used as f64 - self.used as f64) / (now - at).as_secs_f64();
                0.7 * self.growth + 0.3 * rate
            }
            _ => 0.0,
        };
        Memory {
            used,
            max,
            growth,
            at: Some(now),
        }
    }
}

/// Probes remembered: a failure this many probes ago is forgotten.
const WINDOW: usize = 60;
/// The latest probes whose median round trip is the node's latency now.
const RECENT: usize = 16;
/// Answered probes among them needed for a median.
const RECENT_MIN: usize = 8;
/// The latest probes whose median round trip routers see: enough that one
/// or two slow answers (a busy moment on either side) do not send every
/// read elsewhere, few enough that a node that stays slow is seen within
/// three probes.
const ROUTING: usize = 5;
/// How slowly the baseline follows the latency: a new level that lasts
/// becomes the node's normal over about this long (an hour), so a drift
/// is visible for many minutes before it is taken as the new normal.
const BASELINE_TAU_S: f64 = 3600.0;

/// One probe as the trend keeps it.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    missed: bool,
    /// The detector's suspicion after the probe (see
    /// `failover::detect::Detector::suspicion`).
    suspicion: f64,
    /// Round trip in seconds, when answered with the node's state.
    rtt_s: Option<f64>,
}

/// A node's last probes.
#[derive(Debug, Default)]
pub struct ProbeTrend {
    outcomes: VecDeque<Outcome>,
    /// The node's usual latency, seconds: the mean of the first
    /// `WINDOW` medians, then an exponential average of them.
    baseline_s: Option<f64>,
    folded: usize,
    at: Option<Instant>,
}

/// What a node's last probes show.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TrendView {
    /// Probes remembered (up to 60).
    pub probes: usize,
    /// How many of them failed (the node did not answer in time).
    pub missed: usize,
    /// The detector's highest suspicion over them: 0 answering as usual,
    /// 1 judged down.
    pub suspicion: f64,
    /// The median round trip of the latest answered probes, seconds.
    pub latency_s: Option<f64>,
    /// The node's own usual latency, seconds; known after 60 probes.
    pub baseline_s: Option<f64>,
}

impl ProbeTrend {
    pub(super) fn record(
        &mut self,
        missed: bool,
        suspicion: f64,
        rtt: Option<Duration>,
        now: Instant,
    ) {
        if self.outcomes.len() == WINDOW {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back(Outcome {
            missed,
            suspicion: suspicion.clamp(0.0, 1.0),
            rtt_s: rtt.map(|d| d.as_secs_f64()),
        });
        let Some(median) = self.recent_latency() else {
            return;
        };
        let baseline = match self.baseline_s {
            None => median,
            Some(b) if self.folded < WINDOW => b + (median - b) / (self.folded + 1) as f64,
            Some(b) => {
                let dt = self
                    .at
                    .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
                b + (median - b) * (1.0 - (-dt / BASELINE_TAU_S).exp())
            }
        };
        self.baseline_s = Some(baseline);
        self.folded += 1;
        self.at = Some(now);
    }

    /// The median round trip of the answered probes among the latest
    /// `RECENT`: one slow answer is not a drift, half of them are.
    fn recent_latency(&self) -> Option<f64> {
        self.median_of_latest(RECENT, RECENT_MIN)
    }

    /// The latency routers are given: the median round trip of the
    /// answered probes among the latest [`ROUTING`], none before a probe
    /// was answered.
    pub(super) fn routing_latency(&self) -> Option<f64> {
        self.median_of_latest(ROUTING, 1)
    }

    /// The median round trip of the answered probes among the latest
    /// `latest`, if at least `min` were answered.
    fn median_of_latest(&self, latest: usize, min: usize) -> Option<f64> {
        let mut rtts: Vec<f64> = self
            .outcomes
            .iter()
            .rev()
            .take(latest)
            .filter_map(|o| o.rtt_s)
            .collect();
        if rtts.is_empty() || rtts.len() < min {
            return None;
        }
        rtts.sort_by(f64::total_cmp);
        Some(rtts[rtts.len() / 2])
    }

    pub(super) fn view(&self) -> TrendView {
        TrendView {
            probes: self.outcomes.len(),
            missed: self.outcomes.iter().filter(|o| o.missed).count(),
            suspicion: self
                .outcomes
                .iter()
                .map(|o| o.suspicion)
                .fold(0.0, f64::max),
            latency_s: self.recent_latency(),
            baseline_s: self.baseline_s.filter(|_| self.outcomes.len() == WINDOW),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn routers_see_the_median_of_the_latest_probes() {
        let t0 = Instant::now();
        let mut trend = ProbeTrend::default();
        assert_eq!(trend.routing_latency(), None);
        for rtt in [1, 1, 1, 40, 1] {
            trend.record(false, 0.0, ms(rtt), t0);
        }
        // One slow answer among five is not the node's latency.
        assert_eq!(trend.routing_latency(), Some(0.001));
        for _ in 0..3 {
            trend.record(false, 0.0, ms(20), t0);
        }
        // Three of the latest five slow: it is.
        assert_eq!(trend.routing_latency(), Some(0.020));
    }

    #[test]
    fn misses_are_forgotten_after_a_window() {
        let t0 = Instant::now();
        let mut trend = ProbeTrend::default();
        trend.record(true, 0.6, None, t0);
        trend.record(true, 0.8, None, t0);
        let view = trend.view();
        assert_eq!((view.missed, view.suspicion), (2, 0.8));
        for _ in 0..WINDOW {
            trend.record(false, 0.0, ms(1), t0);
        }
        let view = trend.view();
        assert_eq!((view.probes, view.missed, view.suspicion), (WINDOW, 0, 0.0));
    }

    #[test]
    fn latency_is_judged_against_the_nodes_own_baseline() {
        let t0 = Instant::now();
        let mut trend = ProbeTrend::default();
        for i in 0..WINDOW as u64 {
            // One slow answer in ten: the median ignores it.
            let rtt = if i % 10 == 0 { 50 } else { 1 };
            trend.record(false, 0.0, ms(rtt), t0 + Duration::from_secs(i));
        }
        let view = trend.view();
        assert_eq!(view.latency_s, Some(0.001));
        let baseline = view.baseline_s.unwrap();
        assert!((baseline - 0.001).abs() < 0.0005, "{baseline}");
        // Slow from now on: the median follows within half of RECENT,
        // the baseline barely moves in a minute.
        for i in 0..RECENT as u64 {
            trend.record(false, 0.0, ms(20), t0 + Duration::from_secs(60 + i));
        }
        let view = trend.view();
        assert_eq!(view.latency_s, Some(0.020));
        assert!(view.baseline_s.unwrap() < 0.002, "{view:?}");
    }
}
