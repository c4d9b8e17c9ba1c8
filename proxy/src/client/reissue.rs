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
    /// its place. An element popped in the instant is delivered; a stream
    /// read from `$` gets the nil its unblocking gives (see
    /// [`timeout_at`]).
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
/// [`Connection::reissue_blocked`]).
pub(super) fn may_reissue(request: &Request) -> bool {
    timeout_at(request).is_some()
}

/// Where a blocking command's timeout is, and in what unit.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Timeout {
    /// The pops' last (or second) argument.
    Seconds(usize),
    /// `XREAD`/`XREADGROUP`'s `BLOCK <ms>`.
    Millis(usize),
}

/// Where the timeout of a blocking command that may be sent again is.
/// A stream read qualifies only when it names where to read from:
/// `XREADGROUP ... >` (entries never delivered to the group) or explicit
/// ids read the same entries wherever and whenever they are sent, but `$`
/// means "what is added from now on", and sent again it would skip what
/// was added meanwhile.
fn timeout_at(request: &Request) -> Option<Timeout> {
    match request.name().as_bytes() {
        b"BLPOP" | b"BRPOP" | b"BZPOPMIN" | b"BZPOPMAX" | b"BRPOPLPUSH" | b"BLMOVE" => {
            request.argc().checked_sub(1).map(Timeout::Seconds)
        }
        b"BLMPOP" | b"BZMPOP" => Some(Timeout::Seconds(1)),
        b"XREAD" | b"XREADGROUP" => stream_timeout(request),
        _ => None,
    }
}

/// `BLOCK`'s argument in a stream read whose ids can be read again.
fn stream_timeout(request: &Request) -> Option<Timeout> {
    let upper = |i: usize| request.arg(i).map(|a| a.to_ascii_uppercase());
    let block = (1..request.argc()).find(|&i| upper(i).as_deref() == Some(b"BLOCK"))? + 1;
    let streams = (1..request.argc()).find(|&i| upper(i).as_deref() == Some(b"STREAMS"))?;
    let named = request.argc() - streams - 1;
    if block > streams || named == 0 || named % 2 != 0 {
        return None;
    }
    let ids = streams + 1 + named / 2..request.argc();
    let resumable = ids
        .map(|i| request.arg(i))
        .all(|id| id.is_some_and(|id| id != b"$" && id != b"+"));
    resumable.then_some(Timeout::Millis(block))
}

/// A null reply: what a blocking command answers when its timeout is up.
fn is_null(reply: &[u8]) -> bool {
    matches!(reply, b"*-1\r\n" | b"$-1\r\n" | b"_\r\n")
}

/// `request` with what is left of its timeout after `elapsed`, for the
/// blocking commands whose timeout is an argument in seconds (0 stays 0:
/// no limit); `None` when it is up, or for any other command.
fn remaining(request: &Request, elapsed: Duration) -> Option<Request> {
    let (at, seconds) = match timeout_at(request)? {
        Timeout::Seconds(at) => (at, 1.0),
        Timeout::Millis(at) => (at, 0.001),
    };
    let timeout: f64 = std::str::from_utf8(request.arg(at)?).ok()?.parse().ok()?;
    if timeout == 0.0 {
        return Some(Request::from_args(&request.args()));
    }
    let left = timeout * seconds - elapsed.as_secs_f64();
    if left < 0.001 {
        return None;
    }
    let mut args = request.args();
    args[at] = Bytes::from(if seconds == 1.0 {
        format!("{left:.3}")
    } else {
        // BLOCK takes whole milliseconds.
        format!("{}", (left * 1000.0).ceil() as u64)
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn req(args: &[&str]) -> Request {
        Request::from_args(args)
    }

    #[test]
    fn pops_and_stream_reads_from_named_ids_may_be_sent_again() {
        assert_eq!(
            timeout_at(&req(&["BLPOP", "a", "b", "5"])),
            Some(Timeout::Seconds(3))
        );
        assert_eq!(
            timeout_at(&req(&["BZMPOP", "1", "1", "z", "MIN"])),
            Some(Timeout::Seconds(1))
        );
        let group = [
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "COUNT",
            "1",
            "BLOCK",
            "500",
            "STREAMS",
            "s",
            ">",
        ];
        assert_eq!(timeout_at(&req(&group)), Some(Timeout::Millis(7)));
        let ids = ["xread", "block", "0", "streams", "s", "t", "0-0", "17-1"];
        assert_eq!(timeout_at(&req(&ids)), Some(Timeout::Millis(2)));
        // `$` (or `+`) read again would skip what was added meanwhile.
        let dollar = ["XREAD", "BLOCK", "0", "STREAMS", "s", "t", "0-0", "$"];
        assert_eq!(timeout_at(&req(&dollar)), None);
        assert_eq!(
            timeout_at(&req(&["XREAD", "BLOCK", "0", "STREAMS", "s", "+"])),
            None
        );
        // Not blocking, or malformed: nothing to send again.
        assert_eq!(timeout_at(&req(&["XREAD", "STREAMS", "s", "0"])), None);
        assert_eq!(
            timeout_at(&req(&["XREAD", "BLOCK", "0", "STREAMS", "s", "t", "0"])),
            None
        );
        assert_eq!(timeout_at(&req(&["XREAD", "STREAMS", "BLOCK", "0"])), None);
        assert_eq!(timeout_at(&req(&["GET", "k"])), None);
    }

    #[test]
    fn what_is_left_of_a_timeout_is_sent_in_the_commands_unit() {
        let again = remaining(&req(&["BRPOP", "q", "2"]), Duration::from_millis(500)).unwrap();
        assert_eq!(again.arg(2), Some(&b"1.500"[..]));
        let read = [
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "BLOCK",
            "2000",
            "STREAMS",
            "s",
            ">",
        ];
        let again = remaining(&req(&read), Duration::from_millis(499)).unwrap();
        assert_eq!(again.arg(5), Some(&b"1501"[..]));
        // No limit stays no limit; a limit used up sends nothing.
        let forever = ["XREAD", "BLOCK", "0", "STREAMS", "s", "0"];
        let again = remaining(&req(&forever), Duration::from_secs(60)).unwrap();
        assert_eq!(again.arg(2), Some(&b"0"[..]));
        assert!(remaining(&req(&read), Duration::from_secs(3)).is_none());
    }
}
