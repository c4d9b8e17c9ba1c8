//! The request side of a client connection: read, parse, classify, dispatch.
//!
//! Requests that arrive together and go to the same backend link are sent as
//! one batch. Whenever the client has to move to another backend connection
//! (into a transaction, out of one, into a pipe), the reader first waits at a
//! barrier until every earlier reply has been written, so moving never
//! reorders anything.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use super::blocking::Blocked;
use super::registry::{LastCommand, Order, Registration};
use super::session::Session;
use super::writer::{Pending, Replies};
use crate::admin::metrics::BatchClass;
use crate::backend::charge::ReplyTo;
use crate::backend::control::frame_text;
use crate::backend::{Batch, BatchReply, Link};
use crate::net::{ReadHalf, WriteHalf};
use crate::replicate::fanout::{Fanout, Verdict};
use crate::resp::command::{Class, Tx, NOT_THROUGH_RAMPART};
use crate::resp::{classify, Request, RequestParser, Value};
use crate::route;
use crate::server::Context;
use crate::topology::Node;

/// Most requests put in one batch before it is sent.
const MAX_BATCH: usize = 512;

/// Whether the reader goes on after a request.
#[derive(PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Where an open batch goes.
enum Target {
    Link {
        link: Link,
        node: Arc<Node>,
    },
    /// A fan-out shard's writer: every node, in the shard's order.
    Fanout(Arc<Fanout>),
}

impl Target {
    fn same_link(&self, other: &Link) -> bool {
        matches!(self, Target::Link { link, .. } if link.same(other))
    }
}

/// Requests gathered for one link.
struct OpenBatch {
    target: Target,
    requests: Vec<Bytes>,
    /// Replies held until the shard's quorum of replicas has the writes.
    /// A batch is all durable or not at all, so a `WAIT` after it never
    /// lands inside a transaction that follows it.
    durable: bool,
    class: BatchClass,
}

pub struct Connection {
    pub(super) ctx: Arc<Context>,
    pub(super) session: Session,
    parser: RequestParser,
    buf: BytesMut,
    /// This client's share of the memory caps (its replies hold it too).
    account: Arc<crate::backend::charge::Account>,
    pub(super) replies: Replies,
    open: Option<OpenBatch>,
    /// Set when the session becomes a pipe: the backend side to copy from.
    pipe_from: Option<ReadHalf>,
    /// The request being handled is a synchronous write.
    pub(super) durable: bool,
    /// Its class, for the latency histograms.
    class: BatchClass,
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
    orders: mpsc::Receiver<Order>,
    /// The last request handled, for `CLIENT LIST`'s `cmd=`.
    last: Option<Request>,
    /// What was last published about this client.
    published: Option<Published>,
}

/// The parts of a client's state `CLIENT LIST` shows, compared to skip
/// publishing what did not change.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Published {
    cmd: Option<LastCommand>,
    db: i64,
    resp: i64,
    /// Where the name's bytes are: a new name is a new buffer.
    name: usize,
    flags: u8,
}

impl Connection {
    pub fn new(
        ctx: Arc<Context>,
        id: u64,
        wr: WriteHalf,
        registration: Registration,
        orders: mpsc::Receiver<Order>,
    ) -> Connection {
        let limits = ctx.config.limits;
        let authed = ctx.config.proxy.password.is_none();
        let account = ctx.budget.open(id);
        Connection {
            session: Session::new(id, authed),
            parser: RequestParser::new(limits),
            buf: BytesMut::with_capacity(16 * 1024),
            replies: Replies::new(wr, ctx.metrics.clone(), account.clone()),
            account,
            open: None,
            pipe_from: None,
            durable: false,
            class: BatchClass::Other,
            durable_upto: 0,
            blocked: Vec::new(),
            registration,
            orders,
            last: None,
            published: None,
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
        let max = self.ctx.config.limits.max_pipeline;
        let mut shutdown = self.ctx.shutdown.clone();
        let mut closing = *shutdown.borrow();
        let mut gone = false;
        'serve: loop {
            while !closing && self.replies.owed() < max {
                match self.parser.parse(&mut self.buf) {
                    Ok(Some(req)) => {
                        if self.handle(req).await == Flow::Stop {
                            break 'serve;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "protocol error");
                        self.reply(Value::err(format!("ERR {e}"))).await;
                        break 'serve;
                    }
                }
            }
            self.publish();
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
            if closing && self.replies.is_empty() {
                break;
            }
            let can_read = !closing && self.replies.owed() < max;
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
                    Ok(_) => {}
                },
                _ = self.account.evicted() => {
                    gone = true;
                    break;
                }
                _ = shutdown.changed(), if !closing => {
                    tracing::debug!("closing for shutdown");
                    closing = true;
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
                },
            }
        }
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

