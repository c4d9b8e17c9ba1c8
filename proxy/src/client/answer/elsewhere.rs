//! Changes the nodes do not replicate, copied to the nodes a client's
//! command did not reach. `ACL SETUSER | DELUSER` and `CONFIG SET` take
//! effect on the node that runs them only; through Rampart they run on
//! the primary (every shard's, for `CONFIG SET`), with the client's own
//! rights, and what the primaries accepted is then applied to every other
//! node, so that a user or a setting is still there after a failover.

use bytes::Bytes;
use redis_protocol::resp3::types::OwnedFrame;

use crate::context::Context;

/// How long a node may take to apply a copied change.
const APPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Applies a change the nodes `done` accepted to every other node of
/// every shard, in the background: a node that is down or refuses it is
/// logged, for the operator to apply it there by hand.
pub(super) fn apply_elsewhere(ctx: &Context, done: &[u32], args: Vec<Bytes>, what: &'static str) {
    let others: Vec<_> = ctx
        .topology
        .nodes()
        .into_iter()
        .map(|(_, n)| n)
        .filter(|n| !done.contains(&n.id))
        .collect();
    for other in others {
        let args = args.clone();
        tokio::spawn(async move {
            let result = match other.pool.control().await {
                Ok(mut control) => control.call(&args, APPLY_TIMEOUT).await,
                Err(e) => Err(e),
            };
            let failed = match result {
                Ok(OwnedFrame::SimpleError { data, .. }) => Some(data),
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            };
            if let Some(error) = failed {
                tracing::warn!(node = %other.addr, %error, "{what} not applied on this node; apply it there by hand");
            }
        });
    }
}
