//! `ACL SETUSER | DELUSER`: the primary decides, with the client's own
//! rights; what it accepted is then applied to every other node (ACLs are
//! not replicated), so the user still exists after a failover.

use bytes::Bytes;
use redis_protocol::resp3::types::OwnedFrame;

use crate::context::Context;

/// Applies an ACL change the primary (node `done`) accepted to every other
/// node of every shard, in the background: a node that refuses it is
/// logged, for the operator to define the user there by hand.
pub(super) fn apply_elsewhere(ctx: &Context, done: u32, args: Vec<Bytes>) {
    let others: Vec<_> = ctx
        .topology
        .nodes()
        .into_iter()
        .map(|(_, n)| n)
        .filter(|n| n.id != done)
        .collect();
    for other in others {
        let args = args.clone();
        tokio::spawn(async move {
            let result = match other.pool.control().await {
                Ok(mut control) => control.call(&args, std::time::Duration::from_secs(2)).await,
                Err(e) => Err(e),
            };
            let failed = match result {
                Ok(OwnedFrame::SimpleError { data, .. }) => Some(data),
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            };
            if let Some(error) = failed {
                tracing::warn!(node = %other.addr, %error, "ACL change not applied on this node; define the user there by hand");
            }
        });
    }
}
