//! What the shard's ordered log holds: client writes, and the steps of a
//! resync, each with a sequence number. Every node runs the entries in
//! sequence order over one connection, so every node applies the writes in
//! the same order.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use crate::backend::BatchReply;
use crate::replicate::{self, Durability, Requirement};
use crate::resp::Proto;

pub struct Entry {
    pub seq: u64,
    /// When it was appended, and the log's byte count before it: for the
    /// nodes' lag.
    pub at: Instant,
    pub offset: u64,
    pub kind: Kind,
}

// Entries live in an `Arc` each, one allocation whatever the variant: a
// small variant saves nothing by the large one being boxed.
#[allow(clippy::large_enum_variant)]
pub enum Kind {
    Write(Write),
    /// Part of a resync: `source` reads these keys (DUMP + PEXPIRETIME) at
    /// this point of the order, and `target` writes what it read at the
    /// same point, so the copy is exact whatever writes come before and
    /// after. Every other node skips it.
    Snapshot(Snapshot),
    /// The end of a resync: once `target` has run everything up to here it
    /// holds what the others hold.
    Synced {
        target: usize,
    },
}

impl Entry {
    /// Bytes this entry keeps in memory, for the backlog bound.
    pub fn size(&self) -> usize {
        64 + match &self.kind {
            Kind::Write(w) => w.payload.len(),
            Kind::Snapshot(s) => s.keys.iter().map(|k| k.len() * 3).sum(),
            Kind::Synced { .. } => 0,
        }
    }

    pub fn write(&self) -> Option<&Write> {
        match &self.kind {
            Kind::Write(w) => Some(w),
            _ => None,
        }
    }
}

/// A batch of one client's writes.
pub struct Write {
    pub proto: Proto,
    /// The requests, encoded back to back in a buffer of their own: the
    /// client's requests are slices of its read buffer, and an entry held
    /// for a node that is away would pin every such buffer whole.
    pub payload: Bytes,
    /// Replies each node sends.
    pub replies: usize,
    /// Leading replies the client does not get: a transaction is sent as
    /// `MULTI ... EXEC`, and the client, whose `MULTI` and `QUEUED`s Rampart
    /// answered itself, gets only `EXEC`'s reply.
    pub skip: usize,
    /// Node replies needed before the client is answered: the quorum's
    /// acknowledgements plus the node whose reply the client gets.
    pub needed: u32,
    pub req: Requirement,
    pub deadline: Instant,
    pub durability: Arc<Durability>,
    acks: Mutex<Acks>,
}

struct Acks {
    /// Taken when the client is answered.
    reply: Option<oneshot::Sender<BatchReply>>,
    /// The node whose reply the client gets: the primary when the write was
    /// ordered.
    preferred: usize,
    /// Replies are kept only until the client is answered: an entry can
    /// stay in the log for long (a node is away), and a reply's bytes pin
    /// the whole read buffer they were cut from.
    from_preferred: Option<Bytes>,
    /// The first reply from any node, used if the preferred node is lost
    /// (the writes are deterministic, so every node answers alike).
    first: Option<Bytes>,
    answered: u32,
    /// What kept, for as long as the entry lives: whether the preferred
    /// node's reply carried a node-state error (see [`node_state_error`]),
    /// once it came, and the same for other nodes that answered before it.
    preferred_state: Option<Option<&'static str>>,
    early: smallvec::SmallVec<[(usize, Option<&'static str>); 2]>,
}

/// Errors that say a node did not run a write because of its own state,
/// not because of the data: where one node answers one and the other does
/// not, the nodes no longer hold the same data.
const NODE_STATE_ERRORS: &[&str] = &[
    "READONLY",
    "OOM",
    "LOADING",
    "MASTERDOWN",
    "MISCONF",
    "NOREPLICAS",
    "BUSY",
    "NOSCRIPT",
    "NOPERM",
    "NOAUTH",
    "CLUSTERDOWN",
    "MOVED",
    "ASK",
    "TRYAGAIN",
];

/// The first node-state error among `data`'s replies, if any.
pub fn node_state_error(data: &[u8]) -> Option<&'static str> {
    // Most write replies (+OK, :1) hold no '-' at all: nothing to walk.
    if !data.contains(&b'-') {
        return None;
    }
    let mut scanner = crate::resp::ReplyScanner::new(64);
    let mut rest = data;
    while let Ok(Some(len)) = scanner.scan(rest) {
        if let Some(text) = rest.strip_prefix(b"-") {
            let code = text
                .split(|&c| c == b' ' || c == b'\r')
                .next()
                .unwrap_or_default();
            if let Some(known) = NODE_STATE_ERRORS.iter().find(|e| e.as_bytes() == code) {
                return Some(known);
            }
        }
        rest = &rest[len..];
    }
    None
}

/// What a write's release looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Not yet: still waiting for replies.
    Waiting,
    /// Answered now, or earlier.
    Done,
}

