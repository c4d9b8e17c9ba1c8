//! The read side of a link: replies matched to the batches in flight, in
//! the order they were written, handed over whole (or held for a `WAIT`
//! when the batch is synchronous); and the watchdog that gives up on a
//! node that stops answering.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::budget::Charge;
use super::cutter::{idle_read, Idle, ReplyCutter};
use super::reply::{BatchReply, ReplyTo};
use super::stats::LinkStats;
use super::LinkError;
use crate::net::ReadHalf;
use crate::replicate::wait::PendingWait;
use crate::replicate::Durability;

/// Something written and awaiting its replies.
pub(super) enum InFlight {
    /// A client's batch. A durable one is held after its replies arrive
    /// until the `WAIT` after it answers.
    Batch {
        replies: usize,
        reply: ReplyTo,
        durable: Option<Arc<Durability>>,
        keep_on_shortfall: bool,
        /// Its share of the link's window, given back when its replies are in.
        cost: u32,
    },
    /// The `WAIT` Rampart sent after durable batches.
    Wait(PendingWait),
}

impl InFlight {
    pub(super) fn replies(&self) -> usize {
        match self {
            InFlight::Batch { replies, .. } => *replies,
            InFlight::Wait(_) => 1,
        }
    }
}

/// Bounds how many replies a link has asked for and not yet read.
///
/// Redis reads what a connection has sent (up to 16 KiB at a time), runs
/// all of it, and only then writes the replies. Without a bound, a link
/// carrying many clients hands the node everything they sent at once: the
/// node works through one long run while the clients wait for replies,
/// then the clients and Rampart work through the replies while the node
/// idles for lack of requests. Keeping the run short lets the node work on
/// one part while the replies to the part before flow back, so the node,
/// Rampart and the clients work at the same time. Measured on LRANGE 100,
/// 50 clients, pipelines of 16: +10% throughput. Batches that wait for the
/// window wait in Rampart's queue, in order, where they would otherwise
/// have waited in the node's socket.
pub(super) struct Window {
    pub(super) room: tokio::sync::Semaphore,
    pub(super) size: u32,
}

impl Window {
    pub(super) fn new(size: u32) -> Option<Window> {
        (size > 0).then(|| Window {
            room: tokio::sync::Semaphore::new(size as usize),
            size,
        })
    }

    /// A batch's share: its replies, at most the whole window (so a batch
    /// larger than the window still goes, alone).
    pub(super) fn cost(&self, replies: usize) -> u32 {
        replies.clamp(1, self.size as usize) as u32
    }

    /// Waits until there is room for a batch of `replies`, takes it and
    /// returns its cost (0 without a window).
    pub(super) async fn enter(window: Option<&Window>, replies: usize) -> u32 {
        let Some(window) = window else {
            return 0;
        };
        let cost = window.cost(replies);
        if let Ok(permit) = window.room.acquire_many(cost).await {
            permit.forget();
        }
        cost
    }

    /// Takes room for a batch of `replies` if there is some now; its cost.
    pub(super) fn try_enter(window: Option<&Window>, replies: usize) -> Option<u32> {
        let Some(window) = window else {
            return Some(0);
        };
        let cost = window.cost(replies);
        let permit = window.room.try_acquire_many(cost).ok()?;
        permit.forget();
        Some(cost)
    }

    pub(super) fn leave(&self, cost: u32) {
        self.room.add_permits(cost as usize);
    }
}

/// What the watchdog needs to see of the reader. A timer per read would
/// cost a timer registration (and a wake-up of the event loop) per reply;
/// one coarse watchdog per link costs nothing on the request path.
#[derive(Default)]
pub(super) struct Progress {
    /// The reader is waiting for replies it is owed.
    pub(super) waiting: AtomicBool,
    /// Reads completed so far.
    pub(super) reads: std::sync::atomic::AtomicU64,
}

