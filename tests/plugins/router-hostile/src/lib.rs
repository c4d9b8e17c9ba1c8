//! A router that misbehaves in the way its configuration names:
//!
//! - `fail-configure`: refuses its configuration
//! - `loop-in-configure`: never returns from `configure`
//! - `loop`: `route` never returns
//! - `bomb`: `route` allocates far past any memory cap
//! - `trap`: `route` panics (a trap)
//! - `read-file`: `route` tries to read a file (a capability it is not given)
//! - `<any of the four>-after:N`: `route` behaves for N calls first (long
//!   enough to pass Rampart's self-check), then misbehaves
//! - `pick:ID`: a well-behaved router that sends every read to node ID
//! - `plan:ID`: the same as a plan (`rotate [ID]`), carried out by the host
//! - `loop-in-update`: `update` never returns
//!
//! Every mode but `plan:` decides per read (`per-read`), so `route` runs.

use std::cell::RefCell;

use rampart_sdk::router::{Guest, Node, Plan, Request};

#[derive(Default)]
struct State {
    mode: String,
    calls: u64,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct Hostile;

impl Guest for Hostile {
    fn configure(config: String) -> Result<(), String> {
        match config.as_str() {
            "fail-configure" => return Err("this plugin refuses every configuration".into()),
            "loop-in-configure" => loop {
                std::hint::black_box(0);
            },
            _ => {}
        }
        STATE.with(|s| s.borrow_mut().mode = config);
        Ok(())
    }

    fn update(_nodes: Vec<Node>, _local_zone: u32) -> Plan {
        let mode = STATE.with(|s| s.borrow().mode.clone());
        if mode == "loop-in-update" {
            loop {
                std::hint::black_box(0);
            }
        }
        match mode.strip_prefix("plan:").and_then(|id| id.parse().ok()) {
            Some(id) => Plan::Rotate(vec![id]),
            None => Plan::PerRead,
        }
    }

    fn route(_req: Request) -> Option<u32> {
        let (mode, calls) = STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.calls += 1;
            (s.mode.clone(), s.calls)
        });
        if let Some(id) = mode.strip_prefix("pick:") {
            return id.parse().ok();
        }
        let (action, good_calls) = match mode.split_once("-after:") {
            Some((action, n)) => (action, n.parse().unwrap_or(0)),
            None => (mode.as_str(), 0),
        };
        if calls <= good_calls {
            return None;
        }
        match action {
            "loop" => loop {
                std::hint::black_box(calls);
            },
            "bomb" => {
                // One allocation far past the sandbox's memory cap.
                let hoard: Vec<u8> = Vec::with_capacity(64 << 20);
                std::hint::black_box(&hoard);
                Some(hoard.capacity() as u32)
            }
            "trap" => panic!("trap on call {calls}"),
            "read-file" => {
                let secret = std::fs::read("/etc/passwd").map(|b| b.len()).unwrap_or(0);
                Some(secret as u32)
            }
            _ => None,
        }
    }
}

rampart_sdk::router::export_router!(Hostile);
