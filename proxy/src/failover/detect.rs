//! The detector decision: from the history of probe results, is a node up,
//! suspect or down? One small trait, so another algorithm (phi accrual, a
//! Wasm detector plugin) slots in beside the fixed timeout.

use std::time::{Duration, Instant};

use crate::topology::Health;

pub trait Detector: Send {
    /// A probe started at `at` answered (`ok`) or failed.
    fn observe(&mut self, at: Instant, ok: bool);

    /// The verdict at `now`.
    fn verdict(&self, now: Instant) -> Health;
}

/// Down after no successful probe for `down_after` (Sentinel's
/// `down-after-milliseconds`); suspect as soon as one fails.
pub struct FixedTimeout {
    down_after: Duration,
    last_ok: Option<Instant>,
    last_failed: bool,
}

impl FixedTimeout {
    pub fn new(down_after: Duration) -> FixedTimeout {
        FixedTimeout {
            down_after,
            last_ok: None,
            last_failed: true,
        }
    }
}

impl Detector for FixedTimeout {
    fn observe(&mut self, at: Instant, ok: bool) {
        if ok {
            self.last_ok = Some(at);
        }
        self.last_failed = !ok;
    }

    fn verdict(&self, now: Instant) -> Health {
        if !self.last_failed {
            return Health::Up;
        }
        match self.last_ok {
            Some(t) if now.saturating_duration_since(t) < self.down_after => Health::Suspect,
            _ => Health::Down,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_timeout() {
        let t0 = Instant::now();
        let mut d = FixedTimeout::new(Duration::from_millis(1000));
        assert_eq!(d.verdict(t0), Health::Down, "never seen");
        d.observe(t0, true);
        assert_eq!(d.verdict(t0), Health::Up);
        d.observe(t0 + Duration::from_millis(100), false);
        assert_eq!(d.verdict(t0 + Duration::from_millis(600)), Health::Suspect);
        assert_eq!(d.verdict(t0 + Duration::from_millis(1000)), Health::Down);
        d.observe(t0 + Duration::from_millis(1100), true);
        assert_eq!(d.verdict(t0 + Duration::from_millis(1100)), Health::Up);
    }
}