    /// A piped session: client bytes are parsed (so framing stays checked)
    /// and forwarded, backend bytes are copied back untouched.
    async fn pipe(mut self, mut rd: ReadHalf, mut backend: ReadHalf) {
        let mut from_backend = BytesMut::with_capacity(16 * 1024);
        let mut monitor = self
            .session
            .monitor
            .then(super::monitor::MonitorFilter::default);
        let mut shutdown = self.ctx.shutdown.clone();
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                read = backend.read_buf(&mut from_backend) => match read {
                    Ok(n) if n > 0 => {
                        let written = match monitor.as_mut() {
                            Some(filter) => {
                                let lines = filter.feed(&from_backend);
                                self.replies.write_raw(&lines).await
                            }
                            None => self.replies.write_raw(&from_backend).await,
                        };
                        if written.is_err() {
                            break;
                        }
                        from_backend.clear();
                    }
                    _ => break,
                },
                read = rd.read_buf(&mut self.buf) => match read {
                    Ok(n) if n > 0 => loop {
                        match self.parser.parse(&mut self.buf) {
                            Ok(Some(req)) => {
                                if self.handle(req).await == Flow::Stop {
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                let error = Value::err(format!("ERR {e}")).encode(self.session.proto);
                                let _ = self.replies.write_raw(&error).await;
                                self.replies.shutdown().await;
                                return;
                            }
                        }
                    },
                    _ => break,
                },
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
        }
        self.replies.shutdown().await;
    }

