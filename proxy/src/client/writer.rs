//! The reply side of a client connection: the queue of replies the client
//! is owed, in request order, and writing them out.
//!
//! Only this queue writes to the client socket and it takes items strictly
//! from the front, so a client's replies can never overtake each other,
//! whichever nodes they come from. Every reply that is already complete is
//! gathered into one write.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use smallvec::SmallVec;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use std::sync::Arc;
use std::time::Instant;

use crate::backend::budget::Account;
use crate::backend::BatchReply;
use crate::net::WriteHalf;
use crate::observe::counters::{BatchClass, Metrics};

/// Something the client will receive, in order.
pub enum Pending {
    /// Replies to a batch sent to a backend link.
    Remote {
        reply: oneshot::Receiver<BatchReply>,
        replies: usize,
        /// When the batch went to the backend, and what it mostly was.
        sent: Instant,
        class: BatchClass,
    },
    /// A reply Rampart made itself, encoded.
    Local(Bytes),
    /// Replies from a backend that have arrived.
    Arrived { reply: BatchReply, replies: usize },
    /// Replies the client asked not to get (`CLIENT REPLY OFF|SKIP`):
    /// awaited in order, then dropped.
    Discard {
        reply: oneshot::Receiver<BatchReply>,
        replies: usize,
    },
}

/// How many bytes of replies a client may have coming at once, as far as
/// the size of its replies so far tells: its requests wait (unsent, so no
/// node works on them) while more would be. A shared link carries what is
/// in flight for every client on it in order, so this is also about how
/// long one client can make the others behind it wait.
const IN_FLIGHT_BYTES: usize = 16 * 1024 * 1024;
/// Requests in flight while nothing is known of the client's replies: a
/// first pipeline of huge reads costs at most this many.
const FIRST_WINDOW: usize = 2;

/// Writes past this size go out without waiting for more replies.
const FLUSH_AT: usize = 64 * 1024;
/// At most this many slices per vectored write (well under IOV_MAX).
const MAX_SLICES: usize = 64;

pub struct Replies {
    wr: WriteHalf,
    metrics: Arc<Metrics>,
    queue: VecDeque<Pending>,
    /// Replies ready to go, written together with one vectored write: a
    /// batch's replies are already one contiguous slice of the link's
    /// buffer, so nothing is copied on the way out.
    out: Vec<Bytes>,
    out_len: usize,
    /// Replies owed for requests already sent to backends.
    owed: usize,
    /// Items ever queued, and ever taken off the queue complete: item `n`
    /// (counting from 1) has its reply once `completed >= n`.
    queued: u64,
    completed: u64,
    /// Items pushed now are dropped rather than written.
    muted: bool,
    /// The client's share of the memory caps: replies are charged to it
    /// when they arrive, and released here as they are written.
    account: Arc<Account>,
    /// Bytes in `out` still charged to the account.
    charged: usize,
    /// The last time every queued item had its reply: how many there were
    /// and when (the moment consistent reads measure from, see
    /// `route::session`).
    caught_up: (u64, crate::topology::position::Stamp),
    /// Bytes per reply, as the client's recent replies were (the largest
    /// batch's average, decaying): 0 before any.
    per_reply: usize,
}

impl Replies {
    pub fn new(wr: WriteHalf, metrics: Arc<Metrics>, account: Arc<Account>) -> Replies {
        Replies {
            wr,
            metrics,
            queue: VecDeque::new(),
            out: Vec::with_capacity(16),
            out_len: 0,
            owed: 0,
            queued: 0,
            completed: 0,
            muted: false,
            account,
            charged: 0,
            caught_up: (0, 0),
            per_reply: 0,
        }
    }

    /// Queues an item; returns its position, for [`Replies::completed`].
    pub fn push(&mut self, item: Pending) -> u64 {
        let item = match item {
            Pending::Remote { reply, replies, .. } if self.muted => {
                Pending::Discard { reply, replies }
            }
            Pending::Local(_) | Pending::Arrived { .. } if self.muted => {
                Pending::Local(Bytes::new())
            }
            item => item,
        };
        if let Pending::Remote { replies, .. } | Pending::Discard { replies, .. } = &item {
            self.owed += replies;
        }
        self.queue.push_back(item);
        self.queued += 1;
        self.queued
    }

