//! Blocking commands (BLPOP, BLMOVE, BZPOPMIN, XREAD BLOCK, WAIT ...) and
//! what happens when their client leaves while they wait.
//!
//! A blocking command runs on the client's dedicated connection. If the
//! client goes away while it waits, the node would go on waiting for it,
//! and the next element pushed would be popped for nobody. So when a client
//! leaves, Rampart asks the node to `CLIENT UNBLOCK` the dedicated
//! connection (from a control connection) and reads what the command
//! answers:
//!
//! - nothing popped (the usual case): nothing is lost, and the node's
//!   `blocked_clients` falls at once;
//! - an element popped in the instant the client left: Rampart pushes it
//!   back where it came from (`LPUSH` for BLPOP, `RPUSH` for BRPOP, `ZADD`
//!   with its score for BZPOPMIN ...), so the next consumer gets it. Moves
//!   (BRPOPLPUSH, BLMOVE) need nothing: the element is already in the
//!   destination list, which is what reliable queues rely on; XREADGROUP
//!   leaves what it read in the group's pending list;
//! - the node does not answer in time: the dedicated connection is closed,
//!   which unblocks it on the node without popping anything more.
//!
//! What Rampart cannot do is what Redis cannot either: a reply already
//! written to a client that dies before reading it is lost with the client.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::connection::{Connection, Flow};
use super::inflight::Blocked;
use super::undo::{decode, undo};
use super::writer::Pending;
use crate::backend::{Batch, BatchReply, Link};
use crate::observe::counters::BatchClass;
use crate::resp::Request;
use crate::topology::Node;
use tokio::sync::oneshot;

/// How long a blocked command may take to answer once unblocked.
pub(super) const UNBLOCK_WAIT: Duration = Duration::from_secs(2);

