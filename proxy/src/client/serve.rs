//! The task serving one client: it reads the socket, has the connection
//! handle every complete request, writes the replies that are ready, and
//! meanwhile watches everything else that can concern the client (the
//! shutdown, its memory account, orders from other clients, slots moving
//! under its blocked commands). What a request does is the connection's
//! (`connection.rs` and the files it names); when, is this task's.
//!
//! One task does both directions: it dispatches every complete request it
//! has read (while the client is owed fewer than `max_pipeline` replies),
//! writes every reply that is ready, then waits for whichever comes first,
//! more input or the next reply. A client that sends faster than it reads
//! is thus held back by TCP, with a bounded amount buffered here.

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::connection::{Connection, Flow};
use super::redirect;
use super::registry::Order;
use super::session::Asker;
use crate::net::ReadHalf;
use crate::resp::Value;

/// Where parsing stopped (see [`Task::serve_parsed`]).
enum Served {
    /// The client is owed its window of replies: parse again once some
    /// are written, without waiting for input.
    Held,
    /// Waiting for more input, or behind a blocked command.
    Waiting,
    /// The connection ends.
    Stop,
}

/// What woke a waiting task.
enum Woke {
    /// Something to do: write, parse, or look again.
    Ready,
    /// The shutdown began: serve what is owed, read nothing more.
    Closing,
    /// The client left, was killed or evicted.
    Gone,
    /// The connection ends (its writer is gone).
    Stop,
}

pub(super) struct Task {
    conn: Connection,
    rd: ReadHalf,
    /// `limits.max_pipeline`: replies a client may be owed before its
    /// socket is no longer read.
    max: usize,
    shutdown: watch::Receiver<bool>,
    /// The shutdown began: what was read is served, nothing more is read.
    closing: bool,
    /// Bytes read before the shutdown began but not yet parsed (held
    /// behind a blocked command): still served, being owed.
    unread_owed: usize,
    slots_changed: watch::Receiver<u64>,
}

impl Task {
    pub(super) fn new(conn: Connection, rd: ReadHalf) -> Task {
        let shutdown = conn.ctx.shutdown.clone();
        let closing = *shutdown.borrow();
        Task {
            max: conn.ctx.limits.load().max_pipeline,
            closing,
            shutdown,
            unread_owed: 0,
            slots_changed: conn.ctx.slots.watch(),
            rd,
            conn,
        }
    }

    /// Serves the client until it goes away, a protocol error, or QUIT.
    pub(super) async fn run(mut self) {
        let max = self.max;
        let gone = loop {
            // Behind a command blocked on a node nothing runs, as on
            // Redis: what the client pipelined after it waits, unparsed,
            // until it is answered, and the loop below keeps watching the
            // socket meanwhile, so a client that leaves is noticed, its
            // command unblocked, and nothing it queued behind runs.
            // Whether parsing stopped with the client owed its window of
            // replies (rather than for want of bytes): once some are
            // written, parsing resumes without waiting for more input.
            let held = match self.serve_parsed().await {
                Served::Stop => break false,
                Served::Held => true,
                Served::Waiting => false,
            };
            let c = &mut self.conn;
            let blocked = c.waits_on_blocked();
            c.published.publish(
                &c.registration.entry,
                c.arrived.into_std(),
                &c.session,
                (c.handled, c.last.as_ref()),
                blocked,
            );
            if c.flush().await == Flow::Stop {
                break false;
            }
            // What stays in `buf` is an unfinished request.
            if !c.out.account.hold_partial(c.buf.len()) {
                break true;
            }
            // A blocked pop the node let go of as it became a replica goes
            // to the new primary rather than answer with an error.
            if !c.blocked.is_empty() && c.reissue_if_demoted().await == Flow::Stop {
                break false;
            }
            if let Some(backend) = c.pipe_from.take() {
                self.conn.pipe(self.rd, backend).await;
                return;
            }
            if c.out.replies.write_ready().await.is_err() {
                return;
            }
            if held && c.out.in_flight() < c.out.replies.window(max) {
                continue;
            }
            if self.closing && c.out.replies.is_empty() {
                if self.unread_owed == 0 {
                    break false;
                }
                continue;
            }
            let idle = c.out.open.is_none() && c.out.replies.completed() == c.out.replies.queued();
            c.routing.release(c.out.replies.completed(), idle);
            let can_read = !self.closing && c.out.in_flight() < c.out.replies.window(max);
            self.make_room(can_read);
            match self.until_woken(can_read).await {
                Woke::Ready => {}
                Woke::Closing => {
                    tracing::debug!("closing for shutdown");
                    self.closing = true;
                    self.unread_owed = self.conn.buf.len();
                }
                Woke::Gone => break true,
                Woke::Stop => break false,
            }
        };
        finish(self.conn, gone).await;
    }

    /// Sizes the buffer for the next read: a buffer grown for a large
    /// request is given back, not kept.
    fn make_room(&mut self, can_read: bool) {
        let c = &mut self.conn;
        if c.buf.is_empty() && c.buf.capacity() > crate::backend::cutter::RETURN_ABOVE {
            c.buf = BytesMut::with_capacity(16 * 1024);
        }
        if can_read {
            let wanted = c.parser.wanted().saturating_sub(c.buf.len());
            c.buf.reserve(wanted.clamp(4096, 1024 * 1024));
        }
    }