    /// Queues a message the node pushed (an invalidation), behind
    /// everything queued, whether or not replies are muted. It counts
    /// against the client's memory caps until written: a client that stops
    /// reading (or waits in a blocking command) while messages keep coming
    /// is evicted, not grown without bound.
    pub fn push_message(&mut self, message: Bytes) {
        self.charged += self.account.charge(message.len()).keep();
        self.queue.push_back(Pending::Local(message));
        self.queued += 1;
    }

    /// From now on, drop what is pushed (`CLIENT REPLY OFF`), or not.
    pub fn set_muted(&mut self, muted: bool) {
        self.muted = muted;
    }

    /// Takes back the replies Rampart made itself that were queued after
    /// item `position` (see [`Replies::queued`]), joined: a piped client's
    /// answers are written in the node's stream, where they belong, not
    /// through the queue.
    pub fn take_local_after(&mut self, position: u64) -> Bytes {
        let mut taken = BytesMut::new();
        while self.queued > position {
            match self.queue.pop_back() {
                Some(Pending::Local(bytes)) => {
                    let mut front = BytesMut::from(&bytes[..]);
                    front.unsplit(taken);
                    taken = front;
                }
                Some(other) => {
                    self.queue.push_back(other);
                    break;
                }
                None => break,
            }
            self.queued -= 1;
        }
        taken.freeze()
    }

    /// Items ever queued.
    pub fn queued(&self) -> u64 {
        self.queued
    }

    /// How many queued items have their replies.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// Items that had their replies the last time all of them did, and
    /// when that was.
    pub fn caught_up(&self) -> (u64, crate::topology::position::Stamp) {
        self.caught_up
    }

    /// Takes the item at `position` out of the queue, if it is still there,
    /// leaving an empty reply in its place. For a client that has gone:
    /// what it was owed is dealt with instead of written.
    pub fn take(&mut self, position: u64) -> Option<Pending> {
        let index = position.checked_sub(self.completed + 1)? as usize;
        let slot = self.queue.get_mut(index)?;
        let item = std::mem::replace(slot, Pending::Local(Bytes::new()));
        if let Pending::Remote { replies, .. }
        | Pending::Arrived { replies, .. }
        | Pending::Discard { replies, .. } = &item
        {
            self.owed -= replies;
        }
        Some(item)
    }

    /// Puts an item back at `position` (taken with [`Replies::take`],
    /// which stopped counting what it owes).
    pub fn put(&mut self, position: u64, item: Pending) {
        let Some(index) = position.checked_sub(self.completed + 1) else {
            return;
        };
        if let Some(slot) = self.queue.get_mut(index as usize) {
            if let Pending::Remote { replies, .. }
            | Pending::Arrived { replies, .. }
            | Pending::Discard { replies, .. } = &item
            {
                self.owed += replies;
            }
            *slot = item;
        }
    }

    /// Removes item `position` (taken with [`Replies::take`]) when it is
    /// the last: the next push takes its place. Whether it was.
    pub fn forget_last(&mut self, position: u64) -> bool {
        if self.queued != position || self.completed >= position || self.queue.is_empty() {
            return false;
        }
        self.queue.pop_back();
        self.queued -= 1;
        true
    }

    /// Backend replies the client is still owed: bounds how far ahead of
    /// its reading a client may send.
    pub fn owed(&self) -> usize {
        self.owed
    }