impl Write {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        proto: Proto,
        requests: Vec<Bytes>,
        skip: usize,
        reply: oneshot::Sender<BatchReply>,
        preferred: usize,
        req: Requirement,
        deadline: Instant,
        durability: Arc<Durability>,
    ) -> Write {
        Write {
            proto,
            replies: requests.len(),
            skip: skip.min(requests.len().saturating_sub(1)),
            payload: {
                let mut payload =
                    bytes::BytesMut::with_capacity(requests.iter().map(|r| r.len()).sum());
                for request in &requests {
                    payload.extend_from_slice(request);
                }
                payload.freeze()
            },
            needed: req.acks + 1,
            req,
            deadline,
            durability,
            acks: Mutex::new(Acks {
                reply: Some(reply),
                preferred,
                from_preferred: None,
                first: None,
                answered: 0,
                preferred_state: None,
                early: smallvec::SmallVec::new(),
            }),
        }
    }

    fn acks(&self) -> std::sync::MutexGuard<'_, Acks> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_settled(&self) -> bool {
        self.acks().reply.is_none()
    }

    /// Node `node` ran the writes and answered `data`. `counts` is false
    /// for a node being resynced: it runs the writes, but what it holds is
    /// not yet the shard's data. `may_answer` says whether a node may
    /// still answer.
    ///
    /// Returns the nodes that no longer hold what the others hold: one
    /// answered a node-state error (READONLY, OOM ...) where the preferred
    /// node did not, or the other way round.
    pub fn answered(
        &self,
        node: usize,
        data: Bytes,
        counts: bool,
        may_answer: impl Fn(usize) -> bool,
    ) -> smallvec::SmallVec<[usize; 2]> {
        let mut diverged = smallvec::SmallVec::new();
        let mut acks = self.acks();
        if !counts {
            return diverged;
        }
        let state = node_state_error(&data);
        let preferred = acks.preferred;
        let judge = |other: usize, theirs: Option<&str>, ours: Option<&str>| match (ours, theirs) {
            (None, Some(_)) => Some(other),
            (Some(_), None) => Some(preferred),
            _ => None,
        };
        if node == preferred {
            acks.preferred_state = Some(state);
            for (other, theirs) in acks.early.drain(..) {
                diverged.extend(judge(other, theirs, state));
            }
        } else {
            match acks.preferred_state {
                Some(ours) => diverged.extend(judge(node, state, ours)),
                None => acks.early.push((node, state)),
            }
        }
        diverged.dedup();
        if acks.reply.is_none() {
            return diverged;
        }
        let preferred_live = node == preferred || may_answer(preferred);
        acks.answered += 1;
        if node == preferred {
            acks.from_preferred = Some(data.clone());
        }
        if acks.first.is_none() {
            acks.first = Some(data);
        }
        self.try_release(&mut acks, preferred_live, false);
        diverged
    }

    /// Releases the write if it is due: enough replies, or its deadline has
    /// passed (`timed_out`), or the preferred node is gone and another
    /// answered.
    pub fn settle(&self, preferred_live: impl Fn(usize) -> bool, timed_out: bool) -> Settle {
        let mut acks = self.acks();
        if acks.reply.is_none() {
            return Settle::Done;
        }
        let live = preferred_live(acks.preferred);
        self.try_release(&mut acks, live, timed_out);
        if acks.reply.is_none() {
            Settle::Done
        } else {
            Settle::Waiting
        }
    }

    fn try_release(&self, acks: &mut Acks, preferred_live: bool, timed_out: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        // At the deadline any node's reply will do: the preferred one may
        // be the node that is not answering.
        let data = if preferred_live && !timed_out {
            acks.from_preferred.clone()
        } else {
            acks.from_preferred.clone().or_else(|| acks.first.clone())
        };
        let enough = acks.answered >= self.needed;
        let answer = match data {
            Some(data) if enough => data,
            Some(data) if timed_out => {
                self.durability.shortfalls.fetch_add(1, Relaxed);
                if !self.req.fail_on_shortfall {
                    data
                } else {
                    let error = shortfall_error(acks.answered.saturating_sub(1), self.req);
                    let (data, failed) = replicate::fail_writes(&data, &error, 64);
                    self.durability.failed_writes.fetch_add(failed, Relaxed);
                    data
                }
            }
            None if timed_out => {
                let Some(reply) = acks.reply.take() else {
                    return;
                };
                let _ = reply.send(BatchReply {
                    data: Bytes::new(),
                    got: 0,
                    error: Some(
                        "ERR rampart: no node answered the write in time; it stays queued for every node and may still be applied"
                            .into(),
                    ),
                    charge: None,
                });
                return;
            }
            _ => return,
        };
        if let Some(reply) = acks.reply.take() {
            let _ = reply.send(BatchReply {
                data: skip_replies(answer, self.skip),
                got: self.replies - self.skip,
                error: None,
                charge: None,
            });
        }
        acks.from_preferred = None;
        acks.first = None;
    }
}

