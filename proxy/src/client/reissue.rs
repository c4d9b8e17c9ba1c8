//! Sending a blocked command again where it can still be answered, when
//! the node it waits on can no longer answer it: its key's slot starts
//! moving to another shard, or a failover or switchover makes the node a
//! replica. Nothing was taken for the client (the node unblocked it empty
//! handed), so the client gets what one Redis would give: an element, or
//! nil once its timeout is up.

use std::time::Duration;

use bytes::Bytes;

use super::blocking::{unblock, UNBLOCK_WAIT};
use super::connection::{Connection, Flow};
use super::inflight::Blocked;
use super::writer::Pending;
use crate::backend::BatchReply;
use crate::resp::Request;

impl Connection {
    /// A command blocked on a key of a slot that starts moving is
    /// unblocked on the source (the pause waits for every request routed
    /// before it). So that the client still gets what one Redis would give
    /// (an element, or nil only once its timeout is up), the command is
    /// sent again where the key is going, with what is left of its
    /// timeout, once the pause is over: it is the last request of the
    /// client (nothing is parsed behind a blocked command), so it keeps
    /// its place. An element popped in the instant is delivered; XREAD and
    /// the rest get the nil their unblocking gives (`$` would skip what
    /// was added meanwhile).
    pub(super) async fn reissue_blocked(&mut self, b: Blocked) -> Flow {
        if b.position != self.out.replies.queued() {
            // Something is queued behind it: it keeps no place to be sent
            // again into, and gets the nil its unblocking gives.
            self.unblock_own(false).await;
            return Flow::Continue;
        }
        let (reply, sent) = match self.out.replies.take(b.position) {
            Some(Pending::Remote { reply, sent, .. }) => (reply, sent),
            // Its reply is in already, or is to be dropped (`CLIENT REPLY
            // OFF`): left as it is, unblocked if it still waits.
            Some(other) => {
                self.out.replies.put(b.position, other);
                self.unblock_own(false).await;
                return Flow::Continue;
            }
            None => return Flow::Continue,
        };
        unblock(&b.node, &b.link, false).await;
        let answered = match tokio::time::timeout(UNBLOCK_WAIT, reply).await {
            Ok(Ok(answered)) => answered,
            _ => {
                // Closing the connection unblocks it on the node.
                tracing::warn!(node = %b.node.addr, "a blocked command did not answer when unblocked for a slot move; closing its connection");
                self.session.lose_pinned();
                BatchReply {
                    data: Bytes::new(),
                    got: 0,
                    error: Some("ERR rampart: the blocked command's connection was lost while its slot started moving; it may or may not have popped".into()),
                    charge: None,
                }
            }
        };
        let again = (answered.error.is_none() && is_null(&answered.data))
            .then(|| remaining(&b.request, sent.elapsed()))
            .flatten();
        match again {
            Some(again) if self.out.replies.forget_last(b.position) => {
                self.blocked.retain(|o| o.position != b.position);
                self.handle(again).await
            }
            _ => {
                let reply = Pending::Arrived {
                    reply: answered,
                    replies: 1,
                };
                self.out.replies.put(b.position, reply);
                Flow::Continue
            }
        }
    }
}

/// Whether a blocked command can be sent again (see
/// [`Connection::reissue_blocked`]): one whose timeout is an argument.
pub(super) fn may_reissue(request: &Request) -> bool {
    timeout_at(request).is_some()
}

/// Where the timeout (seconds) of a blocking command is.
fn timeout_at(request: &Request) -> Option<usize> {
    match request.name().as_bytes() {
        b"BLPOP" | b"BRPOP" | b"BZPOPMIN" | b"BZPOPMAX" | b"BRPOPLPUSH" | b"BLMOVE" => {
            request.argc().checked_sub(1)
        }
        b"BLMPOP" | b"BZMPOP" => Some(1),
        _ => None,
    }
}

