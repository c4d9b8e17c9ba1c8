//! An example router, written the way a Rampart user would write one.
//!
//! Reads of keys that start with a configured prefix (say `session:`, data
//! that must never be read stale) go to the primary; every other read goes
//! to the nearest replica: the one whose latest probes answered fastest.
//!
//! Configuration: `prefix=session:` (several prefixes: `prefix=a: prefix=b:`).

use std::cell::RefCell;

use rampart_sdk::router::{log, CommandClass, Guest, Level, Node, Plan, Request};

#[derive(Default)]
struct State {
    prefixes: Vec<Vec<u8>>,
    /// The replica to read from, from the last `update`.
    nearest: Option<u32>,
}

thread_local! {
    // One instance per Rampart worker thread: no locking needed.
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct PrefixToPrimary;

impl Guest for PrefixToPrimary {
    fn configure(config: String) -> Result<(), String> {
        let mut prefixes = Vec::new();
        for pair in config.split_whitespace() {
            match pair.split_once('=') {
                Some(("prefix", p)) if !p.is_empty() => prefixes.push(p.as_bytes().to_vec()),
                _ => return Err(format!("expected prefix=<text>, got {pair:?}")),
            }
        }
        if prefixes.is_empty() {
            return Err("give at least one prefix, e.g. prefix=session:".into());
        }
        log(
            Level::Info,
            &format!("{} prefix(es) read from the primary", prefixes.len()),
        );
        STATE.with(|s| s.borrow_mut().prefixes = prefixes);
        Ok(())
    }

    /// Called when roles, health or fitness for reads change: choose the
    /// nearest replica once here, not on every read.
    /// The decision depends on each key's text, so it is made per read.
    fn update(nodes: Vec<Node>, _local_zone: u32) -> Plan {
        let nearest = nodes
            .iter()
            .filter(|n| n.serves_reads)
            .min_by_key(|n| (n.latency_us, n.id))
            .map(|n| n.id);
        STATE.with(|s| s.borrow_mut().nearest = nearest);
        Plan::PerRead
    }

    fn route(req: Request) -> Option<u32> {
        if req.class != CommandClass::Read {
            return None;
        }
        STATE.with(|s| {
            let s = s.borrow();
            if s.prefixes.iter().any(|p| req.key.starts_with(p)) {
                return None; // None: the primary
            }
            s.nearest
        })
    }
}

rampart_sdk::router::export_router!(PrefixToPrimary);
