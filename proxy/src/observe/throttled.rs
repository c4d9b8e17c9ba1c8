//! Log lines a flood cannot multiply: one place logs at most once a
//! period, and says how many it kept quiet about meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct Throttled {
    period_s: u64,
    last_s: AtomicU64,
    quiet: AtomicU64,
}

impl Throttled {
    pub const fn every(period_s: u64) -> Throttled {
        Throttled {
            period_s,
            last_s: AtomicU64::new(0),
            quiet: AtomicU64::new(0),
        }
    }

    /// Whether to log now; if so, how many were not logged since the last.
    pub fn due(&self) -> Option<u64> {
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_s.load(Ordering::Relaxed);
        if now_s < last + self.period_s
            || self
                .last_s
                .compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.quiet.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.quiet.swap(0, Ordering::Relaxed))
    }
}
