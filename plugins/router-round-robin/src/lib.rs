//! Reads in turn over the replicas fit to serve them; none such means the
//! primary. The whole decision is a plan (`rotate`), so the host carries
//! it out per read without calling the plugin.

use rampart_sdk::router::{Guest, Node, Plan, Request};

struct RoundRobin;

impl Guest for RoundRobin {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn update(nodes: Vec<Node>, _local_zone: u32) -> Plan {
        let replicas: Vec<u32> = nodes
            .iter()
            .filter(|n| n.serves_reads)
            .map(|n| n.id)
            .collect();
        if replicas.is_empty() {
            Plan::Primary
        } else {
            Plan::Rotate(replicas)
        }
    }

    /// Never called: the plan says everything.
    fn route(_req: Request) -> Option<u32> {
        None
    }
}

rampart_sdk::router::export_router!(RoundRobin);