    /// How many replies the client may be owed before Rampart stops
    /// sending its requests: `max` (`limits.max_pipeline`) while its
    /// replies are small, fewer as they grow, so that what is in flight
    /// for it stays near [`IN_FLIGHT_BYTES`].
    pub fn window(&self, max: usize) -> usize {
        match self.per_reply {
            0 => FIRST_WINDOW.min(max),
            size => (IN_FLIGHT_BYTES / size).clamp(1, max.max(1)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Waits until the item at the front is complete. Cancel-safe: it only
    /// polls, the item stays queued.
    pub async fn front_ready(&mut self) {
        poll_fn(|cx| {
            if let Some(Pending::Discard { reply, replies }) = self.queue.front_mut() {
                let replies = *replies;
                let Poll::Ready(result) = Pin::new(reply).poll(cx) else {
                    return Poll::Pending;
                };
                self.owed -= replies;
                if let Ok(reply) = result {
                    self.learn(reply.data.len(), replies);
                }
                if let Some(front) = self.queue.front_mut() {
                    *front = Pending::Local(Bytes::new());
                }
                return Poll::Ready(());
            }
            let Some(Pending::Remote {
                reply,
                replies,
                sent,
                class,
            }) = self.queue.front_mut()
            else {
                return Poll::Ready(());
            };
            let replies = *replies;
            let Poll::Ready(result) = Pin::new(reply).poll(cx) else {
                return Poll::Pending;
            };
            self.metrics.observe(*class, sent.elapsed());
            let reply = result.unwrap_or_else(|_| dropped());
            if let Some(front) = self.queue.front_mut() {
                *front = Pending::Arrived { reply, replies };
            }
            Poll::Ready(())
        })
        .await
    }

    /// Writes every item at the front that is already complete.
    pub async fn write_ready(&mut self) -> std::io::Result<()> {
        let before = self.completed;
        self.write_complete().await?;
        if self.queue.is_empty() && self.completed != before {
            self.caught_up = (self.completed, crate::topology::position::stamp());
        }
        self.flush().await
    }

    async fn write_complete(&mut self) -> std::io::Result<()> {
        while let Some(item) = self.queue.pop_front() {
            self.completed += 1;
            match item {
                Pending::Local(bytes) => self.append(bytes),
                Pending::Arrived { reply, replies } => self.arrived(reply, replies),
                Pending::Remote {
                    mut reply,
                    replies,
                    sent,
                    class,
                } => match reply.try_recv() {
                    Ok(reply) => {
                        self.metrics.observe(class, sent.elapsed());
                        self.arrived(reply, replies)
                    }
                    Err(oneshot::error::TryRecvError::Empty) => {
                        self.completed -= 1;
                        self.queue.push_front(Pending::Remote {
                            reply,
                            replies,
                            sent,
                            class,
                        });
                        break;
                    }
                    Err(oneshot::error::TryRecvError::Closed) => self.arrived(dropped(), replies),
                },
                Pending::Discard { mut reply, replies } => match reply.try_recv() {
                    Err(oneshot::error::TryRecvError::Empty) => {
                        self.completed -= 1;
                        self.queue.push_front(Pending::Discard { reply, replies });
                        break;
                    }
                    Ok(reply) => {
                        self.owed -= replies;
                        self.learn(reply.data.len(), replies);
                    }
                    Err(oneshot::error::TryRecvError::Closed) => self.owed -= replies,
                },
            }
            if self.out_len >= FLUSH_AT || self.out.len() >= MAX_SLICES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Writes everything queued, waiting for replies as needed.
    pub async fn drain(&mut self) -> std::io::Result<()> {
        while !self.queue.is_empty() {
            self.write_ready().await?;
            if !self.queue.is_empty() {
                self.front_ready().await;
            }
        }
        Ok(())
    }

    /// Writes raw bytes straight through (a piped session).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.flush().await?;
        self.wr.write_all(bytes).await?;
        self.wr.flush().await
    }

    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.wr.shutdown().await;
    }

    fn arrived(&mut self, mut reply: BatchReply, replies: usize) {
        self.owed -= replies;
        self.learn(reply.data.len(), replies);
        if let Some(charge) = reply.charge.take() {
            self.charged += charge.keep();
        }
        if reply.error.is_none() {
            self.append(reply.data);
            return;
        }
        let mut out = BytesMut::with_capacity(reply.data.len() + 64);
        encode(&mut out, reply, replies);
        self.append(out.freeze());
    }

    /// Takes a batch's replies into [`Replies::window`]'s estimate.
    fn learn(&mut self, bytes: usize, replies: usize) {
        let size = bytes / replies.max(1);
        self.per_reply = size.max(self.per_reply - self.per_reply / 8).max(1);
    }

    fn append(&mut self, bytes: Bytes) {
        // An empty chunk would make the vectored write return 0, which
        // means the peer is gone.
        if bytes.is_empty() {
            return;
        }
        self.out_len += bytes.len();
        self.out.push(bytes);
    }

    /// Cancel-safe, and ends early with an error when the client is
    /// evicted: a client that does not read would otherwise keep its task
    /// here for good.
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        while !self.out.is_empty() {
            let mut written = {
                let slices: SmallVec<[IoSlice<'_>; 16]> =
                    self.out.iter().map(|b| IoSlice::new(b)).collect();
                // Biased: a write the socket takes at once never looks at
                // the eviction signal (polling it registers a waiter).
                tokio::select! {
                    biased;
                    written = self.wr.write_vectored(&slices) => written?,
                    _ = self.account.evicted() => {
                        return Err(std::io::Error::other("client evicted"));
                    }
                }
            };
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.out_len -= written;
            let released = written.min(self.charged);
            self.charged -= released;
            self.account.release(released);
            // Drop what went out; keep the unwritten tail of a partial chunk.
            let mut done = 0;
            for chunk in self.out.iter_mut() {
                if written >= chunk.len() {
                    written -= chunk.len();
                    done += 1;
                } else {
                    chunk.advance(written);
                    break;
                }
            }
            self.out.drain(..done);
        }
        // TLS may hold on to what a full socket did not take (plain TCP
        // holds nothing back): push it out.
        tokio::select! {
            biased;
            flushed = self.wr.flush() => flushed,
            _ = self.account.evicted() => Err(std::io::Error::other("client evicted")),
        }
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        self.account.release(self.charged);
    }
}

/// The replies that arrived, then an error for each that never will.
fn encode(out: &mut BytesMut, reply: BatchReply, replies: usize) {
    out.extend_from_slice(&reply.data);
    if let Some(error) = &reply.error {
        for _ in reply.got..replies {
            out.extend_from_slice(b"-");
            out.extend_from_slice(error.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

fn dropped() -> BatchReply {
    BatchReply {
        data: Bytes::new(),
        got: 0,
        error: Some("ERR rampart: the backend connection was lost before replying; the command may or may not have run".into()),
        charge: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply queue writing to a loopback socket, and the socket's peer.
    async fn queue() -> (Replies, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_, wr) = crate::net::Stream::Tcp(server).into_split();
        let budget = crate::backend::budget::Budget::new(crate::backend::budget::Caps::of(
            &crate::resp::Limits::default(),
        ));
        (Replies::new(wr, Arc::default(), budget.open(1)), client)
    }

    fn remote() -> (oneshot::Sender<BatchReply>, Pending) {
        let (tx, rx) = oneshot::channel();
        let pending = Pending::Remote {
            reply: rx,
            replies: 1,
            sent: Instant::now(),
            class: BatchClass::Other,
        };
        (tx, pending)
    }

    fn reply(data: &'static [u8]) -> BatchReply {
        BatchReply {
            data: Bytes::from_static(data),
            got: 1,
            error: None,
            charge: None,
        }
    }

    /// What a blocked command's reply goes through when its slot starts
    /// moving: taken out, then put back as arrived or forgotten and
    /// queued again. The count of replies owed stays exact (it bounds the
    /// client's pipeline; an underflow would be a panic).
    #[tokio::test]
    async fn an_item_taken_and_put_back_or_forgotten_keeps_the_count_owed() {
        let (mut replies, mut peer) = queue().await;
        let (_tx, pending) = remote();
        let position = replies.push(pending);
        assert_eq!(replies.owed(), 1);
        assert!(matches!(
            replies.take(position),
            Some(Pending::Remote { .. })
        ));
        assert_eq!(replies.owed(), 0);
        replies.put(
            position,
            Pending::Arrived {
                reply: reply(b"*-1\r\n"),
                replies: 1,
            },
        );
        assert_eq!(replies.owed(), 1);
        replies.write_ready().await.unwrap();
        assert_eq!((replies.owed(), replies.completed()), (0, 1));

        let (_tx, pending) = remote();
        let position = replies.push(pending);
        replies.take(position);
        assert!(replies.forget_last(position));
        assert_eq!((replies.owed(), replies.queued()), (0, 1));
        let (tx, pending) = remote();
        assert_eq!(
            replies.push(pending),
            position,
            "the next push takes its place"
        );
        tx.send(reply(b":1\r\n")).unwrap();
        replies.front_ready().await;
        replies.write_ready().await.unwrap();
        assert_eq!((replies.owed(), replies.completed()), (0, 2));
        let mut written = [0u8; 9];
        tokio::io::AsyncReadExt::read_exact(&mut peer, &mut written)
            .await
            .unwrap();
        assert_eq!(&written, b"*-1\r\n:1\r\n");
    }
}
