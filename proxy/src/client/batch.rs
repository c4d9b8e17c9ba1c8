//! Batching: requests that arrive together and go to the same backend
//! link are sent as one batch, and every reply (the nodes' and Rampart's
//! own) takes its place in the client's reply queue in request order.
//! Moving the client to another backend connection waits at a barrier
//! until every earlier reply has been written, so moving never reorders.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::connection::{Connection, Flow};
use super::inflight::{OpenBatch, Target, MAX_BATCH};
use super::writer::Pending;
use crate::backend::reply::ReplyTo;
use crate::backend::{Batch, Link};
use crate::resp::Value;
use crate::topology::Node;

impl Connection {
    /// Adds a request to the open batch, sending the batch first if it is for
    /// another link or full.
    pub(super) async fn add(&mut self, node: Arc<Node>, link: Link, raw: Bytes) -> Flow {
        let durable = self.durable;
        let same = self.open.as_ref().is_some_and(|open| {
            open.target.same_link(&link)
                && open.durable == durable
                && open.requests.len() < MAX_BATCH
        });
        if !same && self.flush().await == Flow::Stop {
            return Flow::Stop;
        }
        match &mut self.open {
            Some(open) => open.requests.push(raw),
            None => {
                let mut requests = Vec::with_capacity(8);
                requests.push(raw);
                self.open = Some(OpenBatch {
                    target: Target::Link { link, node },
                    requests,
                    durable,
                    class: self.class,
                    shard: self.shard.clone(),
                });
            }
        }
        Flow::Continue
    }

    /// Sends the open batch, if any.
    pub(super) async fn flush(&mut self) -> Flow {
        let Some(open) = self.open.take() else {
            return Flow::Continue;
        };
        let replies = open.requests.len();
        let (tx, rx) = oneshot::channel();
        match open.target {
            Target::Link { link, node } if open.durable && self.session.user.is_some() => {
                node.count_requests(replies as u64 + 1);
                let own = node
                    .pool
                    .writer(self.session.proto, self.session.id)
                    .clone();
                let durability = open.shard.topology.durability.clone();
                let depth = self.ctx.config.limits.max_reply_depth;
                super::durable::send_confirmed(&link, own, durability, open.requests, tx, depth)
                    .await;
            }
            Target::Link { link, node } => {
                node.count_requests(replies as u64);
                let durable = open.durable.then(|| open.shard.topology.durability.clone());
                link.send(Batch {
                    requests: open.requests,
                    replies,
                    reply: ReplyTo::charged(tx, self.account.clone()),
                    durable,
                    keep_on_shortfall: false,
                })
                .await;
            }
            Target::Fanout(fanout) => {
                fanout.write(self.session.proto, open.requests, 0, tx).await;
            }
        }
        let position = self.replies.push(Pending::Remote {
            reply: rx,
            replies,
            sent: std::time::Instant::now(),
            class: open.class,
        });
        if open.durable {
            self.durable_upto = position;
        }
        Flow::Continue
    }

    /// Waits until every reply queued so far has been written, so that the
    /// client can move to another backend connection without reordering.
    pub(super) async fn barrier(&mut self) -> Flow {
        match self.replies.drain().await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }

    pub(super) fn push(&mut self, item: Pending) -> Flow {
        let _ = self.replies.push(item);
        Flow::Continue
    }

    /// Queues a reply Rampart made itself, after everything before it.
    pub(super) async fn reply(&mut self, value: Value) -> Flow {
        if self.flush().await == Flow::Stop {
            return Flow::Stop;
        }
        let bytes = value.encode(self.session.proto);
        self.push(Pending::Local(bytes))
    }
}
