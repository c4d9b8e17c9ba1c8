//! Changes the nodes do not replicate, copied to the nodes a client's
//! command did not reach. `ACL SETUSER | DELUSER` and `CONFIG SET` take
//! effect on the node that runs them only; through Rampart they run on
//! the primary (every shard's, for `CONFIG SET`), with the client's own
//! rights, and what the primaries accepted is then applied to every other
//! node, so that a user or a setting is still there after a failover.
//!
//! Each node takes its copies in the order the primaries took the
//! changes, from one queue: `ACL SETUSER default off` then `on`, copied
//! side by side, could otherwise land the other way round and leave the
//! node refusing everyone.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use redis_protocol::resp3::types::OwnedFrame;
use tokio::sync::mpsc;

use crate::backend::control::Control;
use crate::context::Context;
use crate::topology::Node;

/// How long a node may take to apply a copied change.
const APPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Changes waiting for one node: past this (a node down for a long time
/// while changes keep coming) further ones are dropped and logged.
const QUEUE: usize = 256;

/// One change to copy, and what to call it in the log.
struct Change {
    args: Vec<Bytes>,
    what: &'static str,
}

/// Each node's queue of changes, by the node's address in memory: ids
/// are numbered per instance, and several instances may share a process
/// (the tests run them so). The queue's task holds the node, so the
/// address is never another node's while the entry lives.
fn queues() -> &'static DashMap<usize, mpsc::Sender<Change>> {
    static QUEUES: OnceLock<DashMap<usize, mpsc::Sender<Change>>> = OnceLock::new();
    QUEUES.get_or_init(DashMap::new)
}

/// Applies a change the nodes `done` accepted to every other node of
/// every shard, in the background and in order: a node that is down or
/// refuses it is logged, for the operator to apply it there by hand.
pub(super) fn apply_elsewhere(ctx: &Context, done: &[u32], args: Vec<Bytes>, what: &'static str) {
    let others = ctx.topology.nodes().into_iter().map(|(_, n)| n);
    for node in others.filter(|n| !done.contains(&n.id)) {
        let queue = queues()
            .entry(Arc::as_ptr(&node) as usize)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(apply_in_order(node.clone(), rx));
                tx
            })
            .clone();
        let change = Change {
            args: args.clone(),
            what,
        };
        if queue.try_send(change).is_err() {
            tracing::warn!(node = %node.addr, "{what} not applied on this node (too many changes waiting for it); apply it there by hand");
        }
    }
}

/// Applies one node's changes one after the other, on one connection
/// (made again after a failure).
async fn apply_in_order(node: Arc<Node>, mut changes: mpsc::Receiver<Change>) {
    let mut control: Option<Control> = None;
    while let Some(Change { args, what }) = changes.recv().await {
        let result = match control.take() {
            Some(c) => Ok(c),
            None => node.pool.control().await,
        };
        let failed = match result {
            Ok(mut c) => match c.call(&args, APPLY_TIMEOUT).await {
                Ok(OwnedFrame::SimpleError { data, .. }) => {
                    control = Some(c);
                    Some(data)
                }
                Ok(_) => {
                    control = Some(c);
                    None
                }
                Err(e) => Some(e.to_string()),
            },
            Err(e) => Some(e.to_string()),
        };
        if let Some(error) = failed {
            tracing::warn!(node = %node.addr, %error, "{what} not applied on this node; apply it there by hand");
        }
    }
}