/// Fails the link when it has owed replies for a whole `limit` with no read
/// completing, unless the node says it is busy (a long script, a pause: the
/// reply will come). It must have been waiting at two ticks in a row with
/// no read between them, so a request sent just before a tick, on a link
/// that was idle, is never taken for a silent node: detection takes
/// between one and two `limit`s.
pub(super) async fn watchdog(
    progress: &Progress,
    limit: Option<Duration>,
    stats: &LinkStats,
) -> Result<(), LinkError> {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    let mut last = progress.reads.load(Ordering::Relaxed);
    let mut was_waiting = false;
    loop {
        tokio::time::sleep(limit).await;
        let now = progress.reads.load(Ordering::Relaxed);
        let waiting = progress.waiting.load(Ordering::Relaxed);
        if was_waiting && waiting && now == last && !stats.is_busy() {
            return Err(LinkError::Silent(limit));
        }
        // A busy node's wait does not count towards the next tick either.
        was_waiting = waiting && !stats.is_busy();
        last = now;
    }
}

pub(super) struct Reader<'w> {
    /// The connection's window, when it has one: room is given back as
    /// replies arrive.
    pub(super) window: Option<&'w Window>,
    pub(super) cut: ReplyCutter,
    pub(super) current: Option<InFlight>,
    /// Durable batches whose replies arrived, waiting for their `WAIT`.
    pub(super) held: Vec<(ReplyTo, BatchReply, bool)>,
    pub(super) stats: Arc<LinkStats>,
    /// What the current batch's replies, as far as they have arrived,
    /// cost the client they are for: a batch of large replies is held here
    /// until complete, and must count against the client's caps meanwhile.
    pub(super) charge: Option<Charge>,
}

