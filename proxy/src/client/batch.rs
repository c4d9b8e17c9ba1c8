//! Batching: requests that arrive together and go to the same backend
//! link are sent as one batch, and every reply (the nodes' and Rampart's
//! own) takes its place in the client's reply queue in request order.
//! Moving the client to another backend connection waits at a barrier
//! until every earlier reply has been written, so moving never reorders.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::inflight::{OpenBatch, Target, MAX_BATCH};
use super::session::Session;
use super::writer::{Pending, Replies};
use crate::backend::budget::Account;
use crate::backend::reply::ReplyTo;
use crate::backend::{Batch, Link};
use crate::observe::counters::BatchClass;
use crate::resp::Value;
use crate::route::session::Progress;
use crate::shard::Shard;
use crate::topology::Node;

/// What the client is owed, in request order: the batch being gathered
/// and the replies queued for writing.
pub(super) struct Outbox {
    pub(super) replies: Replies,
    pub(super) open: Option<OpenBatch>,
    /// Position in the reply queue of the client's last durable batch:
    /// until its replies are in, the client's reads follow its writes on
    /// the write link, so they cannot overtake them.
    pub(super) durable_upto: u64,
    /// This client's share of the memory caps (its replies hold it too).
    pub(super) account: Arc<Account>,
    /// `limits.max_reply_depth`, for replies checked on their way.
    depth: usize,
}

/// What the client's next request is, for the batch it joins.
pub(super) struct Sending<'a> {
    pub session: &'a Session,
    /// Its shard.
    pub shard: &'a Arc<Shard>,
    /// A synchronous write: its reply waits for the shard's quorum.
    pub durable: bool,
    pub class: BatchClass,
}

impl Outbox {
    pub(super) fn new(replies: Replies, account: Arc<Account>, depth: usize) -> Outbox {
        Outbox {
            replies,
            open: None,
            durable_upto: 0,
            account,
            depth,
        }
    }

    /// Adds a request to the open batch, sending the batch first if it is for
    /// another link or full.
    pub(super) async fn add(
        &mut self,
        sending: Sending<'_>,
        node: Arc<Node>,
        link: Link,
        raw: Bytes,
    ) {
        let durable = sending.durable;
        let same = self.open.as_ref().is_some_and(|open| {
            open.target.same_link(&link)
                && open.durable == durable
                && open.requests.len() < MAX_BATCH
        });
        if !same {
            self.flush(sending.session).await;
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
                    class: sending.class,
                    shard: sending.shard.clone(),
                });
            }
        }
    }

    /// Sends the open batch, if any.
    pub(super) async fn flush(&mut self, session: &Session) {
        let Some(open) = self.open.take() else {
            return;
        };
        let replies = open.requests.len();
        let (tx, rx) = oneshot::channel();
        match open.target {
            Target::Link { link, node } if open.durable && session.user.is_some() => {
                node.count_requests(replies as u64 + 1);
                let own = node.pool.writer(session.proto, session.id).clone();
                let durability = open.shard.topology.durability.clone();
                let depth = self.depth;
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
                fanout.write(session.proto, open.requests, 0, tx).await;
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
    }

    /// Waits until every reply queued so far has been written, so that the
    /// client can move to another backend connection without reordering.
    /// The error is the client's connection failing.
    pub(super) async fn barrier(&mut self) -> std::io::Result<()> {
        self.replies.drain().await
    }

    pub(super) fn push(&mut self, item: Pending) {
        let _ = self.replies.push(item);
    }

    /// Queues a reply Rampart made itself, after everything before it.
    pub(super) async fn reply(&mut self, session: &Session, value: Value) {
        self.flush(session).await;
        let bytes = value.encode(session.proto);
        self.push(Pending::Local(bytes))
    }

    /// Replies the client is owed, counting requests gathered in the batch
    /// not sent yet.
    pub(super) fn in_flight(&self) -> usize {
        self.replies.owed() + self.open.as_ref().map_or(0, |open| open.requests.len())
    }

    /// The position in the reply queue the next request's reply takes.
    pub(super) fn next_position(&self) -> u64 {
        self.replies.queued() + u64::from(self.open.is_some())
    }

    /// How far the client's replies have come, for its read tokens.
    pub(super) fn progress(&self) -> Progress {
        Progress {
            completed: self.replies.completed(),
            caught_up: self.replies.caught_up(),
        }
    }
}
