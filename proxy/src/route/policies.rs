//! The built-in read policies.

use std::sync::atomic::{AtomicUsize, Ordering};
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
/// in turn; none such means the primary serves them.
#[derive(Default)]
pub struct RoundRobinReplicas {
    next: AtomicUsize,
}

impl ReadPolicy for RoundRobinReplicas {
    fn pick<'s>(&self, shard: &'s ReplicaSet, _read: &Read) -> Option<&'s Arc<Node>> {
        let serving = || shard.nodes.iter().filter(|node| node.serves_reads());
        let count = serving().count();
        if count == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % count;
        serving().nth(turn)
    }

    fn describe(&self) -> PolicyView {
        PolicyView::native("round-robin")
    }
}
