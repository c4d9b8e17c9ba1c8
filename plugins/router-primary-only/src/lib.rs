//! Every command to the primary: reads see every acknowledged write.

use rampart_sdk::router::{Guest, Node, Request};

struct PrimaryOnly;

impl Guest for PrimaryOnly {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn update(_nodes: Vec<Node>) {}

    fn route(_req: Request) -> Option<u32> {
        None
    }
}

rampart_sdk::router::export_router!(PrimaryOnly);
