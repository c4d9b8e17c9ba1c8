//! Phi accrual (Hayashibara et al.): learns each node's usual gap between
//! answered probes and judges how unlikely the current silence is, as
//! phi = -log10(P(a gap this long)). Down at `threshold`, suspect at half of
//! it or after a failed probe.
//!
//! Configuration: `threshold=8 window=100 min_std_ms=150 first_gap_ms=100`
//! (the defaults).
//!
//! Per-node state is kept in a `BTreeMap`: a `HashMap` seeds itself from
//! WASI randomness, which the sandbox does not give.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};

use rampart_sdk::algorithms;
use rampart_sdk::detector::{Guest, Health};

#[derive(Clone, Copy)]
struct Settings {
    threshold: f64,
    window: usize,
    min_std_ms: f64,
    first_gap_ms: f64,
}

#[derive(Default)]
struct NodeState {
    gaps: VecDeque<f64>,
    last_ok_ms: Option<u64>,
    last_failed: bool,
}

thread_local! {
    static SETTINGS: RefCell<Settings> = const { RefCell::new(Settings { threshold: 8.0, window: 100, min_std_ms: 150.0, first_gap_ms: 100.0 }) };
    static NODES: RefCell<BTreeMap<u32, NodeState>> = const { RefCell::new(BTreeMap::new()) };
}

fn phi(s: &Settings, n: &NodeState, now_ms: u64) -> f64 {
    let Some(last) = n.last_ok_ms else {
        return f64::INFINITY;
    };
    let (mean, std) = algorithms::gap_stats(n.gaps.iter(), s.first_gap_ms, s.min_std_ms);
    algorithms::phi(now_ms.saturating_sub(last) as f64, mean, std)
}

struct PhiAccrual;

impl Guest for PhiAccrual {
    fn configure(config: String) -> Result<(), String> {
        let mut s = SETTINGS.with(|s| *s.borrow());
        for (key, value) in rampart_sdk::algorithms::pairs(&config)? {
            let number: f64 = value
                .parse()
                .ok()
                .filter(|n: &f64| *n > 0.0 && n.is_finite())
                .ok_or_else(|| format!("{key}: expected a positive number, got {value:?}"))?;
            match key {
                "threshold" => s.threshold = number,
                "window" => s.window = (number as usize).max(2),
                "min_std_ms" => s.min_std_ms = number,
                "first_gap_ms" => s.first_gap_ms = number,
                _ => {
                    return Err(format!(
                    "unknown key {key:?} (expected threshold, window, min_std_ms, first_gap_ms)"
                ))
                }
            }
        }
        SETTINGS.with(|cell| *cell.borrow_mut() = s);
        Ok(())
    }

    fn observe(node: u32, at_ms: u64, ok: bool) {
        let window = SETTINGS.with(|s| s.borrow().window);
        NODES.with(|nodes| {
            let mut nodes = nodes.borrow_mut();
            let n = nodes.entry(node).or_insert_with(|| NodeState {
                last_failed: true,
                ..NodeState::default()
            });
            let after_failure = std::mem::replace(&mut n.last_failed, !ok);
            if !ok {
                return;
            }
            // Only gaps between consecutive answers: an outage is not the
            // rhythm of a healthy node.
            if let Some(last) = n.last_ok_ms.filter(|_| !after_failure) {
                if n.gaps.len() == window {
                    n.gaps.pop_front();
                }
                n.gaps.push_back(at_ms.saturating_sub(last) as f64);
            }
            n.last_ok_ms = Some(at_ms);
        })
    }

    fn assess(node: u32, now_ms: u64) -> Health {
        let s = SETTINGS.with(|s| *s.borrow());
        NODES.with(|nodes| {
            let nodes = nodes.borrow();
            let Some(n) = nodes.get(&node) else {
                return Health::Down;
            };
            let phi = phi(&s, n, now_ms);
            if phi >= s.threshold {
                Health::Down
            } else if n.last_failed || phi >= s.threshold / 2.0 {
                Health::Suspect
            } else {
                Health::Up
            }
        })
    }
}

rampart_sdk::detector::export_detector!(PhiAccrual);