impl Connection {
    /// Sends a blocking command alone in its batch on the client's
    /// dedicated connection, and remembers it until it is answered.
    pub(super) async fn blocking(&mut self, req: Request) -> Flow {
        if self.session.in_multi {
            // Inside MULTI a blocking command does not block.
            return self.pinned(req).await;
        }
        if let Err(error) = self.pin().await {
            return self.reply(error).await;
        }
        let Some((node, link)) = self.session.pinned.clone() else {
            return Flow::Continue;
        };
        if self.flush().await == Flow::Stop {
            return Flow::Stop;
        }
        // A user's connection may not be allowed WAIT: its pops go out
        // unconfirmed (delivered at least once, see the module's notes).
        let durable = (self.durable && self.session.user.is_none())
            .then(|| self.shard.topology.durability.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut requests = vec![req.raw.clone()];
        let rx = match durable {
            // A command served after it blocked does not move its
            // connection's replication offset on the node (Redis updates
            // it only for commands run at once), so a `WAIT` after it
            // alone would count replicas that have nothing of the pop. A
            // marker write after it (a PUBLISH nobody listens to) carries
            // the offset past the pop; its reply is taken out. (Not the
            // client-WAIT marker: MONITOR and SLOWLOG would then show
            // Rampart's WAIT as the client's.)
            Some(_) => {
                let marker = ["PUBLISH", crate::backend::own::CONFIRM_MARKER, ""];
                requests.push(Request::from_args(&marker).raw);
                let (client_tx, client_rx) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    if let Ok(reply) = rx.await {
                        let _ = client_tx.send(first_only(reply));
                    }
                });
                client_rx
            }
            None => rx,
        };
        node.count_requests(requests.len() as u64);
        link.send(Batch {
            replies: requests.len(),
            requests,
            reply: tx.into(),
            durable: durable.clone(),
            keep_on_shortfall: true,
        })
        .await;
        let position = self.expect_blocked(node, link, req, rx);
        if durable.is_some() {
            self.out.durable_upto = position;
        }
        Flow::Continue
    }

    /// Queues the reply of a blocking command sent on `link`, and remembers
    /// the command until it is answered (forgetting those that were).
    /// Returns its place in the reply queue.
    pub(super) fn expect_blocked(
        &mut self,
        node: Arc<Node>,
        link: Link,
        request: Request,
        reply: tokio::sync::oneshot::Receiver<BatchReply>,
    ) -> u64 {
        let position = self.out.replies.push(Pending::Remote {
            reply,
            replies: 1,
            sent: std::time::Instant::now(),
            class: BatchClass::Other,
        });
        let completed = self.out.replies.completed();
        self.blocked.retain(|b| b.position > completed);
        self.blocked.push(Blocked {
            node,
            link,
            position,
            request,
            sent: std::time::Instant::now(),
        });
        position
    }

    /// Whether a blocking command sent for this client still waits for
    /// its answer.
    pub(super) fn waits_on_blocked(&self) -> bool {
        let completed = self.out.replies.completed();
        self.blocked.iter().any(|b| b.position > completed)
    }

    /// `CLIENT UNBLOCK` of this client by another: unblocks its oldest
    /// blocking command still waiting; whether there was one.
    pub(super) async fn unblock_own(&mut self, error: bool) -> bool {
        let completed = self.out.replies.completed();
        let Some(oldest) = self.blocked.iter().find(|b| b.position > completed) else {
            return false;
        };
        // Every connection it waits on (one per shard for a WAIT over
        // several shards).
        let position = oldest.position;
        let mut unblocked = false;
        for b in self.blocked.iter().filter(|b| b.position == position) {
            unblocked |= unblock(&b.node, &b.link, error).await;
        }
        unblocked
    }

    /// The client has gone: unblock whatever still waits for it on a node,
    /// and put back anything popped for it that it never got.
    pub(super) async fn abandon_blocked(&mut self) {
        let blocked = std::mem::take(&mut self.blocked);
        for (i, b) in blocked.iter().enumerate() {
            // A WAIT over several shards waits on one connection per
            // shard, all for the same reply: the first entry handles all.
            let same = |o: &&Blocked| o.position == b.position;
            if b.position <= self.out.replies.completed() || blocked[..i].iter().any(|o| same(&o)) {
                continue;
            }
            let reply = match self.out.replies.take(b.position) {
                Some(Pending::Arrived { reply, .. }) => Some(reply),
                Some(Pending::Remote { reply, .. }) => {
                    let mut unblocked = false;
                    for waiting in blocked[i..].iter().filter(same) {
                        unblocked |= unblock(&waiting.node, &waiting.link, false).await;
                    }
                    match tokio::time::timeout(UNBLOCK_WAIT, reply).await {
                        Ok(Ok(reply)) => Some(reply),
                        _ => {
                            tracing::warn!(node = %b.node.addr, unblocked, "a departed client's blocked command did not answer; closing its connection");
                            None
                        }
                    }
                }
                _ => None,
            };
            self.ctx.metrics.count_abandoned();
            match reply {
                Some(reply) => self.restore(b, reply).await,
                // Closing the connection unblocks it on the node.
                None => {
                    let pinned_here = self
                        .session
                        .pinned
                        .as_ref()
                        .is_some_and(|(_, l)| l.same(&b.link));
                    if pinned_here {
                        self.session.lose_pinned();
                    }
                }
            }
        }
    }

    /// Pushes back what a blocked command popped for a client that left.
    async fn restore(&mut self, b: &Blocked, reply: BatchReply) {
        if reply.error.is_some() && reply.got == 0 {
            return;
        }
        let Some(frame) = decode(&reply.data, self.session.proto) else {
            return;
        };
        let Some(undo) = undo(&b.request, &frame) else {
            return;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        b.node.count_requests(1);
        b.link.send(Batch::plain(vec![undo.raw.clone()], tx)).await;
        let answer = tokio::time::timeout(UNBLOCK_WAIT, rx).await;
        let put_back =
            matches!(&answer, Ok(Ok(r)) if r.error.is_none() && !r.data.starts_with(b"-"));
        let command = String::from_utf8_lossy(undo.arg(0).unwrap_or_default()).into_owned();
        if put_back {
            self.ctx.metrics.count_restored();
            tracing::warn!(node = %b.node.addr, %command, "a client left in the instant its blocking command popped; the element was pushed back");
        } else {
            tracing::error!(node = %b.node.addr, %command, ?answer, "a client left in the instant its blocking command popped, and pushing the element back failed");
        }
    }
}

