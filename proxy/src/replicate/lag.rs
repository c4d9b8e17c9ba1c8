//! Replication lag in time, from offsets alone.
//!
//! Redis reports a replica's lag in bytes (how far its offset trails the
//! primary's) and only coarsely in seconds. Rampart remembers when the
//! primary's offset passed each value it probed, so a replica at offset `o`
//! is behind by the time since the primary first went past `o`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Samples of the primary's offset, oldest first.
#[derive(Default)]
pub struct OffsetHistory {
    samples: VecDeque<(Instant, u64)>,
    /// When the last sample was taken, changed or not.
    last_at: Option<Instant>,
}

/// Samples kept: at the default 100 ms probe interval, about 100 s.
const KEEP: usize = 1024;

impl OffsetHistory {
    /// Records the primary's offset as probed at `at`.
    pub fn record(&mut self, at: Instant, offset: u64) {
        self.last_at = Some(self.last_at.map_or(at, |last| last.max(at)));
        if self.samples.back().is_some_and(|&(_, last)| last == offset) {
            return;
        }
        if self.samples.back().is_some_and(|&(_, last)| offset < last) {
            // A new primary with its own offsets: start over.
            self.samples.clear();
        }
        if self.samples.len() == KEEP {
            self.samples.pop_front();
        }
        self.samples.push_back((at, offset));
    }

    /// How far behind a replica at `offset` is at `now`: zero when it has
    /// everything the primary had at its last probe.
    pub fn lag(&self, offset: u64, now: Instant) -> Duration {
        // The first sample past the replica's offset is when the primary
        // had something the replica still lacks.
        match self.samples.iter().find(|&&(_, o)| o > offset) {
            Some(&(at, _)) => now.saturating_duration_since(at),
            None => Duration::ZERO,
        }
    }

    /// The primary's offset at its first probe taken at or after `since`:
    /// every write acknowledged before `since` is below it. `None` when no
    /// probe has been taken since.
    pub fn covering(&self, since: Instant) -> Option<u64> {
        // Samples are kept only when the offset moved: the first one after
        // `since`, or failing that the last one if a probe since found it
        // unchanged.
        if let Some(&(_, offset)) = self.samples.iter().find(|&&(at, _)| at >= since) {
            return Some(offset);
        }
        let last = self.samples.back()?.1;
        self.last_at.filter(|&at| at >= since).map(|_| last)
    }

    /// The offset of the first sample.
    pub fn first(&self) -> Option<u64> {
        self.samples.front().map(|&(_, offset)| offset)
    }

    /// The offset of the last sample.
    pub fn last(&self) -> Option<u64> {
        self.samples.back().map(|&(_, offset)| offset)
    }

    pub fn clear(&mut self) {
        self.samples.clear();
        self.last_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_time_since_the_primary_passed_the_offset() {
        let t0 = Instant::now();
        let mut h = OffsetHistory::default();
        h.record(t0, 100);
        h.record(t0 + Duration::from_millis(100), 200);
        h.record(t0 + Duration::from_millis(200), 300);
        let now = t0 + Duration::from_millis(250);
        assert_eq!(h.lag(300, now), Duration::ZERO);
        assert_eq!(h.lag(250, now), Duration::from_millis(50));
        assert_eq!(h.lag(150, now), Duration::from_millis(150));
        assert_eq!(h.lag(0, now), Duration::from_millis(250));
    }

    #[test]
    fn covering_is_the_first_probe_at_or_after_the_moment() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut h = OffsetHistory::default();
        assert_eq!(h.covering(t0), None);
        h.record(t0, 100);
        h.record(t0 + ms(100), 200);
        // Unchanged: no new sample, but the probe happened.
        h.record(t0 + ms(200), 200);
        assert_eq!(h.covering(t0), Some(100));
        assert_eq!(h.covering(t0 + ms(50)), Some(200));
        assert_eq!(h.covering(t0 + ms(150)), Some(200));
        assert_eq!(h.covering(t0 + ms(250)), None);
        h.clear();
        assert_eq!(h.covering(t0), None);
    }
}
