//! Every command to the primary: reads see every acknowledged write.

use rampart_sdk::router::{Guest, Node, Plan, Request};

struct PrimaryOnly;

impl Guest for PrimaryOnly {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn update(_nodes: Vec<Node>, _local_zone: u32) -> Plan {
        Plan::Primary
    }

    /// Never called: the plan is the primary.
    fn route(_req: Request) -> Option<u32> {
        None
    }
}

rampart_sdk::router::export_router!(PrimaryOnly);
