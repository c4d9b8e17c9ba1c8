//! Down after no successful probe for `down_after_ms` (Sentinel's
//! down-after-milliseconds); suspect as soon as one fails.
//!
//! Configuration: `down_after_ms=1000` (the default).

use std::cell::RefCell;
use std::collections::BTreeMap;

use rampart_sdk::detector::{Guest, Health};

#[derive(Default)]
struct NodeState {
    last_ok_ms: Option<u64>,
    last_failed: bool,
}

struct State {
    down_after_ms: u64,
    nodes: BTreeMap<u32, NodeState>,
}

thread_local! {
    static STATE: RefCell<State> = const { RefCell::new(State { down_after_ms: 1000, nodes: BTreeMap::new() }) };
}

struct FixedTimeout;

impl Guest for FixedTimeout {
    fn configure(config: String) -> Result<(), String> {
        let mut down_after_ms = 1000;
        for (key, v) in rampart_sdk::algorithms::pairs(&config)? {
            match key {
                "down_after_ms" => {
                    down_after_ms = v.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                        format!("down_after_ms: expected a number above 0, got {v:?}")
                    })?
                }
                _ => return Err(format!("unknown key {key:?} (expected down_after_ms)")),
            }
        }
        STATE.with(|s| s.borrow_mut().down_after_ms = down_after_ms);
        Ok(())
    }

    fn observe(node: u32, at_ms: u64, ok: bool) {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            let n = s.nodes.entry(node).or_insert_with(|| NodeState {
                last_failed: true,
                ..NodeState::default()
            });
            if ok {
                n.last_ok_ms = Some(at_ms);
            }
            n.last_failed = !ok;
        })
    }

    fn assess(node: u32, now_ms: u64) -> Health {
        STATE.with(|s| {
            let s = s.borrow();
            let Some(n) = s.nodes.get(&node) else {
                return Health::Down;
            };
            if !n.last_failed {
                return Health::Up;
            }
            match n.last_ok_ms {
                Some(t) if now_ms.saturating_sub(t) < s.down_after_ms => Health::Suspect,
                _ => Health::Down,
            }
        })
    }
}

rampart_sdk::detector::export_detector!(FixedTimeout);
