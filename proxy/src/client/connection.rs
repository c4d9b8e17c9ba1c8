//! One client's requests: classified and dispatched to the facet that
//! serves them (`forward`, `pin`, `tx`, `blocking`, `shards`, `fanout`,
//! `moving`, `pipe`, `answer`); the task driving it is `serve.rs`.
//!
//! Requests that arrive together and go to the same backend link are sent as
//! one batch. Whenever the client has to move to another backend connection
//! (into a transaction, out of one, into a pipe), the reader first waits at a
//! barrier until every earlier reply has been written, so moving never
//! reorders anything.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::batch::{Outbox, Sending};
use super::inflight::Blocked;
use super::registry::{Order, Registration};
use super::session::Session;
use super::writer::{Pending, Replies};
use crate::backend::Link;
use crate::context::Context;
use crate::net::{ReadHalf, WriteHalf};
use crate::observe::counters::BatchClass;
use crate::resp::command::{Class, NOT_THROUGH_RAMPART};
use crate::resp::{classify, Request, RequestParser, Value};
use crate::shard::Shard;
use crate::topology::Node;

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
    /// What the client is owed: the open batch and the reply queue.
    pub(super) out: Outbox,
    /// Set when the session becomes a pipe: the backend side to copy from.
    pub(super) pipe_from: Option<ReadHalf>,
    /// With several shards, a `MONITOR`'s feeds from the other shards.
    pub(super) other_feeds: Option<super::monitor::OtherFeeds>,
    /// With several shards, `CLIENT TRACKING` (see [`super::tracking`]).
    pub(super) tracking: Option<Box<super::tracking::Tracking>>,
    /// With several shards, invalidations other clients' tracking
    /// redirects here (see [`super::registry::Entry::invalidate`]).
    pub(super) inbox: Option<mpsc::Receiver<Bytes>>,
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
    /// Requests handled so far: what is published about the client changes
    /// only with a request (or with a blocked command's end).
    pub(super) handled: u64,
    /// What was last published about this client.
    pub(super) published: super::publish::Publisher,
    /// The slot maps it routes by (see [`super::routing`]).
    pub(super) routing: super::routing::Routing,
}

impl Connection {
    /// The client's token for `shard`, brought up to date with its replies.
    pub(super) fn read_token_for(&mut self, shard: &Arc<Shard>) -> crate::route::ReadToken {
        self.reads
            .token(&self.ctx.shards, shard, self.out.progress())
    }

    /// The reply to the request just handled comes from `replica`, or
    /// (`None`) from the primary or anything that may show more.
    pub(super) fn saw(&mut self, replica: Option<&crate::topology::Node>) {
        let position = self.out.next_position();
        self.reads
            .saw(&self.ctx.shards, &self.shard, replica, position);
    }
}

impl Connection {
    /// The request being handled joins the open batch for `link` (see
    /// [`Outbox::add`]).
    pub(super) async fn add(&mut self, node: Arc<Node>, link: Link, raw: Bytes) -> Flow {
        let sending = Sending {
            session: &self.session,
            shard: &self.shard,
            durable: self.durable,
            class: self.class,
        };
        self.out.add(sending, node, link, raw).await;
        Flow::Continue
    }

    /// Sends the open batch, if any.
    pub(super) async fn flush(&mut self) -> Flow {
        self.out.flush(&self.session).await;
        Flow::Continue
    }

    /// Waits until every reply queued so far has been written, so that the
    /// client can move to another backend connection without reordering.
    pub(super) async fn barrier(&mut self) -> Flow {
        match self.out.barrier().await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }

    /// Queues a reply in its place.
    pub(super) fn push(&mut self, item: Pending) -> Flow {
        self.out.push(item);
        Flow::Continue
    }

    /// Queues a reply Rampart made itself, after everything before it.
    pub(super) async fn reply(&mut self, value: Value) -> Flow {
        self.out.reply(&self.session, value).await;
        Flow::Continue
    }

    /// Queues a reply Rampart encoded itself, after everything before it.
    pub(super) async fn push_local(&mut self, bytes: Bytes) -> Flow {
        if self.flush().await == Flow::Stop {
            return Flow::Stop;
        }
        self.push(Pending::Local(bytes))
    }

    /// Passes on an invalidation this client's tracking reported (see
    /// [`super::tracking`]): to the client it redirects to, or queued here
    /// behind the replies to everything it sent before; not muted by
    /// `CLIENT REPLY OFF`, as Redis's pushes are not.
    pub(super) async fn invalidated(&mut self, message: Bytes) {
        let Some(message) = self.redirected(message) else {
            return;
        };
        let _ = self.flush().await;
        self.take_invalidation(message);
    }

    /// `message` for this client to receive itself, or `None`: handed to
    /// its redirect target (or dropped, the target being gone: the first
    /// time, a RESP3 client is told, as Redis tells it).
    pub(super) fn redirected(&mut self, message: Bytes) -> Option<Bytes> {
        let tracking = self.tracking.as_mut()?;
        let Some(target) = tracking.redirect() else {
            return Some(message);
        };
        let entry = self.ctx.registry.get(target);
        if entry.is_some_and(|entry| entry.invalidate(message)) {
            return None;
        }
        tracking.redirect_broken()
    }

    /// Queues an invalidation for this client (RESP3 only: Redis sends a
    /// RESP2 client outside subscribed mode none).
    pub(super) fn take_invalidation(&mut self, message: Bytes) {
        if self.session.proto == crate::resp::Proto::Resp3 {
            self.out.replies.push_message(message);
        }
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
            out: Outbox::new(
                Replies::new(wr, ctx.metrics.clone(), account.clone()),
                account,
                limits.max_reply_depth,
            ),
            pipe_from: None,
            other_feeds: None,
            tracking: None,
            inbox: None,
            interposer: Default::default(),
            reserved: None,
            durable: false,
            class: BatchClass::Other,
            blocked: Vec::new(),
            registration,
            orders,
            last: None,
            handled: 0,
            published: Default::default(),
            routing: Default::default(),
            shard: ctx.shards.first(),
            written: Vec::new(),
            reads: Default::default(),
            arrived: tokio::time::Instant::now(),
            bursts: 0,
            ctx,
        }
    }

    pub(super) async fn handle(&mut self, req: Request) -> Flow {
        self.last = Some(req.clone());
        self.handled += 1;
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
        self.out.replies.set_muted(true);
        let flow = self.dispatch(req).await;
        let flow = if self.flush().await == Flow::Stop {
            Flow::Stop
        } else {
            flow
        };
        if skipping && !self.session.replies_off {
            self.out.replies.set_muted(false);
        }
        flow
    }

    async fn dispatch(&mut self, req: Request) -> Flow {
        // Before the pipe: a tracking client that subscribed reads too.
        if let Some(tracking) = self.tracking.as_mut() {
            let read = matches!(classify(&req), Class::Read | Class::CursorRead);
            let read = read || super::tracking::is_script(&req);
            tracking.ran(&req, read, self.session.in_multi);
        }
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
            if refusal.unless_unchanged.is_empty()
                || !refusal.unchanged_on(&self.shard.topology).await
            {
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
                let option = req.clone();
                let flow = self.pinned(req).await;
                // Queued in a transaction, it may never run.
                if self.session.pinned.is_some() && !self.session.in_multi {
                    self.session.remember_option(&option);
                }
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
}
