//! Clients piped to a connection of their own: SUBSCRIBE, MONITOR and
//! CLIENT TRACKING turn the connection into a stream of pushed messages,
//! so from then on the client's bytes are passed straight through (parsed,
//! so framing stays checked) and the node's bytes copied back.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connection::{Connection, Flow};
use super::interpose::{echo, refusal, translate, Echo};
use super::piped::{Amend, Interposed};
use super::redirect;
use super::registry::Order;
use super::session::{Asker, Session};
use crate::net::ReadHalf;
use crate::resp::{Proto, ReplyScanner, Request, Value};
use crate::shard::slots::Residence;
use crate::topology::Node;

impl Connection {
    /// A piped session: client bytes are parsed (so framing stays checked)
    /// and forwarded, backend bytes are copied back untouched.
    pub(super) async fn pipe(mut self, mut rd: ReadHalf, mut backend: ReadHalf) {
        // Everything routed before is answered (the pipe began at a
        // barrier), and nothing piped is routed by the slot map: the maps
        // are let go, or a slot move would wait for this client forever.
        self.routing.release(u64::MAX, true);
        let mut from_backend = BytesMut::with_capacity(16 * 1024);
        let mut monitor = self
            .session
            .monitor
            .then(super::monitor::MonitorFilter::default);
        let mut shutdown = self.ctx.shutdown.clone();
        let mut scanner = ReplyScanner::new(self.ctx.config.limits.max_reply_depth);
        let mut shard_changed = self.shard.topology.watch();
        let mut slots_changed = self.ctx.slots.watch();
        loop {
            // A shard removed while running: its piped clients are
            // disconnected, to subscribe again where PUBLISH now goes.
            if *shutdown.borrow()
                || self.shard.topology.is_retired()
                || self.shard_channels_move()
                || self.tracked_keys_move()
                || self.pipe_demoted()
            {
                break;
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = shard_changed.changed() => {}
                _ = slots_changed.changed(), if !self.session.shard_channel_slots.is_empty() || self.session.piped_tracking => {}
                // Killed by another client (`CLIENT KILL ... TYPE pubsub`,
                // `ID`): closed as Redis closes it, node connection and all.
                order = self.orders.recv() => match order {
                    Some(Order::Kill) | None => break,
                    // Nothing blocks on a piped connection.
                    Some(Order::Unblock { done, .. }) => {
                        let _ = done.send(false);
                    }
                    Some(Order::Reserve { node, done }) => {
                        let id = redirect::pipe_id_on(&self.session, &self.registration, &node);
                        let _ = done.send(id);
                    }
                    Some(Order::Inbox(inbox)) => self.inbox = Some(inbox),
                },
                message = super::tracking::inbox(self.inbox.as_mut(), &self.registration.entry), if self.inbox.is_some() => match message {
                    Some(message) => {
                        let message = super::tracking::for_pipe(message, &self.session);
                        if self.out.replies.write_raw(&message).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                // Tracking over several shards, then subscribing: the
                // invalidations keep coming, between the node's messages.
                message = super::tracking::Tracking::next(self.tracking.as_mut()), if self.tracking.is_some() => match message {
                    Some(message) => {
                        // Its own (not redirected) in RESP3 only, as Redis.
                        let own = self.redirected(message);
                        let Some(message) = own.filter(|_| self.session.proto == Proto::Resp3) else {
                            continue;
                        };
                        if self.out.replies.write_raw(&message).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                lines = super::monitor::OtherFeeds::next(self.other_feeds.as_mut()) => match lines {
                    // Only the pipe's own node answers the client's
                    // commands: nothing is interposed in these lines.
                    Some(lines) => {
                        if self.out.replies.write_raw(&lines).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                read = backend.read_buf(&mut from_backend) => match read {
                    Ok(n) if n > 0 => {
                        let (out, flow) = match monitor.as_mut() {
                            Some(filter) => {
                                let lines = filter.feed(&from_backend);
                                from_backend.clear();
                                let proto = self.session.proto;
                                (self.interposer.refusals_in_lines(lines, proto), Flow::Continue)
                            }
                            None => match self.node_replies(&mut from_backend, &mut scanner).await {
                                Ok(answered) => answered,
                                // The node's stream makes no sense: nothing
                                // more of it can be passed on safely.
                                Err(_) => break,
                            },
                        };
                        if self.out.replies.write_raw(&out).await.is_err() || flow == Flow::Stop {
                            break;
                        }
                        if from_backend.capacity() > crate::backend::cutter::RETURN_ABOVE
                            && from_backend.is_empty()
                        {
                            from_backend = BytesMut::with_capacity(16 * 1024);
                        }
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
                                let _ = self.out.replies.write_raw(&error).await;
                                self.out.replies.shutdown().await;
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
        self.out.replies.shutdown().await;
    }

    /// SUBSCRIBE, MONITOR, CLIENT TRACKING: from now on this client is piped
    /// straight to a connection of its own, pushed messages and all.
    pub(super) async fn stream(&mut self, req: Request) -> Flow {
        if self.session.in_multi {
            return self.pinned(req).await;
        }
        note_shard_channels(&mut self.session, &req);
        if self.flush().await == Flow::Stop || self.barrier().await == Flow::Stop {
            return Flow::Stop;
        }
        if let Some((node, link)) = self.session.pinned.take() {
            if self.session.is_clean() {
                node.pool.give_back(link, &self.session.link_session());
            }
        }
        // A subscriber that reconnects while its primary is dying (redis-py
        // and ioredis re-subscribe at once) waits for the failover, as a
        // write would, rather than failing and ending up subscribed to
        // nothing.
        let deadline = tokio::time::Instant::now()
            + std::time::Duration::from_millis(self.ctx.config.failover.hold_writes_ms);
        let (primary, stream, backend_id) = loop {
            let primary = match self.primary().await {
                Ok(primary) => primary,
                Err(error) => return self.reply(error).await,
            };
            if let Some((stream, id)) =
                redirect::take_reserved(&mut self.reserved, &self.session, &primary)
            {
                break (primary, stream, Some(id));
            }
            match primary.pool.raw(self.session.link_session()).await {
                Ok((stream, id)) => break (primary, stream, id),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    let mut changed = self.shard.topology.watch();
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
        let req = match self.redirect_tracking(req, &primary).await {
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
        self.session.piped_tracking |= req.name().as_bytes() == b"CLIENT";
        if self.session.monitor && self.ctx.shards.len() > 1 {
            let others = self.ctx.shards.all_serving();
            let others = others.into_iter().filter(|s| !Arc::ptr_eq(s, &self.shard));
            let session = self.session.link_session();
            // Every feed watches before the client hears `+OK`: what it
            // sends next is seen on every shard.
            let feeds = super::monitor::OtherFeeds::start(others.collect(), session).await;
            self.other_feeds = Some(feeds);
        }
        self.session.pubsub = matches!(
            req.name().as_bytes(),
            b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE"
        );
        let (backend_rd, mut backend_wr) = stream.into_split();
        self.pipe_from = Some(backend_rd);
        primary.count_requests(1);
        if backend_wr.write_all(&req.raw).await.is_err() || backend_wr.flush().await.is_err() {
            return Flow::Stop;
        }
        self.session.pipe = Some(backend_wr);
        self.session.pipe_node = Some(primary);
        Flow::Continue
    }

    /// Whether a failover or switchover made another node the primary
    /// while this client is piped to the old one, now a replica: the
    /// client is disconnected, as Sentinel disconnects a demoted primary's
    /// clients, so that it reconnects to the new primary rather than hear
    /// READONLY or watch a node that no longer takes writes. A RESP2
    /// subscriber stays: it can only subscribe and ping, and what is
    /// published on the new primary reaches it through replication, unless
    /// it has left subscribed mode (it sent another command: it may now
    /// read and write).
    fn pipe_demoted(&self) -> bool {
        let Some(node) = &self.session.pipe_node else {
            return false;
        };
        let s = &self.session;
        if s.pubsub && !s.monitor && s.proto == Proto::Resp2 && !self.interposer.beyond_subscribe {
            return false;
        }
        self.shard
            .topology
            .primary_node()
            .is_some_and(|primary| !Arc::ptr_eq(primary, node))
    }

    /// A request from a client piped to a connection of its own: passed on
    /// as it is, but for a `REDIRECT` to another Rampart client.
    pub(super) async fn send_piped(&mut self, req: Request) -> Flow {
        if let Some(error) = self.other_shards_channels(&req) {
            let bytes = error.encode(self.session.proto);
            return match self.out.replies.write_raw(&bytes).await {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::Stop,
            };
        }
        note_shard_channels(&mut self.session, &req);
        let node = (req.name().as_bytes() == b"CLIENT")
            .then(|| self.registration.entry.snapshot().pipe)
            .flatten()
            .and_then(|(addr, _)| self.shard.topology.node_by_addr(&addr).cloned());
        let req = match node {
            Some(node) => match self.redirect_tracking(req, &node).await {
                Ok(req) => req,
                Err(error) => {
                    let bytes = error.encode(self.session.proto);
                    return match self.out.replies.write_raw(&bytes).await {
                        Ok(()) => Flow::Continue,
                        Err(_) => Flow::Stop,
                    };
                }
            },
            None => req,
        };
        let class = crate::resp::command::classify(&req);
        let raw = match self.refuse_piped(class, &req).await {
            Some(refused) => refused,
            None => match self.interposer.interpose(&req, &self.session) {
                Some(interposed) => interposed,
                None => self
                    .confirm_piped(class, &req)
                    .unwrap_or_else(|| req.raw.clone()),
            },
        };
        self.interposer.note(&req);
        // A subscriber that has just left subscribed mode on a node that
        // is no longer the primary: disconnected before its command runs
        // there (see `pipe_demoted`).
        if self.pipe_demoted() {
            return Flow::Stop;
        }
        let Some(pipe) = self.session.pipe.as_mut() else {
            return Flow::Stop;
        };
        match pipe.write_all(&raw).await {
            Ok(()) if pipe.flush().await.is_ok() => Flow::Continue,
            _ => Flow::Stop,
        }
    }

    /// Whether a shard channel subscribed here (`SSUBSCRIBE`) is in a slot
    /// that is moving, or moved, away from the pipe's shard: `SPUBLISH` to
    /// it goes to the target from the start of the move, so the client is
    /// disconnected, as a Redis Cluster node tells its shard-channel
    /// subscribers when their slot leaves it, and subscribes again there.
    /// A tracking client piped to a shard that no longer owns every slot
    /// (slots moved to a shard added since): writes there would change
    /// keys it may have cached, unseen by its node.
    fn tracked_keys_move(&self) -> bool {
        if !self.session.piped_tracking {
            return false;
        }
        let here = self.ctx.shards.index_of(&self.shard);
        let map = self.ctx.slots.load();
        (0..16384).any(|slot| map.residence(slot) != Residence::Owned(here))
    }

    fn shard_channels_move(&self) -> bool {
        if self.session.shard_channel_slots.is_empty() {
            return false;
        }
        let here = self.ctx.shards.index_of(&self.shard);
        let map = self.ctx.slots.load();
        self.session
            .shard_channel_slots
            .iter()
            .any(|&slot| map.residence(slot) != Residence::Owned(here))
    }

    /// With several shards, a subscribed connection is piped to one
    /// shard's primary: `SUBSCRIBE` and `PSUBSCRIBE` live on the first
    /// shard (where `PUBLISH` goes), each `SSUBSCRIBE` channel on the shard
    /// owning its slot. A subscription that would land elsewhere is
    /// refused, as Redis Cluster refuses a shard channel of another node.
    fn other_shards_channels(&self, req: &Request) -> Option<Value> {
        use crate::shard::locate::{locate, Place, CROSSSLOT};
        if self.ctx.shards.len() < 2 {
            return None;
        }
        let name = req.name();
        let wanted = match name.as_bytes() {
            b"SUBSCRIBE" | b"PSUBSCRIBE" => self.ctx.shards.first_index(),
            b"SSUBSCRIBE" => match locate(req, &self.ctx.slots.load(), self.ctx.shards.len()) {
                Place::One(index) => index,
                Place::Any => return None,
                _ => return Some(Value::err(CROSSSLOT)),
            },
            _ => return None,
        };
        let wanted = &self.ctx.shards.at(wanted);
        if std::sync::Arc::ptr_eq(wanted, &self.shard) {
            return None;
        }
        Some(Value::err(format!(
            "ERR rampart: this connection is subscribed on shard '{}'; {} here would be on shard '{}': use another connection",
            self.shard.name(),
            name.as_str(),
            wanted.name()
        )))
    }

    /// The node's bytes for the client: the complete replies in `from`
    /// (taken off it; an incomplete one stays), with each marker's echo
    /// replaced by Rampart's answer to the command it stands for.
    pub(super) async fn node_replies(
        &mut self,
        from: &mut BytesMut,
        scanner: &mut ReplyScanner,
    ) -> Result<(BytesMut, Flow), crate::resp::reply::ReplyError> {
        let mut out = BytesMut::new();
        let mut flow = Flow::Continue;
        while let Some(len) = scanner.scan(from)? {
            let frame = from.split_to(len);
            let Some(front) = self.interposer.queue.front() else {
                out.unsplit(frame);
                continue;
            };
            if let Interposed::Refused { .. } = front {
                match self.interposer.refusal_for(&frame) {
                    Some(error) => {
                        out.extend_from_slice(&Value::err(error).encode(self.session.proto))
                    }
                    None => out.unsplit(frame),
                }
                continue;
            }
            let Some(echoed) = echo(&frame, front.marker()) else {
                match front {
                    Interposed::Amend { .. } => self.interposer.held.push(frame),
                    Interposed::Answer { .. } | Interposed::Refused { .. } => out.unsplit(frame),
                }
                continue;
            };
            let answer = match self.interposer.queue.pop_front() {
                Some(Interposed::Answer { local, req, .. }) => match echoed {
                    Echo::Subscribed => refusal(&req).encode(self.session.proto),
                    Echo::Plain => {
                        let before = self.out.replies.queued();
                        if self.answer(local, req).await == Flow::Stop {
                            flow = Flow::Stop;
                        }
                        self.out.replies.take_local_after(before)
                    }
                },
                Some(Interposed::Amend { how, .. }) => {
                    let mut held = std::mem::take(&mut self.interposer.held);
                    // The reply is the last frame before the echo that is
                    // not a RESP3 push.
                    let reply = held.iter().rposition(|f| f.first() != Some(&b'>'));
                    match (how, reply) {
                        (Amend::RedirectId, Some(at)) => {
                            let interposer = &self.interposer;
                            if let Some(amended) =
                                translate(&held[at], |id| interposer.client_of(id))
                            {
                                held[at] = amended;
                            }
                        }
                        (Amend::Replace { local, req }, Some(at))
                            if held[at].first() != Some(&b'-') =>
                        {
                            let before = self.out.replies.queued();
                            if self.answer(local, req).await == Flow::Stop {
                                flow = Flow::Stop;
                            }
                            held[at] =
                                BytesMut::from(&self.out.replies.take_local_after(before)[..]);
                        }
                        // In RESP2 subscribed mode the node refused it.
                        (Amend::Confirm { durability, own }, Some(at)) if echoed == Echo::Plain => {
                            let depth = self.ctx.config.limits.max_reply_depth;
                            let reply = std::mem::take(&mut held[at]);
                            held[at] =
                                super::pipe_guard::confirmed(reply, durability, &own, depth).await;
                        }
                        _ => {}
                    }
                    for frame in held {
                        out.unsplit(frame);
                    }
                    Bytes::new()
                }
                Some(Interposed::Refused { .. }) | None => Bytes::new(),
            };
            out.extend_from_slice(&answer);
            if flow == Flow::Stop {
                break;
            }
        }
        Ok((out, flow))
    }

    /// `req` with a tracking redirect translated for `node` (see
    /// [`super::redirect`]).
    async fn redirect_tracking(
        &mut self,
        req: Request,
        node: &Arc<Node>,
    ) -> Result<Request, Value> {
        let asker = Asker {
            ctx: &self.ctx,
            session: &self.session,
            registration: &self.registration,
        };
        redirect::redirect_tracking(asker, &mut self.interposer, req, node).await
    }
}

/// Notes the slots of the shard channels an `SSUBSCRIBE` names.
fn note_shard_channels(session: &mut Session, req: &Request) {
    if req.name().as_bytes() != b"SSUBSCRIBE" {
        return;
    }
    for channel in req.args().iter().skip(1) {
        // Kept sorted: at most one entry per slot, found by halving.
        let slot = crate::shard::slots::slot(channel);
        if let Err(at) = session.shard_channel_slots.binary_search(&slot) {
            session.shard_channel_slots.insert(at, slot);
        }
    }
}