/// `data` without its first `skip` replies.
fn skip_replies(data: Bytes, skip: usize) -> Bytes {
    let mut scanner = crate::resp::ReplyScanner::new(64);
    let mut from = 0;
    for _ in 0..skip {
        match scanner.scan(&data[from..]) {
            Ok(Some(len)) => from += len,
            _ => break,
        }
    }
    data.slice(from..)
}

/// The error a fanned-out write gets when too few nodes ran it in time.
fn shortfall_error(got: u32, req: Requirement) -> String {
    format!(
        "NOQUORUM the write reached {got} of the {} other nodes required within {} ms; it was applied where it arrived and stays queued for the rest (it cannot be rolled back)",
        req.acks, req.timeout_ms
    )
}

/// One key as the source node holds it.
#[derive(Debug, Clone)]
pub struct Dumped {
    pub key: Bytes,
    /// `DUMP`'s payload; `None` when the key does not exist.
    pub payload: Option<Bytes>,
    /// `PEXPIRETIME`: absolute Unix milliseconds, or -1 for none.
    pub expire_at: i64,
}

pub struct Snapshot {
    pub source: usize,
    pub target: usize,
    pub keys: Vec<Bytes>,
    /// What the source read, once it has: `Err` if it could not.
    read: watch::Sender<Option<Result<Arc<Vec<Dumped>>, String>>>,
}

impl Snapshot {
    pub fn new(source: usize, target: usize, keys: Vec<Bytes>) -> Snapshot {
        Snapshot {
            source,
            target,
            keys,
            read: watch::channel(None).0,
        }
    }

    pub fn fill(&self, result: Result<Vec<Dumped>, String>) {
        self.read.send_replace(Some(result.map(Arc::new)));
    }

    /// Waits for the source's read.
    pub async fn wait(&self) -> Result<Arc<Vec<Dumped>>, String> {
        let mut rx = self.read.subscribe();
        let filled = rx.wait_for(|v| v.is_some()).await;
        match filled {
            Ok(value) => value.clone().unwrap_or_else(|| Err("no read".into())),
            Err(_) => Err("the source went away".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_state_errors() {
        assert_eq!(
            node_state_error(b"+OK\r\n-OOM command not allowed\r\n"),
            Some("OOM")
        );
        assert_eq!(
            node_state_error(b"-READONLY You can't write against a read only replica.\r\n"),
            Some("READONLY")
        );
        assert_eq!(
            node_state_error(b"-NOSCRIPT No matching script.\r\n"),
            Some("NOSCRIPT")
        );
        // Errors about the data are the same on every node.
        assert_eq!(
            node_state_error(
                b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
            ),
            None
        );
        assert_eq!(node_state_error(b":1\r\n$3\r\nOOM\r\n"), None);
    }

    #[test]
    fn skips_leading_replies() {
        let data = Bytes::from_static(b"+OK\r\n+QUEUED\r\n*2\r\n:1\r\n:2\r\n");
        assert_eq!(&skip_replies(data.clone(), 2)[..], b"*2\r\n:1\r\n:2\r\n");
        assert_eq!(skip_replies(data.clone(), 0), data);
    }
}
