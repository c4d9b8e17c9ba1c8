//! What a client has sent that is not answered yet, as the connection
//! keeps it: the batch being gathered for one link, and blocking commands
//! on their way.

use std::sync::Arc;

use bytes::Bytes;

use crate::backend::Link;
use crate::observe::counters::BatchClass;
use crate::replicate::fanout::Fanout;
use crate::resp::Request;
use crate::topology::Node;

/// Most requests put in one batch before it is sent.
pub(super) const MAX_BATCH: usize = 512;

/// Where an open batch goes.
pub(super) enum Target {
    Link {
        link: Link,
        node: Arc<Node>,
    },
    /// A fan-out shard's writer: every node, in the shard's order.
    Fanout(Arc<Fanout>),
}

impl Target {
    pub(super) fn same_link(&self, other: &Link) -> bool {
        matches!(self, Target::Link { link, .. } if link.same(other))
    }
}

/// Requests gathered for one link.
pub(super) struct OpenBatch {
    pub(super) target: Target,
    pub(super) requests: Vec<Bytes>,
    /// Replies held until the shard's quorum of replicas has the writes.
    /// A batch is all durable or not at all, so a `WAIT` after it never
    /// lands inside a transaction that follows it.
    pub(super) durable: bool,
    pub(super) class: BatchClass,
    /// The shard the batch goes to.
    pub(super) shard: Arc<crate::shard::Shard>,
}

/// A blocking command on its way, for as long as its reply is owed.
#[derive(Clone)]
pub(super) struct Blocked {
    pub node: Arc<Node>,
    pub link: Link,
    /// Its place in the client's reply queue.
    pub position: u64,
    pub request: Request,
    /// When it was sent: its timeout runs from then.
    pub sent: std::time::Instant,
}
