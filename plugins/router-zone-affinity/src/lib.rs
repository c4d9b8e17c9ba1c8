//! Reads stay in the client's zone: round robin over the replicas in the
//! zone of the Rampart instance the client is connected to (`proxy.zone`;
//! nodes' zones are `shards.<name>.zones`). Cross-zone traffic is slower
//! and, in most clouds, billed.
//!
//! Setting: `fallback=replicas` (default: no replica in the zone means
//! round robin over all replicas) or `fallback=primary` (the primary,
//! wherever it is). No replica fit to serve reads at all means the primary.

use std::cell::RefCell;

use rampart_sdk::algorithms::pairs;
use rampart_sdk::router::{CommandClass, Guest, Node, Plan, Request};

struct State {
    /// (id, zone) of each replica fit to serve reads.
    replicas: Vec<(u32, u32)>,
    /// The choices for one client zone, worked out on the first read after
    /// an update (every client of one Rampart has the same zone).
    choices: Option<(u32, Vec<u32>)>,
    fallback_to_replicas: bool,
    next: usize,
}

thread_local! {
    static STATE: RefCell<State> = const {
        RefCell::new(State {
            replicas: Vec::new(),
            choices: None,
            fallback_to_replicas: true,
            next: 0,
        })
    };
}

struct ZoneAffinity;

impl Guest for ZoneAffinity {
    fn configure(config: String) -> Result<(), String> {
        let mut fallback_to_replicas = true;
        for (key, value) in pairs(&config)? {
            match (key, value) {
                ("fallback", "replicas") => fallback_to_replicas = true,
                ("fallback", "primary") => fallback_to_replicas = false,
                ("fallback", other) => {
                    return Err(format!(
                        "fallback: expected replicas or primary, got {other:?}"
                    ))
                }
                _ => return Err(format!("unknown key {key:?} (expected fallback)")),
            }
        }
        STATE.with(|s| s.borrow_mut().fallback_to_replicas = fallback_to_replicas);
        Ok(())
    }

    /// Every client of one Rampart shares its zone: the choice is a plan.
    fn update(nodes: Vec<Node>, local_zone: u32) -> Plan {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.replicas = nodes
                .iter()
                .filter(|n| n.serves_reads)
                .map(|n| (n.id, n.zone))
                .collect();
            s.choices = None;
            let choices = choices_for(&s.replicas, local_zone, s.fallback_to_replicas);
            if choices.is_empty() {
                Plan::Primary
            } else {
                Plan::Rotate(choices)
            }
        })
    }

    /// Not called while the plan is `rotate`; answers the same way.
    fn route(req: Request) -> Option<u32> {
        if req.class != CommandClass::Read {
            return None;
        }
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            let zone = req.client_zone;
            if s.choices.as_ref().is_none_or(|(z, _)| *z != zone) {
                let choices = choices_for(&s.replicas, zone, s.fallback_to_replicas);
                s.choices = Some((zone, choices));
            }
            s.next = s.next.wrapping_add(1);
            let next = s.next;
            let (_, choices) = s.choices.as_ref()?;
            (!choices.is_empty()).then(|| choices[next % choices.len()])
        })
    }
}

/// The replicas in `zone`; if none, all replicas or none (the primary).
fn choices_for(replicas: &[(u32, u32)], zone: u32, fallback_to_replicas: bool) -> Vec<u32> {
    let local: Vec<u32> = replicas
        .iter()
        .filter(|&&(_, z)| zone != 0 && z == zone)
        .map(|&(id, _)| id)
        .collect();
    if !local.is_empty() || !fallback_to_replicas {
        return local;
    }
    replicas.iter().map(|&(id, _)| id).collect()
}

rampart_sdk::router::export_router!(ZoneAffinity);
