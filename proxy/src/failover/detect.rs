//! The detector decision: from the history of probe results, is a node up,
//! suspect or down? One small trait, so another algorithm (phi accrual, a
//! Wasm detector plugin) slots in beside the fixed timeout.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rampart_sdk::algorithms;

use crate::config::{DetectorKind, ProbeConfig};
use crate::observe::policy_view::PolicyView;
use crate::policy::slot::{Generation, GenerationView};
use crate::topology::Health;

pub trait Detector: Send {
    /// A probe started at `at` answered (`ok`) or failed.
    fn observe(&mut self, at: Instant, ok: bool);

    /// The verdict at `now`.
    fn verdict(&mut self, now: Instant) -> Health;

    /// How close the node is to being judged down at `now`: 0 answering as
    /// usual, 1 down. The early warning watches it rise for nodes that
    /// have not failed (yet). A detector that cannot say more than its
    /// verdict gives a half for suspect.
    fn suspicion(&mut self, now: Instant) -> f64 {
        match self.verdict(now) {
            Health::Up => 0.0,
            Health::Suspect => 0.5,
            Health::Down => 1.0,
        }
    }
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

    fn verdict(&mut self, now: Instant) -> Health {
        if !self.last_failed {
            return Health::Up;
        }
        match self.last_ok {
            Some(t) if now.saturating_duration_since(t) < self.down_after => Health::Suspect,
            _ => Health::Down,
        }
    }

    /// The silence since the last answer, as a share of `down_after`.
    fn suspicion(&mut self, now: Instant) -> f64 {
        match self.last_ok {
            _ if !self.last_failed => 0.0,
            Some(t) => {
                let silence = now.saturating_duration_since(t).as_secs_f64();
                (silence / self.down_after.as_secs_f64().max(1e-3)).min(1.0)
            }
            None => 1.0,
        }
    }
}

/// Phi accrual (Hayashibara et al., as in Akka and Cassandra): learns the
/// usual gap between successful probes and says how unlikely the current
/// silence is, as phi = -log10(P(a gap this long)). Down above `threshold`,
/// suspect above half of it or after a failed probe. It adapts to a node
/// whose answers are slow but steady, where a fixed timeout must be set
/// for the worst case.
pub struct PhiAccrual {
    threshold: f64,
    window: usize,
    min_std_ms: f64,
    gaps_ms: VecDeque<f64>,
    /// The gap assumed before any has been seen (the probe interval), so a
    /// node that dies right after its first answer is still judged.
    first_gap_ms: f64,
    last_ok: Option<Instant>,
    last_failed: bool,
}

impl PhiAccrual {
    pub fn new(
        threshold: f64,
        window: usize,
        min_std: Duration,
        first_gap: Duration,
    ) -> PhiAccrual {
        PhiAccrual {
            threshold,
            window: window.max(2),
            min_std_ms: min_std.as_secs_f64() * 1000.0,
            gaps_ms: VecDeque::new(),
            first_gap_ms: first_gap.as_secs_f64() * 1000.0,
            last_ok: None,
            last_failed: true,
        }
    }

    /// Phi at `now`.
    pub fn phi(&self, now: Instant) -> f64 {
        let Some(last) = self.last_ok else {
            return f64::INFINITY;
        };
        let (mean, std) =
            algorithms::gap_stats(self.gaps_ms.iter(), self.first_gap_ms, self.min_std_ms);
        let elapsed = now.saturating_duration_since(last).as_secs_f64() * 1000.0;
        algorithms::phi(elapsed, mean, std)
    }
}

impl Detector for PhiAccrual {
    fn observe(&mut self, at: Instant, ok: bool) {
        let after_failure = std::mem::replace(&mut self.last_failed, !ok);
        if !ok {
            return;
        }
        // Only gaps between consecutive answers are learnt: an outage is
        // not what a healthy node's rhythm looks like.
        if let Some(last) = self.last_ok.filter(|_| !after_failure) {
            if self.gaps_ms.len() == self.window {
                self.gaps_ms.pop_front();
            }
            self.gaps_ms
                .push_back(at.saturating_duration_since(last).as_secs_f64() * 1000.0);
        }
        self.last_ok = Some(at);
    }

    fn verdict(&mut self, now: Instant) -> Health {
        let phi = self.phi(now);
        if phi >= self.threshold {
            Health::Down
        } else if self.last_failed || phi >= self.threshold / 2.0 {
            Health::Suspect
        } else {
            Health::Up
        }
    }

    /// Phi as a share of the threshold.
    fn suspicion(&mut self, now: Instant) -> f64 {
        (self.phi(now) / self.threshold).clamp(0.0, 1.0)
    }
}

