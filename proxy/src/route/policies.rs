//! The built-in read policies.

use std::sync::Arc;

use super::{Read, ReadPolicy};
use crate::observe::policy_view::PolicyView;
use crate::topology::{Node, ReplicaSet};

/// Every read to the primary: reads see every acknowledged write.
pub struct PrimaryOnly;

impl ReadPolicy for PrimaryOnly {
    fn pick<'s>(&self, _shard: &'s ReplicaSet, _read: &Read) -> Option<&'s Arc<Node>> {
        None
    }

    fn describe(&self) -> PolicyView {
        PolicyView::native("primary-only")
    }
}

/// Reads spread over the replicas that are up and following their primary,
/// in turn by burst (the reads a client sent together go to one replica,
/// as one batch; its next burst to the next); none such means the primary
/// serves them.
#[derive(Default)]
pub struct RoundRobinReplicas;

impl ReadPolicy for RoundRobinReplicas {
    fn pick<'s>(&self, shard: &'s ReplicaSet, read: &Read) -> Option<&'s Arc<Node>> {
        let serving = || shard.nodes.iter().filter(|node| node.serves_reads());
        let count = serving().count();
        if count == 0 {
            return None;
        }
        serving().nth(read.turn() % count)
    }

    fn describe(&self) -> PolicyView {
        PolicyView::native("round-robin")
    }
}