    async fn handle(&mut self, req: Request) -> Flow {
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

    /// What other clients may see of this one (`CLIENT LIST`), once per
    /// read: only the time unless something changed.
    fn publish(&mut self) {
        let cmd = self.last.as_ref().map(LastCommand::of);
        let entry = &self.registration.entry;
        entry.touch();
        let now = self.published_state(cmd);
        if self.published != Some(now) {
            self.publish_with(cmd);
            self.published = Some(now);
        }
    }

    /// Publishes now, with `CLIENT <sub>` as the last command (for `CLIENT
    /// LIST` and `CLIENT INFO` showing the client itself).
    pub(super) fn publish_now(&mut self, sub: &str) {
        self.registration.entry.touch();
        self.publish_with(Some(LastCommand::client(sub)));
        self.published = None;
    }

    fn blocked_now(&self) -> bool {
        self.blocked
            .last()
            .is_some_and(|b| b.position > self.replies.completed())
    }

    /// Everything `publish_with` shows, to tell whether it changed.
    fn published_state(&self, cmd: Option<LastCommand>) -> Published {
        let s = &self.session;
        Published {
            cmd,
            db: s.db,
            resp: s.proto.number(),
            name: s.name.as_ref().map_or(0, |n| n.as_ptr() as usize),
            flags: u8::from(self.blocked_now())
                | (u8::from(s.in_multi) << 1)
                | (u8::from(s.pipe.is_some()) << 2),
        }
    }

    fn publish_with(&self, cmd: Option<LastCommand>) {
        let s = &self.session;
        let blocked = self.blocked_now();
        self.registration.entry.publish(|snap| {
            snap.name = s.name.clone();
            snap.db = s.db;
            snap.resp = s.proto.number();
            snap.subscribed = s.pipe.is_some();
            snap.multi = if s.in_multi { 0 } else { -1 };
            snap.flags.clear();
            if blocked {
                snap.flags.push('b');
            }
            if s.in_multi {
                snap.flags.push('x');
            }
            if s.pipe.is_some() {
                snap.flags.push('P');
            }
            if snap.flags.is_empty() {
                snap.flags.push('N');
            }
            if cmd.is_some() {
                snap.cmd = cmd;
            }
        });
    }

    async fn dispatch(&mut self, req: Request) -> Flow {
        if self.session.pipe.is_some() {
            return self.send_piped(req).await;
        }
        let class = classify(&req);
        if !self.session.authed
            && !matches!(
                class,
                Class::Local(crate::resp::command::Local::Auth)
                    | Class::Local(crate::resp::command::Local::Hello)
                    | Class::Local(crate::resp::command::Local::Quit)
                    | Class::Local(crate::resp::command::Local::Reset)
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
            Class::Local(local) => self.local(local, req).await,
            Class::Refused(text) if self.session.in_multi && text == NOT_THROUGH_RAMPART => {
                // Redis refuses SHUTDOWN and the like inside MULTI itself.
                self.refuse(crate::client::local::NOT_IN_MULTI.to_string())
                    .await
            }
            Class::Refused(text) => self.refuse(text.to_string()).await,
            Class::Read | Class::CursorRead | Class::Write => self.forward(class, req).await,
            Class::Blocking => self.blocking(req).await,
            Class::Pin => {
                let flow = self.pinned(req).await;
                self.session.sticky = self.session.pinned.is_some();
                flow
            }
            Class::Transaction(tx) => self.transaction(tx, req).await,
            Class::Wait => self.wait(req).await,
            Class::Stream => self.stream(req).await,
        }
    }

    /// Answers a refused command. Inside MULTI the refusal also dooms the
    /// transaction, as a command Redis rejects while queueing does: EXEC
    /// then answers EXECABORT.
    async fn refuse(&mut self, error: String) -> Flow {
        if self.session.in_multi {
            self.session.tx_refused = true;
        }
        self.reply(Value::err(error)).await
    }

    /// Whether every managed parameter a `CONFIG SET` names already has
    /// the value it would set, on the primary.
    async fn unchanged(&self, refusal: &super::guard::Refusal) -> bool {
        use redis_protocol::resp3::types::OwnedFrame;
        let Some(primary) = self.ctx.topology.shard().primary().cloned() else {
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

    /// The shard's fan-out writer, in fan-out mode.
    pub(super) fn fanout(&self) -> Option<Arc<Fanout>> {
        self.ctx
            .shards
            .first()
            .and_then(|shard| shard.fanout.clone())
    }

    /// What fan-out mode does differently: writes go to every node through
    /// the shard's writer (rewritten or refused, see `replicate::fanout::
    /// rewrite`), reads wait for the client's own writes, and what cannot be
    /// the same on every node is refused. `None`: handled as usual.
    async fn fanout_only(
        &mut self,
        fanout: &Arc<Fanout>,
        class: Class,
        req: Request,
    ) -> Option<Flow> {
        let refuse =
            |what: &str| Value::err(format!("ERR rampart: {what} not supported in fan-out mode"));
        if self.session.fanout_tx.is_some() || class == Class::Transaction(Tx::Multi) {
            return self.fanout_transaction(fanout, class, req).await;
        }
        Some(match class {
            Class::Write => match fanout.rewriter.judge(req) {
                Verdict::Refused(error) => self.reply(Value::err(error)).await,
                Verdict::Primary(req) => self.forward(Class::Write, req).await,
                Verdict::Fanout(req) => self.fanout_write(fanout, req).await,
            },
            Class::Read | Class::CursorRead => {
                // A read must see the client's own writes: they are on their
                // way to every node, so wait until they have been answered.
                let pending = self
                    .open
                    .as_ref()
                    .is_some_and(|open| matches!(open.target, Target::Fanout(_)))
                    || self.replies.completed() < self.durable_upto;
                if pending && (self.flush().await == Flow::Stop || self.barrier().await == Flow::Stop) {
                    return Some(Flow::Stop);
                }
                return None;
            }
            Class::Blocking if req.name().as_bytes() != b"XREAD" => {
                self.reply(refuse("blocking pops and moves are (the node that unblocks first would apply it alone);"))
                    .await
            }
            Class::Transaction(_) => {
                self.reply(refuse("WATCH is (a transaction cannot abort alike on every node);"))
                    .await
            }
            Class::Wait => {
                self.reply(refuse("WAIT is (the shard's quorum decides when writes are answered);"))
                    .await
            }
            _ => return None,
        })
    }

    /// A transaction in fan-out mode: Rampart answers `MULTI` and queues
    /// the commands itself (refusing what cannot be fanned out), and at
    /// `EXEC` sends `MULTI ... EXEC` to every node as one entry of the
    /// shard's log, so it runs whole, in the same place of the order, on
    /// each. `None`: not part of the transaction (QUIT, RESET ...).
    async fn fanout_transaction(
        &mut self,
        fanout: &Arc<Fanout>,
        class: Class,
        req: Request,
    ) -> Option<Flow> {
        use crate::resp::command::Local;
        let queued = |this: &mut Self, raw: Bytes| {
            if let Some(tx) = this.session.fanout_tx.as_mut() {
                tx.queued.push(raw);
            }
            Value::Simple("QUEUED".into())
        };
        let refused = |this: &mut Self, error: String| {
            if let Some(tx) = this.session.fanout_tx.as_mut() {
                tx.failed = true;
            }
            Value::err(error)
        };
        let reply = match class {
            Class::Transaction(Tx::Multi) if self.session.fanout_tx.is_some() => {
                Value::err("ERR MULTI calls can not be nested")
            }
            Class::Transaction(Tx::Multi) => {
                self.session.fanout_tx = Some(Default::default());
                Value::ok()
            }
            Class::Transaction(Tx::Discard) => {
                self.session.fanout_tx = None;
                Value::ok()
            }
            Class::Transaction(Tx::Exec) => {
                let tx = self.session.fanout_tx.take().unwrap_or_default();
                if tx.failed {
                    Value::err("EXECABORT Transaction discarded because of previous errors.")
                } else {
                    return Some(self.fanout_exec(fanout, tx.queued).await);
                }
            }
            Class::Transaction(Tx::Watch) => Value::err("ERR WATCH inside MULTI is not allowed"),
            Class::Transaction(Tx::Unwatch) => queued(self, req.raw),
            Class::Local(Local::Quit | Local::Reset) => return None,
            Class::Local(Local::Ping | Local::Echo) => queued(self, req.raw),
            Class::Local(_) => Value::err("ERR Command not allowed inside a transaction"),
            // Inside MULTI a blocking command does not block.
            Class::Read | Class::CursorRead | Class::Blocking => queued(self, req.raw),
            Class::Write => match fanout.rewriter.judge(req) {
                Verdict::Fanout(req) => queued(self, req.raw),
                Verdict::Refused(error) => refused(self, error),
                Verdict::Primary(_) => refused(
                    self,
                    "ERR rampart: admin commands cannot be part of a transaction in fan-out mode"
                        .into(),
                ),
            },
            Class::Refused(text) => refused(self, text.into()),
            _ => refused(
                self,
                "ERR rampart: this command cannot be part of a transaction in fan-out mode".into(),
            ),
        };
        Some(self.reply(reply).await)
    }

    /// Sends a queued transaction to every node; the client gets `EXEC`'s
    /// reply.
    async fn fanout_exec(&mut self, fanout: &Arc<Fanout>, queued: Vec<Bytes>) -> Flow {
        if fanout.shard.primary().is_none() && !self.await_primary().await {
            return self.reply(self.no_primary()).await;
        }
        if self.flush().await == Flow::Stop {
            return Flow::Stop;
        }
        let skip = queued.len() + 1;
        let mut requests = Vec::with_capacity(queued.len() + 2);
        requests.push(Request::from_args(&["MULTI"]).raw);
        requests.extend(queued);
        requests.push(Request::from_args(&["EXEC"]).raw);
        let (tx, rx) = oneshot::channel();
        fanout.write(self.session.proto, requests, skip, tx).await;
        self.durable_upto = self.replies.push(Pending::Remote {
            reply: rx,
            replies: 1,
            sent: std::time::Instant::now(),
            class: BatchClass::Write,
        });
        Flow::Continue
    }

    /// Adds a write to the open fan-out batch.
    async fn fanout_write(&mut self, fanout: &Arc<Fanout>, req: Request) -> Flow {
        let shard = fanout.shard.clone();
        if shard.primary().is_none() && !self.await_primary().await {
            return self.reply(self.no_primary()).await;
        }
        if let Some(open) = &mut self.open {
            if matches!(open.target, Target::Fanout(_)) && open.requests.len() < MAX_BATCH {
                open.requests.push(req.raw);
                return Flow::Continue;
            }
        }
        if self.flush().await == Flow::Stop {
            return Flow::Stop;
        }
        let mut requests = Vec::with_capacity(8);
        requests.push(req.raw);
        self.open = Some(OpenBatch {
            target: Target::Fanout(fanout.clone()),
            requests,
            durable: true,
            class: BatchClass::Write,
        });
        Flow::Continue
    }

    /// Whether the request's reply must wait for the shard's write quorum:
    /// writes, blocking pops and moves, and EXEC (a whole transaction is one
    /// write), in synchronous mode. Commands queued inside MULTI are not,
    /// since a `WAIT` there would be queued with them.
    fn wants_durability(&self, class: Class) -> bool {
        let write = match class {
            Class::Transaction(Tx::Exec) => true,
            Class::Write | Class::Blocking => !self.session.in_multi,
            _ => false,
        };
        let shard = self.ctx.topology.shard();
        write && shard.durability.is_sync() && !shard.is_fanout()
    }

    /// Reads and writes that need no connection state.
    async fn forward(&mut self, class: Class, req: Request) -> Flow {
        // State that lives on a connection (a database, a transaction ...)
        // keeps the client on its dedicated one, opening it if it was lost.
        if !self.session.is_clean() {
            return self.pinned(req).await;
        }
        // While the primary pauses writes (`CLIENT PAUSE ... WRITE`), a held
        // command would hold a shared connection and every client behind it
        // there: each client waits on a connection of its own instead, as on
        // Redis.
        let paused = self
            .ctx
            .topology
            .shard()
            .primary()
            .is_some_and(|p| p.pool.stats().is_paused());
        if paused {
            return self.pinned(req).await;
        }
        if self.session.pinned.is_some() {
            self.unpin().await;
        }
        // Borrowed from a clone of the context so that nothing per request
        // clones a shard, node or link handle unless a new batch starts.
        let ctx = self.ctx.clone();
        let key = req.arg(1).unwrap_or_default();
        let owner = ctx.shard_of(key);
        let (shard, policy) = (&owner.topology, &owner.router);
        let read = route::Read {
            client_id: self.session.id,
            key,
        };
        let mut node = match route::route(shard, policy, class, &read) {
            Ok(node) => node,
            Err(_) => {
                if !self.await_primary().await {
                    return self.reply(self.no_primary()).await;
                }
                match route::route(shard, policy, class, &read) {
                    Ok(node) => node,
                    Err(_) => return self.reply(self.no_primary()).await,
                }
            }
        };
        let proto = self.session.proto;
        let writes_pending = self.open.as_ref().is_some_and(|open| open.durable)
            || self.replies.completed() < self.durable_upto;
        let follows_own_writes =
            class == Class::Read && writes_pending && shard.durability.is_sync();
        if follows_own_writes {
            if let Some(primary) = shard.primary() {
                node = primary;
                self.durable = true;
            }
        }
        let mut link = if self.durable {
            node.pool.writer(proto, self.session.id)
        } else {
            node.pool.shared(proto, self.session.id)
        };
        if !link.is_up() && class == Class::Read && !self.durable {
            // A replica whose link is reconnecting: the primary can answer.
            if let Some(primary) = shard.primary() {
                node = primary;
                link = primary.pool.shared(proto, self.session.id);
            }
        }
        if let Some(open) = &mut self.open {
            if open.target.same_link(link) && open.requests.len() < MAX_BATCH {
                open.requests.push(req.raw);
                return Flow::Continue;
            }
        }
        self.add(node.clone(), link.clone(), req.raw).await
    }

    /// Sends on the client's dedicated connection, opening one if needed.
    pub(super) async fn pinned(&mut self, req: Request) -> Flow {
        if let Err(error) = self.pin().await {
            return self.reply(error).await;
        }
        let Some((node, link)) = self.session.pinned.clone() else {
            return Flow::Continue;
        };
        self.add(node, link, req.raw).await
    }

    async fn transaction(&mut self, tx: Tx, req: Request) -> Flow {
        let s = &mut self.session;
        match tx {
            Tx::Multi => {
                if s.tx_lost {
                    // The WATCH this transaction relies on is gone: let the
                    // client queue, then fail EXEC.
                    s.in_multi = true;
                    return self.reply(Value::ok()).await;
                }
                let flow = self.pinned(req).await;
                self.session.in_multi = self.session.pinned.is_some();
                flow
            }
            Tx::Exec | Tx::Discard => {
                let was_lost = s.tx_lost;
                let in_multi = s.in_multi;
                let refused = std::mem::take(&mut s.tx_refused);
                s.in_multi = false;
                s.watching = false;
                s.tx_lost = false;
                if was_lost {
                    return self.reply(lost_reply(tx, in_multi)).await;
                }
                if refused && tx == Tx::Exec && in_multi {
                    return self.abort_exec().await;
                }
                if self.session.pinned.is_none() {
                    let name = if tx == Tx::Exec { "EXEC" } else { "DISCARD" };
                    return self
                        .reply(Value::err(format!("ERR {name} without MULTI")))
                        .await;
                }
                self.pinned(req).await
            }
            Tx::Watch => {
                if s.in_multi {
                    return self.pinned(req).await;
                }
                let flow = self.pinned(req).await;
                self.session.watching = self.session.pinned.is_some();
                flow
            }
            Tx::Unwatch => {
                if !s.in_multi {
                    s.watching = false;
                    s.tx_lost = false;
                }
                if self.session.pinned.is_none() {
                    return self.reply(Value::ok()).await;
                }
                self.pinned(req).await
            }
        }
    }

    /// EXEC of a transaction in which Rampart refused a command: the node
    /// discards what it queued, and the client gets Redis's EXECABORT.
    async fn abort_exec(&mut self) -> Flow {
        if let Some((node, link)) = self.session.pinned.clone() {
            let discard = Request::from_args(&["DISCARD"]);
            if let Err(error) = self.call(&node, &link, vec![discard.raw], "DISCARD").await {
                tracing::debug!(?error, "DISCARD of a refused transaction failed");
            }
        }
        self.reply(Value::err(
            "EXECABORT Transaction discarded because of previous errors.",
        ))
        .await
    }

    /// A transaction whose connection was lost: nothing reaches a backend
    /// until it ends, and it ends in failure.
    async fn in_lost_transaction(&mut self, class: Class, req: Request) -> Flow {
        match class {
            Class::Transaction(tx @ (Tx::Exec | Tx::Discard)) => self.transaction(tx, req).await,
            Class::Local(
                local @ (crate::resp::command::Local::Reset | crate::resp::command::Local::Quit),
            ) => self.local(local, req).await,
            _ => {
                self.reply(Value::err(
                    "ERR rampart: the connection holding this transaction was lost; EXEC will fail",
                ))
                .await
            }
        }
    }

    /// `WAIT`/`WAITAOF` count replica acknowledgements of this connection's
    /// writes, but a client's writes went over a shared link. So Rampart
    /// waits for the client's earlier replies, then on a dedicated connection
    /// makes one tiny write of its own (a PUBLISH nobody listens to) and
    /// waits on that: replication is ordered, so acknowledging it means
    /// acknowledging everything the client wrote before. Nobody else's
    /// commands queue behind the wait.
    async fn wait(&mut self, req: Request) -> Flow {
        if self.session.in_multi {
            return self.pinned(req).await;
        }
        if self.flush().await == Flow::Stop || self.barrier().await == Flow::Stop {
            return Flow::Stop;
        }
        let pinned = self.session.pinned.clone();
        let (node, link, borrowed) = match pinned {
            Some((node, link)) => (node, link, false),
            None => match self.dedicated().await {
                Ok((node, link)) => (node, link, true),
                Err(error) => return self.reply(error).await,
            },
        };
        let marker = Request::from_args(&["PUBLISH", crate::backend::own::WAIT_MARKER, ""]);
        let (tx, rx) = oneshot::channel();
        node.count_requests(2);
        link.send(Batch::plain(vec![marker.raw, req.raw.clone()], tx))
            .await;
        // The WAIT may block for long: its reply is awaited beside the
        // client's other replies, so a client that leaves meanwhile is seen
        // leaving (and its WAIT unblocked). Only the WAIT's reply goes to
        // the client, not the marker's.
        let (client_tx, client_rx) = oneshot::channel();
        let proto = self.session.proto;
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
                node.pool.give_back(link, proto);
            }
        });
        self.expect_blocked(node, link, req, client_rx);
        Flow::Continue
    }