/// A null reply: what a blocking command answers when its timeout is up.
fn is_null(reply: &[u8]) -> bool {
    matches!(reply, b"*-1\r\n" | b"$-1\r\n" | b"_\r\n")
}

/// `request` with what is left of its timeout after `elapsed`, for the
/// blocking commands whose timeout is an argument in seconds (0 stays 0:
/// no limit); `None` when it is up, or for any other command.
fn remaining(request: &Request, elapsed: Duration) -> Option<Request> {
    let at = timeout_at(request)?;
    let timeout: f64 = std::str::from_utf8(request.arg(at)?).ok()?.parse().ok()?;
    if timeout == 0.0 {
        return Some(Request::from_args(&request.args()));
    }
    let left = timeout - elapsed.as_secs_f64();
    if left < 0.001 {
        return None;
    }
    let mut args = request.args();
    args[at] = Bytes::from(format!("{left:.3}"));
    Some(Request::from_args(&args))
}

impl Connection {
    /// A failover or switchover that turns a primary into a replica makes
    /// the node unblock its blocked clients with an error (`-UNBLOCKED ...
    /// instance state changed`), nothing popped. A blocking pop waiting
    /// there for this client is sent again to the new primary once it is
    /// in place (within `failover.hold_writes_ms`), with what is left of
    /// its timeout, so a worker waiting for jobs goes on waiting instead
    /// of failing. As with a slot move, only the client's last request is
    /// sent again (nothing is parsed behind a blocked command).
    pub(super) async fn reissue_if_demoted(&mut self) -> Flow {
        let last = self.out.replies.queued();
        if last <= self.out.replies.completed() {
            return Flow::Continue;
        }
        let Some(b) = self.blocked.iter().find(|b| b.position == last).cloned() else {
            return Flow::Continue;
        };
        if !may_reissue(&b.request) {
            return Flow::Continue;
        }
        let reply = match self.out.replies.take(last) {
            Some(Pending::Remote {
                mut reply,
                replies,
                sent,
                class,
            }) => match reply.try_recv() {
                Ok(answered) if unblocked_by_demotion(&answered) => answered,
                Ok(answered) => {
                    // Taken here rather than by the writer: counted here.
                    self.ctx.metrics.observe(class, sent.elapsed());
                    let arrived = Pending::Arrived {
                        reply: answered,
                        replies,
                    };
                    self.out.replies.put(last, arrived);
                    return Flow::Continue;
                }
                Err(_) => {
                    let waiting = Pending::Remote {
                        reply,
                        replies,
                        sent,
                        class,
                    };
                    self.out.replies.put(last, waiting);
                    return Flow::Continue;
                }
            },
            Some(Pending::Arrived { reply, .. }) if unblocked_by_demotion(&reply) => reply,
            Some(other) => {
                self.out.replies.put(last, other);
                return Flow::Continue;
            }
            None => return Flow::Continue,
        };
        let now = tokio::time::Instant::now();
        let replaced = super::hold::until_replaced(&self.ctx, &self.shard.topology, now, &b.node);
        let again = match replaced.await {
            true => remaining(&b.request, b.sent.elapsed()),
            false => None,
        };
        match again {
            Some(again) if self.out.replies.forget_last(last) => {
                self.blocked.retain(|o| o.position != last);
                self.handle(again).await
            }
            // No new primary within the hold, or the timeout is up: the
            // node's own answer.
            _ => {
                let arrived = Pending::Arrived { reply, replies: 1 };
                self.out.replies.put(last, arrived);
                Flow::Continue
            }
        }
    }
}

/// Redis's answer to a client blocked on a primary that becomes a
/// replica: nothing was taken for it.
fn unblocked_by_demotion(reply: &BatchReply) -> bool {
    reply.error.is_none()
        && reply.data.starts_with(b"-UNBLOCKED")
        && reply
            .data
            .windows(STATE_CHANGED.len())
            .any(|w| w == STATE_CHANGED)
}

const STATE_CHANGED: &[u8] = b"instance state changed";
