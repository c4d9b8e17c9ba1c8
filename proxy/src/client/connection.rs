//! The request side of a client connection: read, parse, classify, dispatch.
//!
//! Requests that arrive together and go to the same backend link are sent as
//! one batch. Whenever the client has to move to another backend connection
//! (into a transaction, out of one, into a pipe), the reader first waits at a
//! barrier until every earlier reply has been written, so moving never
//! reorders anything.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::inflight::{Blocked, OpenBatch};
use super::registry::{LastCommand, Order, Registration};
use super::session::Session;
use super::writer::Replies;
use crate::backend::control::frame_text;
use crate::context::Context;
use crate::net::{ReadHalf, WriteHalf};
use crate::observe::counters::BatchClass;
use crate::resp::command::{Class, NOT_THROUGH_RAMPART};
use crate::resp::{classify, Request, RequestParser, Value};
use crate::shard::Shard;

/// Where parsing stopped (see `Connection::serve_parsed`).
enum Served {
    /// The client is owed its window of replies: parse again once some
    /// are written, without waiting for input.
    Held,
    /// Waiting for more input, or behind a blocked command.
    Waiting,
    /// The connection ends.
    Stop,
}

/// Whether the reader goes on after a request.
#[derive(PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

pub struct Connection {
    /// When the bytes being parsed arrived: a request held for a primary
    /// waits at most `failover.hold_writes_ms` from then, so requests
    /// pipelined together wait together, not one hold after another.
    pub(super) arrived: tokio::time::Instant,
    /// Reads from the client's socket so far: requests that came in one
    /// read are one burst, which a rotating router keeps on one replica
    /// (one batch, not one per request).
    pub(super) bursts: u64,
    pub(super) ctx: Arc<Context>,
    pub(super) session: Session,
    pub(super) parser: RequestParser,
    pub(super) buf: BytesMut,
    /// This client's share of the memory caps (its replies hold it too).
    pub(super) account: Arc<crate::backend::budget::Account>,
    pub(super) replies: Replies,
    pub(super) open: Option<OpenBatch>,
    /// Set when the session becomes a pipe: the backend side to copy from.
    pub(super) pipe_from: Option<ReadHalf>,
    /// Piped: commands whose answers Rampart makes or amends, in the
    /// node's stream of replies (see [`super::interpose`]).
    pub(super) interposer: super::piped::Interposer,
    /// A connection opened for another client's tracking redirect, kept
    /// to become this client's pipe (see [`super::redirect`]).
    pub(super) reserved: Option<super::piped::Reserved>,
    /// The request being handled is a synchronous write.
    pub(super) durable: bool,
    /// Its class, for the latency histograms.
    pub(super) class: BatchClass,
    /// Position in the reply queue of the client's last durable batch: until
    /// its replies are in, the client's reads follow its writes on the write
    /// link, so they cannot overtake them.
    pub(super) durable_upto: u64,
    /// Blocking commands sent and perhaps not answered yet (see
    /// [`super::blocking`]).
    pub(super) blocked: Vec<Blocked>,
    /// This client's entry among all clients, and the orders other clients
    /// send it (`CLIENT KILL`, `CLIENT UNBLOCK`).
    pub(super) registration: Registration,
    pub(super) orders: mpsc::Receiver<Order>,
    /// The shard the request being handled goes to.
    pub(super) shard: Arc<Shard>,
    /// With several shards: which ones the client wrote to (by index),
    /// for `WAIT`.
    pub(super) written: Vec<bool>,
    /// What the client has seen of each shard (by index), for consistent
    /// reads from replicas.
    pub(super) reads: super::reads::ReadTokens,
    /// The last request handled, for `CLIENT LIST`'s `cmd=`.
    pub(super) last: Option<Request>,
    /// What was last published about this client.
    pub(super) published: super::publish::Publisher,
    /// The slot maps it routes by (see [`super::routing`]).
    pub(super) routing: super::routing::Routing,
}

impl Connection {
    /// The client's token for `shard`, brought up to date with its replies.
    pub(super) fn read_token_for(&mut self, shard: &Arc<Shard>) -> crate::route::ReadToken {
        let (completed, caught_up) = (self.replies.completed(), self.replies.caught_up());
        let progress = crate::route::session::Progress {
            completed,
            caught_up,
        };
        self.reads.token(&self.ctx.shards, shard, progress)
    }