/// A detector that is not built in (a plugin): it makes one detector per
/// node's probe, and says what it is for the admin views.
pub trait DetectorMaker: Send + Sync {
    fn for_node(self: Arc<Self>, node: u32) -> Box<dyn Detector>;
    fn describe(&self) -> PolicyView;
}

/// Which detector judges the nodes: a built-in with its settings, or a
/// plugin.
pub enum DetectorChoice {
    Builtin(ProbeConfig),
    Plugin(Arc<dyn DetectorMaker>),
}

/// Where every probe gets its detector. Replacing the choice at runtime
/// (`RAMPART POLICY LOAD detector ...`) bumps a generation; each probe
/// notices at its next round and starts over with the new detector (a
/// fresh history, judged by the new rules from then on).
pub struct DetectorSource {
    current: ArcSwap<Generation<DetectorChoice>>,
}

impl DetectorSource {
    pub fn new(first: Generation<DetectorChoice>) -> DetectorSource {
        DetectorSource {
            current: ArcSwap::from_pointee(first),
        }
    }

    pub fn replace(&self, next: Generation<DetectorChoice>) {
        self.current.store(Arc::new(next));
    }

    pub fn generation(&self) -> u64 {
        self.current.load().number
    }

    /// A detector for one node's probe, and the generation it belongs to.
    pub fn for_node(&self, node: u32) -> (u64, Box<dyn Detector>) {
        let current = self.current.load();
        let detector = match &current.policy {
            DetectorChoice::Builtin(config) => build(config),
            DetectorChoice::Plugin(plugin) => plugin.clone().for_node(node),
        };
        (current.number, detector)
    }

    pub fn describe(&self) -> GenerationView {
        let current = self.current.load();
        let policy = match &current.policy {
            DetectorChoice::Builtin(config) => PolicyView::native(config.detector.name()),
            DetectorChoice::Plugin(plugin) => plugin.describe(),
        };
        current.view_with(policy)
    }
}

/// The built-in detector `config` asks for.
pub fn build(config: &ProbeConfig) -> Box<dyn Detector> {
    match config.detector {
        DetectorKind::FixedTimeout => Box::new(FixedTimeout::new(Duration::from_millis(
            config.down_after_ms,
        ))),
        DetectorKind::PhiAccrual => Box::new(PhiAccrual::new(
            config.phi_threshold,
            config.phi_window,
            Duration::from_millis(config.phi_min_std_ms),
            Duration::from_millis(config.interval_ms),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_accrual_grows_with_silence() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = PhiAccrual::new(8.0, 100, ms(100), ms(100));
        assert_eq!(d.verdict(t0), Health::Down, "never seen");
        d.observe(t0, true);
        assert_eq!(
            d.verdict(t0 + ms(5000)),
            Health::Down,
            "one answer, then silence"
        );
        let mut d = PhiAccrual::new(8.0, 100, ms(100), ms(100));
        for i in 0..20 {
            d.observe(t0 + ms(100 * i), true);
        }
        let last = t0 + ms(1900);
        assert_eq!(d.verdict(last + ms(50)), Health::Up);
        assert!(d.phi(last + ms(300)) < d.phi(last + ms(600)));
        assert!(d.suspicion(last + ms(300)) < d.suspicion(last + ms(600)));
        assert_eq!(d.suspicion(last + ms(5000)), 1.0);
        assert_eq!(d.verdict(last + ms(2000)), Health::Down);
        d.observe(last + ms(2000), false);
        assert_eq!(d.verdict(last + ms(2000)), Health::Down);
        d.observe(last + ms(2100), true);
        assert_eq!(d.verdict(last + ms(2100)), Health::Up);
    }

    #[test]
    fn a_detector_that_only_gives_verdicts_is_half_suspicious_when_suspect() {
        struct Says(Health);
        impl Detector for Says {
            fn observe(&mut self, _: Instant, _: bool) {}
            fn verdict(&mut self, _: Instant) -> Health {
                self.0
            }
        }
        let now = Instant::now();
        assert_eq!(Says(Health::Up).suspicion(now), 0.0);
        assert_eq!(Says(Health::Suspect).suspicion(now), 0.5);
        assert_eq!(Says(Health::Down).suspicion(now), 1.0);
    }

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
        assert_eq!(d.suspicion(t0 + Duration::from_millis(500)), 0.5);
        d.observe(t0 + Duration::from_millis(1100), true);
        assert_eq!(d.verdict(t0 + Duration::from_millis(1100)), Health::Up);
        assert_eq!(d.suspicion(t0 + Duration::from_millis(1100)), 0.0);
    }
}