/// Asks the node, on a control connection, to unblock a dedicated link, as
/// if its command timed out or (`error`) with an error.
pub(super) async fn unblock(node: &Node, link: &Link, error: bool) -> bool {
    let Some(id) = link.backend_id() else {
        return false;
    };
    let id = id.to_string();
    let mode = if error { "ERROR" } else { "TIMEOUT" };
    let reply = node
        .pool
        .call_once(&["CLIENT", "UNBLOCK", id.as_str(), mode], UNBLOCK_WAIT)
        .await;
    matches!(
        reply,
        Ok(redis_protocol::resp3::types::OwnedFrame::Number { data: 1, .. })
    )
}

impl Connection {
    /// `WAIT`/`WAITAOF` count replica acknowledgements of this connection's
    /// writes, but a client's writes went over a shared link. So Rampart
    /// waits for the client's earlier replies, then on a dedicated connection
    /// makes one tiny write of its own (a PUBLISH nobody listens to) and
    /// waits on that: replication is ordered, so acknowledging it means
    /// acknowledging everything the client wrote before. Nobody else's
    /// commands queue behind the wait.
    pub(super) async fn wait(&mut self, req: Request) -> Flow {
        if self.session.in_multi {
            return self.pinned(req).await;
        }
        if self.flush().await == Flow::Stop || self.barrier().await == Flow::Stop {
            return Flow::Stop;
        }
        // A pinned client's connection may be on a node no longer primary.
        if self.session.pinned.is_some() {
            if let Err(error) = self.pin().await {
                return self.reply(error).await;
            }
        }
        let pinned = self.session.pinned.clone();
        let (node, link, borrowed) = match pinned {
            Some((node, link)) => (node, link, false),
            None => match self.dedicated().await {
                Ok((node, link)) => (node, link, true),
                Err(error) => return self.reply(error).await,
            },
        };
        let (tx, rx) = oneshot::channel();
        node.count_requests(2);
        link.send(Batch::plain(vec![wait_marker(), req.raw.clone()], tx))
            .await;
        // The WAIT may block for long: its reply is awaited beside the
        // client's other replies, so a client that leaves meanwhile is seen
        // leaving (and its WAIT unblocked). Only the WAIT's reply goes to
        // the client, not the marker's.
        let (client_tx, client_rx) = oneshot::channel();
        let session = self.session.link_session();
        let lent = borrowed.then(|| (node.clone(), link.clone()));
        tokio::spawn(async move {
            let reply = rx.await.unwrap_or_else(|_| BatchReply {
                data: Bytes::new(),
                got: 0,
                error: Some("ERR rampart: WAIT failed".into()),
                charge: None,
            });
            let _ = client_tx.send(without_first(reply));
            if let Some((node, link)) = lent {
                node.pool.give_back(link, &session);
            }
        });
        self.expect_blocked(node, link, req, client_rx);
        Flow::Continue
    }
}

/// `PUBLISH __rampart__:wait ""`: a write nobody hears, whose place in the
/// replication stream a `WAIT` after it covers.
pub(super) fn wait_marker() -> Bytes {
    Request::from_args(&["PUBLISH", crate::backend::own::WAIT_MARKER, ""]).raw
}

/// A batch's first reply alone (a marker Rampart added follows it): once
/// it has arrived it is the answer, whatever became of the marker (a
/// connection lost after a pop took something must not lose it).
fn first_only(mut reply: BatchReply) -> BatchReply {
    if reply.got == 0 {
        return reply;
    }
    let mut scanner = crate::resp::ReplyScanner::new(MAX_DEPTH);
    let Some(first) = scanner.scan(&reply.data).ok().flatten() else {
        return reply;
    };
    reply.data = reply.data.slice(..first);
    reply.got = 1;
    reply.error = None;
    reply
}

/// Nesting a blocking command's reply may have (XREADGROUP's is the
/// deepest, at four).
const MAX_DEPTH: usize = 16;

/// A batch's replies without the first one (a marker Rampart added).
pub(super) fn without_first(mut reply: BatchReply) -> BatchReply {
    if reply.got == 0 {
        return reply;
    }
    let mut scanner = crate::resp::ReplyScanner::new(8);
    let first = scanner.scan(&reply.data).ok().flatten().unwrap_or(0);
    reply.data = reply.data.slice(first..);
    reply.got -= 1;
    reply
}
