//! Each key always read from the same replica: consistent hashing of the
//! key over the replicas fit to serve reads. A replica's cache stays warm
//! with its own share of the keys, and when a replica comes or goes only
//! its share moves. Commands without a key stay with one replica per
//! client. No replica fit to serve reads means the primary.
//!
//! Setting: `points=N` positions per replica on the ring (default 100;
//! more spreads keys more evenly, costs memory).

use std::cell::RefCell;

use rampart_sdk::algorithms::{mix64, pairs, HashRing};
use rampart_sdk::router::{CommandClass, Guest, Node, Request};

struct State {
    points: u32,
    /// The replicas the ring was built from, to rebuild only on change.
    members: Vec<u32>,
    ring: HashRing,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State {
        points: 100,
        members: Vec::new(),
        ring: HashRing::default(),
    });
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

    fn update(nodes: Vec<Node>) {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            let members: Vec<u32> = nodes
                .iter()
                .filter(|n| n.serves_reads)
                .map(|n| n.id)
                .collect();
            if members != s.members {
                s.ring = HashRing::new(members.iter().copied(), s.points);
                s.members = members;
            }
        });
    }

    fn route(req: Request) -> Option<u32> {
        if req.class != CommandClass::Read {
            return None;
        }
        let hash = if req.key.is_empty() {
            mix64(req.client_id)
        } else {
            req.key_hash
        };
        STATE.with(|s| s.borrow().ring.pick(hash))
    }
}

rampart_sdk::router::export_router!(KeyAffinity);
