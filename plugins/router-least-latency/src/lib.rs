//! Reads to the replica that answers fastest: of two replicas drawn at
//! random (the power of two choices), the one with the lower cost, where
//! cost = probe round trip x (1 + requests in flight to it right now).
//! Latency alone would send every read to one replica until its next
//! probe; the in-flight count (asked of the host per read) spreads load
//! the moment a replica starts to queue. No replica fit to serve reads
//! means the primary.

use std::cell::RefCell;

use rampart_sdk::algorithms::{mix64, pairs, two_choices};
use rampart_sdk::router::{inflight, CommandClass, Guest, Node, Plan, Request};

#[derive(Default)]
struct State {
    /// (id, probe round trip in µs) of each replica fit to serve reads.
    replicas: Vec<(u32, u32)>,
    draws: u64,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct LeastLatency;

impl Guest for LeastLatency {
    fn configure(config: String) -> Result<(), String> {
        match pairs(&config)?.first() {
            None => Ok(()),
            Some((key, _)) => Err(format!(
                "unknown key {key:?} (this router takes no settings)"
            )),
        }
    }

    /// Load changes by the microsecond: this router decides per read.
    fn update(nodes: Vec<Node>, _local_zone: u32) -> Plan {
        STATE.with(|s| {
            s.borrow_mut().replicas = nodes
                .iter()
                .filter(|n| n.serves_reads)
                .map(|n| (n.id, n.latency_us.max(1)))
                .collect();
        });
        Plan::PerRead
    }

    fn route(req: Request) -> Option<u32> {
        if req.class != CommandClass::Read {
            return None;
        }
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.draws = s.draws.wrapping_add(1);
            let seed = mix64(s.draws ^ req.client_id.rotate_left(32));
            two_choices(&s.replicas, seed, |(id, latency)| {
                u64::from(latency) * (1 + u64::from(inflight(id)))
            })
            .map(|(id, _)| id)
        })
    }
}

rampart_sdk::router::export_router!(LeastLatency);