    /// Waits for whichever comes first: a reply ready to write, input,
    /// an eviction, the shutdown, the node's pushes on a reserved
    /// connection, a slot starting to move under a blocked command, or an
    /// order from another client.
    async fn until_woken(&mut self, can_read: bool) -> Woke {
        let c = &mut self.conn;
        tokio::select! {
            _ = c.out.replies.front_ready(), if !c.out.replies.is_empty() => Woke::Ready,
            read = self.rd.read_buf(&mut c.buf), if can_read => match read {
                Ok(0) | Err(_) => Woke::Gone,
                Ok(_) => {
                    c.arrived = tokio::time::Instant::now();
                    c.bursts += 1;
                    Woke::Ready
                }
            },
            _ = c.out.account.evicted() => Woke::Gone,
            _ = c.registration.entry.closing(&self.shutdown), if !self.closing => Woke::Closing,
            read = super::piped::Reserved::read(c.reserved.as_mut()) => {
                let pushes = redirect::pushes(&mut c.reserved, &c.registration, read);
                match pushes.is_empty() || c.out.replies.write_raw(&pushes).await.is_ok() {
                    true => Woke::Ready,
                    false => Woke::Gone,
                }
            }
            _ = self.slots_changed.changed(), if !c.blocked.is_empty() => {
                match c.unblock_if_paused().await {
                    Flow::Continue => Woke::Ready,
                    Flow::Stop => Woke::Stop,
                }
            }
            order = c.orders.recv() => obey(c, order).await,
            // With several shards: a tracking client's invalidations; a
            // feed that ended disconnects it, so it flushes its cache.
            message = super::tracking::Tracking::next(c.tracking.as_mut()), if c.tracking.is_some() => match message {
                Some(message) => {
                    c.invalidated(message).await;
                    Woke::Ready
                }
                None => Woke::Gone,
            },
            // Invalidations another client's tracking redirects here.
            message = super::tracking::inbox(c.inbox.as_mut(), &c.registration.entry), if c.inbox.is_some() => match message {
                Some(message) => {
                    let _ = c.flush().await;
                    c.take_invalidation(message);
                    Woke::Ready
                }
                None => Woke::Gone,
            },
        }
    }

    /// Parses and runs what the buffer holds, until the client is owed its
    /// window of replies (`Held`), a command blocks, or only part of a
    /// request is left (`Waiting`). While closing, only what was read
    /// before the shutdown began is served.
    async fn serve_parsed(&mut self) -> Served {
        let c = &mut self.conn;
        while (!self.closing || self.unread_owed > 0) && !c.waits_on_blocked() {
            if c.out.in_flight() >= c.out.replies.window(self.max) {
                return Served::Held;
            }
            let before = c.buf.len();
            let parsed = c.parser.parse(&mut c.buf);
            self.unread_owed = self
                .unread_owed
                .saturating_sub(before - c.buf.len().min(before));
            match parsed {
                Ok(Some(req)) => {
                    if c.handle(req).await == Flow::Stop {
                        return Served::Stop;
                    }
                }
                Ok(None) => {
                    // Only part of a request is left: nothing owed.
                    if self.closing {
                        self.unread_owed = 0;
                    }
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "protocol error");
                    c.reply(Value::err(format!("ERR {e}"))).await;
                    return Served::Stop;
                }
            }
        }
        Served::Waiting
    }
}

/// An order from another client.
async fn obey(c: &mut Connection, order: Option<Order>) -> Woke {
    match order {
        // Killed by another client: as if it had left.
        Some(Order::Kill) | None => Woke::Gone,
        Some(Order::Unblock { error, done }) => {
            let _ = done.send(c.unblock_own(error).await);
            Woke::Ready
        }
        Some(Order::Reserve { node, done }) => {
            let me = Asker {
                ctx: &c.ctx,
                session: &c.session,
                registration: &c.registration,
            };
            let _ = done.send(redirect::reserve(me, &mut c.reserved, &node).await);
            Woke::Ready
        }
        Some(Order::Inbox(inbox)) => {
            c.inbox = Some(inbox);
            Woke::Ready
        }
    }
}

/// The connection's end: an evicted client gets nothing more; one that
/// left (`gone`) has its blocked commands undone; the rest are written what
/// they are owed.
async fn finish(mut c: Connection, gone: bool) {
    // Nothing more is read: what the buffer held no longer counts (the
    // account gives it back when it closes too, on every other path).
    c.out.account.hold_partial(0);
    if let Some(reason) = c.out.account.eviction() {
        // Nothing more is written to a client evicted for its memory:
        // what it is owed is dropped with the connection.
        c.ctx.events.record(
            "*",
            "client-evicted",
            None,
            0,
            format!(
                "client {} ({}) disconnected: {}; {} bytes of replies were waiting for it",
                c.session.id,
                c.registration.entry.addr,
                reason.name(),
                c.out.account.used()
            ),
        );
        c.abandon_blocked().await;
        return;
    }
    let _ = c.flush().await;
    if gone {
        c.abandon_blocked().await;
    }
    let _ = c.out.replies.drain().await;
    c.out.replies.shutdown().await;
}
