//! Each key always read from the same replica: consistent hashing of the
//! key over the replicas fit to serve reads. A replica's cache stays warm
//! with its own share of the keys, and when a replica comes or goes only
//! its share moves. Commands without a key stay with one replica per
//! client. No replica fit to serve reads means the primary.
//!
//! The ring is handed to the host as a `by-key` table of 1024 slots, so
//! the host looks a key up itself, without calling the plugin per read.
//!
//! Setting: `points=N` positions per replica on the ring (default 100;
//! more spreads keys more evenly, costs memory).

use std::cell::RefCell;

use rampart_sdk::algorithms::{mix64, pairs, HashRing};
use rampart_sdk::router::{CommandClass, Guest, Node, Plan, Request};

/// Slots in the table handed to the host: enough that keys spread evenly
/// over a handful of replicas.
const SLOTS: u32 = 1024;

struct State {
    points: u32,
    /// The replicas the ring was built from, to rebuild only on change.
    members: Vec<u32>,
    /// The ring as slots: the plan.
    table: Vec<u32>,
}

thread_local! {
    static STATE: RefCell<State> = const {
        RefCell::new(State {
            points: 100,
            members: Vec::new(),
            table: Vec::new(),
        })
    };
}

struct KeyAffinity;

impl Guest for KeyAffinity {
    fn configure(config: String) -> Result<(), String> {
        let mut points = 100;
        for (key, value) in pairs(&config)? {
            match key {
                "points" => {
                    points = value
                        .parse()
                        .ok()
                        .filter(|p| (1..=10_000).contains(p))
                        .ok_or_else(|| format!("points: expected 1 to 10000, got {value:?}"))?
                }
                _ => return Err(format!("unknown key {key:?} (expected points)")),
            }
        }
        STATE.with(|s| s.borrow_mut().points = points);
        Ok(())
    }

    fn update(nodes: Vec<Node>, _local_zone: u32) -> Plan {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            let members: Vec<u32> = nodes
                .iter()
                .filter(|n| n.serves_reads)
                .map(|n| n.id)
                .collect();
            if members != s.members {
                s.table = HashRing::new(members.iter().copied(), s.points).table(SLOTS);
                s.members = members;
            }
            Plan::ByKey(s.table.clone())
        })
    }

    /// Never called while the plan is `by-key`; answers the same way.
    fn route(req: Request) -> Option<u32> {
        if req.class != CommandClass::Read {
            return None;
        }
        let hash = if req.key.is_empty() {
            mix64(req.client_id)
        } else {
            req.key_hash
        };
        STATE.with(|s| {
            let table = &s.borrow().table;
            let len = table.len() as u64;
            (len > 0).then(|| table[(hash % len) as usize])
        })
    }
}

rampart_sdk::router::export_router!(KeyAffinity);