    /// The reply to the request just handled comes from `replica`, or
    /// (`None`) from the primary or anything that may show more.
    pub(super) fn saw(&mut self, replica: Option<&crate::topology::Node>) {
        let position = self.replies.queued() + u64::from(self.open.is_some());
        self.reads
            .saw(&self.ctx.shards, &self.shard, replica, position);
    }
}

impl Flow {
    /// Records that the reply to the request just handled shows the
    /// primary's data (see [`Connection::saw`]).
    pub(super) fn and_saw(self, connection: &mut Connection) -> Flow {
        connection.saw(None);
        self
    }
}

impl Connection {
    pub fn new(
        ctx: Arc<Context>,
        id: u64,
        wr: WriteHalf,
        registration: Registration,
        orders: mpsc::Receiver<Order>,
    ) -> Connection {
        let limits = **ctx.limits.load();
        let authed = ctx.secrets.current().password.is_none();
        let account = ctx.budget.open(id);
        Connection {
            session: Session::new(id, authed),
            parser: RequestParser::new(limits),
            buf: BytesMut::with_capacity(16 * 1024),
            replies: Replies::new(wr, ctx.metrics.clone(), account.clone()),
            account,
            open: None,
            pipe_from: None,
            interposer: Default::default(),
            reserved: None,
            durable: false,
            class: BatchClass::Other,
            durable_upto: 0,
            blocked: Vec::new(),
            registration,
            orders,
            last: None,
            published: Default::default(),
            routing: Default::default(),
            shard: ctx.shards.at(0),
            written: Vec::new(),
            reads: Default::default(),
            arrived: tokio::time::Instant::now(),
            bursts: 0,
            ctx,
        }
    }

