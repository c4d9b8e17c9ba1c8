//! What an operator's request to a shard's failover controller carries
//! (the shard holds the sending end of its channel).

use tokio::sync::oneshot;

use crate::operate::error::OpError;

/// An operator's request to change a shard's primary: a switchover
/// (checked: the target holds every acknowledged write) or, with `force`,
/// a promotion without that check.
pub struct PrimaryChange {
    /// The node to promote (`host:port` as configured); `None` lets the
    /// election choose.
    pub target: Option<String>,
    /// `rampart promote --force`: promote `target` now, without the
    /// checks that it holds every acknowledged write. For a shard waiting
    /// on an operator because no node can be proven to.
    pub force: bool,
    pub reply: oneshot::Sender<Result<String, OpError>>,
}
