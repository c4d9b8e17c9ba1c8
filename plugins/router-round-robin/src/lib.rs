//! Reads in turn over the replicas fit to serve them; none such means the
//! primary (the host's default when `route` returns nothing).

use std::cell::RefCell;

use rampart_sdk::router::{CommandClass, Guest, Node, Request};

#[derive(Default)]
struct State {
    /// Ids of the replicas that may serve reads, from the last `update`.
    replicas: Vec<u32>,
    next: usize,
}

thread_local! {
    // A component instance is single-threaded; the host keeps one per worker.
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct RoundRobin;

impl Guest for RoundRobin {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn update(nodes: Vec<Node>) {
        STATE.with(|s| {
            s.borrow_mut().replicas = nodes
                .iter()
                .filter(|n| n.serves_reads)
                .map(|n| n.id)
                .collect();
        });
    }

    fn route(req: Request) -> Option<u32> {
        if req.class != CommandClass::Read {
            return None;
        }
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            if s.replicas.is_empty() {
                return None;
            }
            let pick = s.replicas[s.next % s.replicas.len()];
            s.next = s.next.wrapping_add(1);
            Some(pick)
        })
    }
}

rampart_sdk::router::export_router!(RoundRobin);