    /// Serves the client until it goes away, a protocol error, or QUIT.
    ///
    /// One task does both directions: it dispatches every complete request
    /// it has read (while the client is owed fewer than `max_pipeline`
    /// replies), writes every reply that is ready, then waits for whichever
    /// comes first, more input or the next reply. A client that sends
    /// faster than it reads is thus held back by TCP, with a bounded amount
    /// buffered here.
    pub async fn run(mut self, mut rd: ReadHalf) {
        let max = self.ctx.limits.load().max_pipeline;
        let mut shutdown = self.ctx.shutdown.clone();
        let mut closing = *shutdown.borrow();
        let mut slots_changed = self.ctx.slots.watch();
        // Bytes read before a shutdown began but not yet parsed (held
        // behind a blocked command): still served, being owed.
        let mut unread_owed = 0usize;
        let mut gone = false;
        'serve: loop {
            // Behind a command blocked on a node nothing runs, as on
            // Redis: what the client pipelined after it waits, unparsed,
            // until it is answered, and the loop below keeps watching the
            // socket meanwhile, so a client that leaves is noticed, its
            // command unblocked, and nothing it queued behind runs.
            // Whether parsing stopped with the client owed its window of
            // replies (rather than for want of bytes): once some are
            // written, parsing resumes without waiting for more input.
            let held = match self.serve_parsed(closing, &mut unread_owed, max).await {
                Served::Stop => break 'serve,
                Served::Held => true,
                Served::Waiting => false,
            };
            let cmd = self.last.as_ref().map(LastCommand::of);
            let blocked = self.waits_on_blocked();
            let entry = &self.registration.entry;
            self.published.publish(entry, &self.session, cmd, blocked);
            if self.flush().await == Flow::Stop {
                break;
            }
            // What stays in `buf` is an unfinished request.
            if !self.account.hold_partial(self.buf.len()) {
                gone = true;
                break;
            }
            if let Some(backend) = self.pipe_from.take() {
                self.pipe(rd, backend).await;
                return;
            }
            if self.replies.write_ready().await.is_err() {
                return;
            }
            if held && self.in_flight() < self.replies.window(max) {
                continue;
            }
            if closing && self.replies.is_empty() {
                if unread_owed == 0 {
                    break;
                }
                continue;
            }
            let idle = self.open.is_none() && self.replies.completed() == self.replies.queued();
            self.routing.release(self.replies.completed(), idle);
            let can_read = !closing && self.in_flight() < self.replies.window(max);
            if self.buf.is_empty() && self.buf.capacity() > crate::backend::cutter::RETURN_ABOVE {
                // Grown for a large request: given back, not kept.
                self.buf = BytesMut::with_capacity(16 * 1024);
            }
            if can_read {
                let wanted = self.parser.wanted().saturating_sub(self.buf.len());
                self.buf.reserve(wanted.clamp(4096, 1024 * 1024));
            }
            tokio::select! {
                _ = self.replies.front_ready(), if !self.replies.is_empty() => {}
                read = rd.read_buf(&mut self.buf), if can_read => match read {
                    Ok(0) | Err(_) => {
                        gone = true;
                        break;
                    }
                    Ok(_) => {
                        self.arrived = tokio::time::Instant::now();
                        self.bursts += 1;
                    }
                },
                _ = self.account.evicted() => {
                    gone = true;
                    break;
                }
                _ = shutdown.changed(), if !closing => {
                    tracing::debug!("closing for shutdown");
                    closing = true;
                    unread_owed = self.buf.len();
                }
                read = super::piped::Reserved::read(self.reserved.as_mut()) => {
                    if !self.reserved_sent(read).await {
                        gone = true;
                        break;
                    }
                }
                _ = slots_changed.changed(), if !self.blocked.is_empty() => {
                    if self.unblock_if_paused().await == Flow::Stop {
                        break;
                    }
                }
                order = self.orders.recv() => match order {
                    Some(Order::Kill) | None => {
                        // Killed by another client: as if it had left.
                        gone = true;
                        break;
                    }
                    Some(Order::Unblock { error, done }) => {
                        let _ = done.send(self.unblock_own(error).await);
                    }
                    Some(Order::Reserve { node, done }) => {
                        let _ = done.send(self.reserve(&node).await);
                    }
                },
            }
        }
        self.finish(gone).await;
    }

    /// Parses and runs what the buffer holds, until the client is owed its
    /// window of replies (`Held`), a command blocks, or only part of a
    /// request is left (`Waiting`). `unread_owed`: bytes read before a
    /// shutdown began, still served.
    async fn serve_parsed(&mut self, closing: bool, unread_owed: &mut usize, max: usize) -> Served {
        while (!closing || *unread_owed > 0) && !self.waits_on_blocked() {
            if self.in_flight() >= self.replies.window(max) {
                return Served::Held;
            }
            let before = self.buf.len();
            let parsed = self.parser.parse(&mut self.buf);
            *unread_owed = unread_owed.saturating_sub(before - self.buf.len().min(before));
            match parsed {
                Ok(Some(req)) => {
                    if self.handle(req).await == Flow::Stop {
                        return Served::Stop;
                    }
                }
                Ok(None) => {
                    // Only part of a request is left: nothing owed.
                    if closing {
                        *unread_owed = 0;
                    }
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "protocol error");
                    self.reply(Value::err(format!("ERR {e}"))).await;
                    return Served::Stop;
                }
            }
        }
        Served::Waiting
    }

    /// The connection's end: an evicted client gets nothing more; one that
    /// left (`gone`) has its blocked commands undone; the rest are written
    /// what they are owed.
    async fn finish(mut self, gone: bool) {
        // Nothing more is read: what the buffer held no longer counts (the
        // account gives it back when it closes too, on every other path).
        self.account.hold_partial(0);
        if let Some(reason) = self.account.eviction() {
            // Nothing more is written to a client evicted for its memory:
            // what it is owed is dropped with the connection.
            self.ctx.events.record(
                "*",
                "client-evicted",
                None,
                0,
                format!(
                    "client {} ({}) disconnected: {}; {} bytes of replies were waiting for it",
                    self.session.id,
                    self.registration.entry.addr,
                    reason.name(),
                    self.account.used()
                ),
            );
            self.abandon_blocked().await;
            return;
        }
        let _ = self.flush().await;
        if gone {
            self.abandon_blocked().await;
        }
        let _ = self.replies.drain().await;
        self.replies.shutdown().await;
    }

    /// Replies the client is owed, counting requests gathered in the batch
    /// not sent yet.
    fn in_flight(&self) -> usize {
        self.replies.owed() + self.open.as_ref().map_or(0, |open| open.requests.len())
    }

    pub(super) async fn handle(&mut self, req: Request) -> Flow {
        self.last = Some(req.clone());
        if self.session.skip_next_reply || self.session.replies_off {
            return self.handle_muted(req).await;
        }
        self.dispatch(req).await
    }

    /// Handles a request whose reply the client asked not to get
    /// (`CLIENT REPLY OFF|SKIP`): its batch goes alone, and its replies are
    /// dropped instead of written.
    async fn handle_muted(&mut self, req: Request) -> Flow {
        if self.flush().await == Flow::Stop {
            return Flow::Stop;
        }
        let skipping = std::mem::take(&mut self.session.skip_next_reply);
        self.replies.set_muted(true);
        let flow = self.dispatch(req).await;
        let flow = if self.flush().await == Flow::Stop {
            Flow::Stop
        } else {
            flow
        };
        if skipping && !self.session.replies_off {
            self.replies.set_muted(false);
        }
        flow
    }

    async fn dispatch(&mut self, req: Request) -> Flow {
        if self.session.pipe.is_some() {
            return self.send_piped(req).await;
        }
        let class = classify(&req);
        if class == Class::Answer(crate::resp::command::Answer::CrossProtocol) {
            return self
                .answer(crate::resp::command::Answer::CrossProtocol, req)
                .await;
        }
        if !self.session.authed
            && !matches!(
                class,
                Class::Answer(crate::resp::command::Answer::Auth)
                    | Class::Answer(crate::resp::command::Answer::Hello)
                    | Class::Answer(crate::resp::command::Answer::Quit)
                    | Class::Answer(crate::resp::command::Answer::Reset)
            )
        {
            return self
                .reply(Value::err("NOAUTH Authentication required."))
                .await;
        }
        if self.session.tx_lost && self.session.in_multi {
            return self.in_lost_transaction(class, req).await;
        }
        if let Some(refusal) = self.ctx.guard.check(&req) {
            if refusal.unless_unchanged.is_empty() || !self.unchanged(&refusal).await {
                return self.refuse(refusal.error).await;
            }
        }
        if self.ctx.shards.len() > 1 {
            if let Some(flow) = self.place(class, &req).await {
                return flow;
            }
        }
        self.durable = self.wants_durability(class);
        self.class = match class {
            Class::Read | Class::CursorRead => BatchClass::Read,
            Class::Write => BatchClass::Write,
            _ => BatchClass::Other,
        };
        if let Some(fanout) = self.fanout() {
            if let Some(flow) = self.fanout_only(&fanout, class, req.clone()).await {
                return flow;
            }
        }
        match class {
            Class::Answer(answer) => self.answer(answer, req).await,
            Class::Refused(text) if self.session.in_multi && text == NOT_THROUGH_RAMPART => {
                // Redis refuses SHUTDOWN and the like inside MULTI itself.
                self.refuse(crate::resp::command::NOT_IN_MULTI.to_string())
                    .await
            }
            Class::Refused(text) => self.refuse(text.to_string()).await,
            Class::Read | Class::CursorRead | Class::Write => self.forward(class, req).await,
            Class::Blocking => self.blocking(req).await.and_saw(self),
            Class::Pin => {
                let flow = self.pinned(req).await;
                self.session.sticky = self.session.pinned.is_some();
                flow.and_saw(self)
            }
            Class::Transaction(tx) => self.transaction(tx, req).await.and_saw(self),
            Class::Wait => self.wait(req).await,
            Class::Stream => self.stream(req).await.and_saw(self),
        }
    }

    /// Answers a refused command. Inside MULTI the refusal also dooms the
    /// transaction, as a command Redis rejects while queueing does: EXEC
    /// then answers EXECABORT.
    pub(super) async fn refuse(&mut self, error: String) -> Flow {
        if self.session.in_multi {
            self.session.tx_refused = true;
        }
        self.reply(Value::err(error)).await
    }

    /// Whether every managed parameter a `CONFIG SET` names already has
    /// the value it would set, on the primary.
    async fn unchanged(&self, refusal: &super::guard::Refusal) -> bool {
        use redis_protocol::resp3::types::OwnedFrame;
        let Some(primary) = self.shard.topology.primary().cloned() else {
            return false;
        };
        let Ok(mut control) = primary.pool.control().await else {
            return false;
        };
        for (param, value) in &refusal.unless_unchanged {
            let now = control
                .call(
                    &["CONFIG", "GET", param.as_str()],
                    std::time::Duration::from_secs(1),
                )
                .await;
            let current = match &now {
                Ok(OwnedFrame::Map { data, .. }) => data.values().next().and_then(frame_text),
                _ => None,
            };
            if current.as_deref().map(str::as_bytes) != Some(value.as_slice()) {
                return false;
            }
        }
        true
    }
}