impl Reader<'_> {
    pub(super) async fn run(
        &mut self,
        mut rd: ReadHalf,
        inflight: &mut mpsc::UnboundedReceiver<InFlight>,
        progress: &Progress,
    ) -> Result<(), LinkError> {
        loop {
            self.deliver(inflight)?;
            if self.current.is_none() {
                match idle_read(inflight, &mut rd, &mut self.cut.buf).await? {
                    Idle::Next(next) => self.current = Some(next),
                    Idle::Done => return Ok(()),
                    Idle::Read => {}
                }
                continue;
            }
            self.cut.make_room();
            progress.waiting.store(true, Ordering::Relaxed);
            let n = rd.read_buf(&mut self.cut.buf).await?;
            progress.waiting.store(false, Ordering::Relaxed);
            progress.reads.fetch_add(1, Ordering::Relaxed);
            if n == 0 {
                return Err(LinkError::Closed);
            }
            self.stats.reads.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands every complete batch of replies to its owner.
    pub(super) fn deliver(
        &mut self,
        inflight: &mut mpsc::UnboundedReceiver<InFlight>,
    ) -> Result<(), LinkError> {
        loop {
            if self.current.is_none() {
                match inflight.try_recv() {
                    Ok(next) => self.current = Some(next),
                    Err(_) => return self.drop_unsolicited(),
                }
            }
            // (RESP3 pushes are dropped: sessions that receive them are
            // piped, never on a link.)
            if !self.cut.advance()? {
                self.charge_current();
                return Ok(());
            }
            let unwanted =
                matches!(&self.current, Some(InFlight::Batch { reply, .. }) if reply.is_unwanted());
            if unwanted {
                // Keep reading for the clients behind it, not holding
                // what this one will never take.
                self.cut.discard();
            }
            let done = self.cut.done;
            let Some(current) = self.current.take_if(|c| c.replies() == done) else {
                continue;
            };
            let (data, got) = self.cut.take();
            let answer = BatchReply {
                data,
                got,
                error: unwanted.then(|| "ERR rampart: client evicted or gone".into()),
                charge: self.charge.take(),
            };
            if let (InFlight::Batch { cost, .. }, Some(window)) = (&current, self.window) {
                window.leave(*cost);
            }
            match current {
                InFlight::Batch {
                    reply,
                    durable: None,
                    ..
                } => {
                    self.stats.count_answered(1);
                    let _ = reply.send(answer);
                }
                InFlight::Batch {
                    reply,
                    keep_on_shortfall,
                    ..
                } => self.held.push((reply, answer, keep_on_shortfall)),
                InFlight::Wait(pending) => self.release(&answer.data, &pending),
            }
        }
    }

    /// Charges the bytes of the current batch that have arrived (they
    /// are all in the buffer: its complete replies and the one arriving)
    /// to its client.
    pub(super) fn charge_current(&mut self) {
        let Some(InFlight::Batch { reply, .. }) = &self.current else {
            return;
        };
        let held = self.cut.buf.len();
        match &mut self.charge {
            Some(charge) => charge.resize(held),
            None if held > 0 => self.charge = reply.charge(held),
            None => {}
        }
    }

    /// Answers the held batches once their `WAIT` has, as the `WAIT`'s
    /// verdict says: as they are, or with every successful write turned
    /// into the error it names.
    pub(super) fn release(&mut self, wait_reply: &[u8], pending: &PendingWait) {
        let error = pending.verdict(wait_reply);
        for (reply, mut answer, keep) in self.held.drain(..) {
            if let (Some(error), false) = (&error, keep) {
                answer.data = pending.fail(&answer.data, error, self.cut.scanner.depth());
            }
            self.stats.count_answered(1);
            let _ = reply.send(answer);
        }
    }

    /// Bytes with no request waiting for them: harmless if they are pushes,
    /// a broken connection otherwise.
    pub(super) fn drop_unsolicited(&mut self) -> Result<(), LinkError> {
        while !self.cut.buf.is_empty() {
            match self.cut.scanner.scan(&self.cut.buf)? {
                None => return Ok(()),
                Some(len) if self.cut.buf[0] == b'>' => {
                    let _ = self.cut.buf.split_to(len);
                }
                Some(_) => return Err(LinkError::Unsolicited),
            }
        }
        Ok(())
    }

    /// Answers everything still in flight after the connection ended, with
    /// `error`; returns how many requests failed.
    ///
    /// Held durable batches fail too: their writes reached the primary, but
    /// whether they reached the replicas is unknown. Except a blocking
    /// pop's: what it took is in its reply and nowhere else, so the reply
    /// is passed on as it is, as on a quorum shortfall (delivered at least
    /// once, never dropped with the connection).
    pub(super) fn fail(
        &mut self,
        inflight: &mut mpsc::UnboundedReceiver<InFlight>,
        error: Arc<str>,
    ) -> usize {
        let mut failed = 0;
        for (reply, held, keep) in self.held.drain(..) {
            self.stats.count_answered(1);
            if keep {
                let _ = reply.send(held);
                continue;
            }
            failed += held.got;
            let _ = reply.send(BatchReply::failed(error.clone()));
        }
        if let Some(InFlight::Batch {
            reply,
            durable,
            replies,
            keep_on_shortfall,
            ..
        }) = self.current.take()
        {
            // The replies that arrived: a durable batch's are not to be
            // trusted (unconfirmed), but for a pop's (see above).
            let (data, done) = self.cut.take();
            let (data, got) = match durable.is_none() || keep_on_shortfall {
                true => (data, done),
                false => (Bytes::new(), 0),
            };
            failed += replies - got;
            self.stats.count_answered(1);
            let _ = reply.send(BatchReply {
                data,
                got,
                error: Some(error.clone()),
                charge: self.charge.take(),
            });
        }
        inflight.close();
        while let Ok(next) = inflight.try_recv() {
            if let InFlight::Batch { reply, replies, .. } = next {
                failed += replies;
                self.stats.count_answered(1);
                let _ = reply.send(BatchReply::failed(error.clone()));
            }
        }
        failed
    }
}
