//! A router that misbehaves in the way its configuration names:
//!
//! - `fail-configure`: refuses its configuration
//! - `loop-in-configure`: never returns from `configure`
//! - `loop`: `route` never returns
//! - `bomb`: `route` allocates without bound
//! - `trap-after:N`: `route` works N times, then panics (a trap)
//! - `read-file`: `route` tries to read a file (a capability it is not given)
//! - `pick:ID`: a well-behaved router that sends every read to node ID

use std::cell::RefCell;

use rampart_sdk::router::{Guest, Node, Request};

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

    fn update(_nodes: Vec<Node>) {}

    fn route(_req: Request) -> Option<u32> {
        let (mode, calls) = STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.calls += 1;
            (s.mode.clone(), s.calls)
        });
        if mode == "loop" {
            loop {
                std::hint::black_box(calls);
            }
        }
        if mode == "bomb" {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        if let Some(n) = mode.strip_prefix("trap-after:") {
            if calls > n.parse().unwrap_or(0) {
                panic!("trap on call {calls}");
            }
        }
        if mode == "read-file" {
            let secret = std::fs::read("/etc/passwd").map(|b| b.len()).unwrap_or(0);
            return Some(secret as u32);
        }
        mode.strip_prefix("pick:").and_then(|id| id.parse().ok())
    }
}

rampart_sdk::router::export_router!(Hostile);
