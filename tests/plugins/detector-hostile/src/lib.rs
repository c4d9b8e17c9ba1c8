//! A detector that judges from history and misbehaves as its
//! configuration says:
//!
//! - `trap-assess:N`: the instance's N-th `assess` call panics (a trap)
//!
//! A node is up once this instance has seen at least three of its probe
//! results and the latest answered; down otherwise. So a fresh instance
//! that was not given the history judges every node down.

use std::cell::RefCell;
use std::collections::BTreeMap;

use rampart_sdk::detector::{Guest, Health};

#[derive(Default)]
struct State {
    trap_assess: Option<u64>,
    assessed: u64,
    /// Per node: results seen, and whether the latest answered.
    seen: BTreeMap<u32, (u64, bool)>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct Hostile;

impl Guest for Hostile {
    fn configure(config: String) -> Result<(), String> {
        let trap_assess = match config.split_once(':') {
            Some(("trap-assess", n)) => Some(n.parse().map_err(|_| format!("bad count {n:?}"))?),
            None if config.is_empty() => None,
            _ => return Err(format!("unknown mode {config:?}")),
        };
        STATE.with(|s| s.borrow_mut().trap_assess = trap_assess);
        Ok(())
    }

    fn observe(node: u32, _at_ms: u64, ok: bool) {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            let seen = s.seen.entry(node).or_default();
            seen.0 += 1;
            seen.1 = ok;
        });
    }

    fn assess(node: u32, _now_ms: u64) -> Health {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.assessed += 1;
            if Some(s.assessed) == s.trap_assess {
                panic!("trap on assess call {}", s.assessed);
            }
            match s.seen.get(&node) {
                Some(&(count, true)) if count >= 3 => Health::Up,
                _ => Health::Down,
            }
        })
    }
}

rampart_sdk::detector::export_detector!(Hostile);