    /// SUBSCRIBE, MONITOR, CLIENT TRACKING: from now on this client is piped
    /// straight to a connection of its own, pushed messages and all.
    async fn stream(&mut self, req: Request) -> Flow {
        if self.session.in_multi {
            return self.pinned(req).await;
        }
        if self.flush().await == Flow::Stop || self.barrier().await == Flow::Stop {
            return Flow::Stop;
        }
        if let Some((node, link)) = self.session.pinned.take() {
            if self.session.is_clean() {
                node.pool.give_back(link, self.session.proto);
            }
        }
        // A subscriber that reconnects while its primary is dying (redis-py
        // and ioredis re-subscribe at once) waits for the failover, as a
        // write would, rather than failing and ending up subscribed to
        // nothing.
        let deadline = tokio::time::Instant::now()
            + std::time::Duration::from_millis(self.ctx.config.failover.hold_writes_ms);
        let (primary, stream, backend_id) = loop {
            if !self.await_primary().await {
                return self.reply(self.no_primary()).await;
            }
            let Some(primary) = self.ctx.topology.shard().primary().cloned() else {
                return self.reply(self.no_primary()).await;
            };
            match primary.pool.raw(self.session.link_session()).await {
                Ok((stream, id)) => break (primary, stream, id),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    let mut changed = self.ctx.topology.shard().watch();
                    let pause = std::time::Duration::from_millis(100);
                    let _ = tokio::time::timeout(pause, changed.changed()).await;
                }
                Err(e) => {
                    return self
                        .reply(Value::err(format!(
                            "ERR rampart: {} unavailable ({e})",
                            primary.addr
                        )))
                        .await
                }
            }
        };
        let req = match self.redirect_tracking(req, &primary.addr) {
            Ok(req) => req,
            Err(error) => return self.reply(error).await,
        };
        if let Some(id) = backend_id {
            let addr = primary.addr.clone();
            self.registration
                .entry
                .publish(|snap| snap.pipe = Some((addr, id)));
        }
        self.session.monitor = req.name().as_bytes() == b"MONITOR";
        let (backend_rd, mut backend_wr) = stream.into_split();
        self.pipe_from = Some(backend_rd);
        primary.count_requests(1);
        if backend_wr.write_all(&req.raw).await.is_err() || backend_wr.flush().await.is_err() {
            return Flow::Stop;
        }
        self.session.pipe = Some(backend_wr);
        Flow::Continue
    }

    /// A request from a client piped to a connection of its own: passed on
    /// as it is, but for a `REDIRECT` to another Rampart client.
    async fn send_piped(&mut self, req: Request) -> Flow {
        let node = (req.name().as_bytes() == b"CLIENT")
            .then(|| self.registration.entry.snapshot().pipe)
            .flatten()
            .map(|(addr, _)| addr);
        let req = match node {
            Some(node) => match self.redirect_tracking(req, &node) {
                Ok(req) => req,
                Err(error) => {
                    let bytes = error.encode(self.session.proto);
                    return match self.replies.write_raw(&bytes).await {
                        Ok(()) => Flow::Continue,
                        Err(_) => Flow::Stop,
                    };
                }
            },
            None => req,
        };
        let Some(pipe) = self.session.pipe.as_mut() else {
            return Flow::Stop;
        };
        match pipe.write_all(&req.raw).await {
            Ok(()) if pipe.flush().await.is_ok() => Flow::Continue,
            _ => Flow::Stop,
        }
    }

    /// `CLIENT TRACKING ... REDIRECT <id>` names a Rampart client; the node
    /// must be given that client's own connection to it instead.
    fn redirect_tracking(&self, req: Request, node: &str) -> Result<Request, Value> {
        let is_tracking = req.name().as_bytes() == b"CLIENT"
            && req
                .arg_upper(1)
                .is_some_and(|s| s.as_bytes() == b"TRACKING");
        let Some(at) = (2..req.argc()).find(|&i| {
            is_tracking
                && req
                    .arg_upper(i)
                    .is_some_and(|a| a.as_bytes() == b"REDIRECT")
        }) else {
            return Ok(req);
        };
        let target = req
            .arg(at + 1)
            .and_then(crate::resp::request::parse_i64)
            .and_then(|id| u64::try_from(id).ok())
            .and_then(|id| self.ctx.registry.get(id));
        let pipe = target.and_then(|t| t.snapshot().pipe);
        let Some((_, backend_id)) = pipe.filter(|(addr, _)| addr == node) else {
            return Err(Value::err(
                "ERR The client ID you want redirect to does not exist",
            ));
        };
        let mut args = req.args();
        args[at + 1] = Bytes::from(backend_id.to_string());
        Ok(Request::from_args(&args))
    }

    /// Sends requests on a link and waits for all their replies, after
    /// everything the client sent before them (an open batch for the same
    /// link would otherwise be overtaken). The replies as the node wrote
    /// them, or the error to answer with if any did not come.
    pub(super) async fn call(
        &mut self,
        node: &Node,
        link: &Link,
        requests: Vec<Bytes>,
        what: &str,
    ) -> Result<Bytes, Value> {
        let failed = || Value::err(format!("ERR rampart: {what} failed"));
        if self.flush().await == Flow::Stop {
            return Err(failed());
        }
        let (tx, rx) = oneshot::channel();
        let replies = requests.len();
        node.count_requests(replies as u64);
        link.send(Batch::plain(requests, tx)).await;
        match rx.await {
            Ok(reply) if reply.got == replies && reply.error.is_none() => Ok(reply.data),
            Ok(reply) => Err(reply
                .error
                .map_or_else(failed, |error| Value::err(error.to_string()))),
            Err(_) => Err(failed()),
        }
    }

    /// Ensures the client holds a live dedicated connection to the primary.
    pub(super) async fn pin(&mut self) -> Result<(), Value> {
        if let Some((_, link)) = &self.session.pinned {
            if link.is_up() {
                return Ok(());
            }
            self.session.lose_pinned();
            if self.session.tx_lost && self.session.in_multi {
                return Err(Value::err(
                    "ERR rampart: the connection holding this transaction or WATCH was lost",
                ));
            }
        }
        if self.flush().await == Flow::Stop || self.barrier().await == Flow::Stop {
            return Err(Value::err("ERR rampart: connection closing"));
        }
        let (node, link) = self.dedicated().await?;
        self.session.pinned = Some((node, link));
        Ok(())
    }

    /// A dedicated connection to the primary in this client's state.
    async fn dedicated(&mut self) -> Result<(Arc<Node>, Link), Value> {
        if !self.await_primary().await {
            return Err(self.no_primary());
        }
        let Some(primary) = self.ctx.topology.shard().primary().cloned() else {
            return Err(self.no_primary());
        };
        match primary.pool.dedicated(self.session.link_session()).await {
            Ok(link) => Ok((primary, link)),
            Err(e) => Err(Value::err(format!(
                "ERR rampart: {} unavailable ({e})",
                primary.addr
            ))),
        }
    }

    /// Returns a clean dedicated connection to the pool once every reply it
    /// owes has arrived.
    pub(super) async fn unpin(&mut self) {
        if self.flush().await == Flow::Stop || self.barrier().await == Flow::Stop {
            return;
        }
        if let Some((node, link)) = self.session.pinned.take() {
            if self.session.is_clean() {
                node.pool.give_back(link, self.session.proto);
            }
        }
    }

    /// While the shard has no usable primary (a failover is choosing one),
    /// a request that needs it waits, up to `failover.hold_writes_ms`, so a
    /// failover costs clients a pause instead of errors. At most
    /// `failover.max_held_clients` wait; beyond that, and past the time
    /// bound, the caller answers an error. True once there is a primary.
    pub(super) async fn await_primary(&mut self) -> bool {
        let ctx = self.ctx.clone();
        let shard = ctx.topology.shard();
        if shard.primary().is_some() {
            return true;
        }
        if self.flush().await == Flow::Stop {
            return false;
        }
        let failover = &ctx.config.failover;
        if shard.held.fetch_add(1, Ordering::AcqRel) >= failover.max_held_clients {
            shard.held.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let deadline =
            tokio::time::Instant::now() + std::time::Duration::from_millis(failover.hold_writes_ms);
        let mut changed = shard.watch();
        let mut shutdown = ctx.shutdown.clone();
        let found = loop {
            if shard.primary().is_some() {
                break true;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break false,
                _ = shutdown.changed() => break false,
                result = changed.changed() => if result.is_err() {
                    break false;
                },
            }
        };
        shard.held.fetch_sub(1, Ordering::AcqRel);
        found
    }

    pub(super) fn no_primary(&self) -> Value {
        Value::err(format!(
            "ERR rampart: no reachable primary for shard '{}'",
            self.ctx.topology.shard().name
        ))
    }

    /// Adds a request to the open batch, sending the batch first if it is for
    /// another link or full.
    pub(super) async fn add(&mut self, node: Arc<Node>, link: Link, raw: Bytes) -> Flow {
        let durable = self.durable;
        let same = self.open.as_ref().is_some_and(|open| {
            open.target.same_link(&link)
                && open.durable == durable
                && open.requests.len() < MAX_BATCH
        });
        if !same && self.flush().await == Flow::Stop {
            return Flow::Stop;
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
                    class: self.class,
                });
            }
        }
        Flow::Continue
    }

    /// Sends the open batch, if any.
    pub(super) async fn flush(&mut self) -> Flow {
        let Some(open) = self.open.take() else {
            return Flow::Continue;
        };
        let replies = open.requests.len();
        let (tx, rx) = oneshot::channel();
        match open.target {
            Target::Link { link, node } if open.durable && self.session.user.is_some() => {
                node.count_requests(replies as u64 + 1);
                let own = node
                    .pool
                    .writer(self.session.proto, self.session.id)
                    .clone();
                let durability = self.ctx.topology.shard().durability.clone();
                let depth = self.ctx.config.limits.max_reply_depth;
                super::durable::send_confirmed(&link, own, durability, open.requests, tx, depth)
                    .await;
            }
            Target::Link { link, node } => {
                node.count_requests(replies as u64);
                let durable = open
                    .durable
                    .then(|| self.ctx.topology.shard().durability.clone());
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
                fanout.write(self.session.proto, open.requests, 0, tx).await;
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
        Flow::Continue
    }

    /// Waits until every reply queued so far has been written, so that the
    /// client can move to another backend connection without reordering.
    async fn barrier(&mut self) -> Flow {
        match self.replies.drain().await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }

    pub(super) fn push(&mut self, item: Pending) -> Flow {
        let _ = self.replies.push(item);
        Flow::Continue
    }

    /// Queues a reply Rampart made itself, after everything before it.
    pub(super) async fn reply(&mut self, value: Value) -> Flow {
        if self.flush().await == Flow::Stop {
            return Flow::Stop;
        }
        let bytes = value.encode(self.session.proto);
        self.push(Pending::Local(bytes))
    }
}

/// A batch's replies without the first one (a marker Rampart added).
fn without_first(mut reply: BatchReply) -> BatchReply {
    if reply.got == 0 {
        return reply;
    }
    let mut scanner = crate::resp::ReplyScanner::new(8);
    let first = scanner.scan(&reply.data).ok().flatten().unwrap_or(0);
    reply.data = reply.data.slice(first..);
    reply.got -= 1;
    reply
}

/// EXEC or DISCARD of a transaction whose connection was lost.
fn lost_reply(tx: Tx, in_multi: bool) -> Value {
    match (tx, in_multi) {
        (Tx::Exec, true) => {
            Value::err("EXECABORT Transaction discarded because of previous errors.")
        }
        (Tx::Exec, false) => Value::err("ERR EXEC without MULTI"),
        (Tx::Discard, true) => Value::ok(),
        _ => Value::err("ERR DISCARD without MULTI"),
    }
}
