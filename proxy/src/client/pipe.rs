//! Clients piped to a connection of their own: SUBSCRIBE, MONITOR and
//! CLIENT TRACKING turn the connection into a stream of pushed messages,
//! so from then on the client's bytes are passed straight through (parsed,
//! so framing stays checked) and the node's bytes copied back.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connection::{Connection, Flow};
use super::registry::Order;
use crate::net::ReadHalf;
use crate::resp::{Request, Value};

impl Connection {
    /// A piped session: client bytes are parsed (so framing stays checked)
    /// and forwarded, backend bytes are copied back untouched.
    pub(super) async fn pipe(mut self, mut rd: ReadHalf, mut backend: ReadHalf) {
        let mut from_backend = BytesMut::with_capacity(16 * 1024);
        let mut monitor = self
            .session
            .monitor
            .then(super::monitor::MonitorFilter::default);
        let mut shutdown = self.ctx.shutdown.clone();
        let mut scanner = crate::resp::ReplyScanner::new(self.ctx.config.limits.max_reply_depth);
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                // Killed by another client (`CLIENT KILL ... TYPE pubsub`,
                // `ID`): closed as Redis closes it, node connection and all.
                order = self.orders.recv() => match order {
                    Some(Order::Kill) | None => break,
                    // Nothing blocks on a piped connection.
                    Some(Order::Unblock { done, .. }) => {
                        let _ = done.send(false);
                    }
                    Some(Order::Reserve { node, done }) => {
                        let _ = done.send(self.pipe_id_on(&node));
                    }
                },
                read = backend.read_buf(&mut from_backend) => match read {
                    Ok(n) if n > 0 => {
                        let (out, flow) = match monitor.as_mut() {
                            Some(filter) => {
                                let lines = filter.feed(&from_backend);
                                from_backend.clear();
                                (lines, Flow::Continue)
                            }
                            None => match self.node_replies(&mut from_backend, &mut scanner).await {
                                Ok(answered) => answered,
                                // The node's stream makes no sense: nothing
                                // more of it can be passed on safely.
                                Err(_) => break,
                            },
                        };
                        if self.replies.write_raw(&out).await.is_err() || flow == Flow::Stop {
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

    /// SUBSCRIBE, MONITOR, CLIENT TRACKING: from now on this client is piped
    /// straight to a connection of its own, pushed messages and all.
    pub(super) async fn stream(&mut self, req: Request) -> Flow {
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
            let Some(primary) = self.shard.topology.primary().cloned() else {
                return self.reply(self.no_primary()).await;
            };
            if let Some((stream, id)) = self.take_reserved(&primary) {
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
        Flow::Continue
    }

    /// A request from a client piped to a connection of its own: passed on
    /// as it is, but for a `REDIRECT` to another Rampart client.
    pub(super) async fn send_piped(&mut self, req: Request) -> Flow {
        if let Some(error) = self.other_shards_channels(&req) {
            let bytes = error.encode(self.session.proto);
            return match self.replies.write_raw(&bytes).await {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::Stop,
            };
        }
        let node = (req.name().as_bytes() == b"CLIENT")
            .then(|| self.registration.entry.snapshot().pipe)
            .flatten()
            .and_then(|(addr, _)| self.shard.topology.node_by_addr(&addr).cloned());
        let req = match node {
            Some(node) => match self.redirect_tracking(req, &node).await {
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
        let raw = self.interpose(&req).unwrap_or(req.raw);
        let Some(pipe) = self.session.pipe.as_mut() else {
            return Flow::Stop;
        };
        match pipe.write_all(&raw).await {
            Ok(()) if pipe.flush().await.is_ok() => Flow::Continue,
            _ => Flow::Stop,
        }
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
            b"SUBSCRIBE" | b"PSUBSCRIBE" => 0,
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
}
