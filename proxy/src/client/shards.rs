//! A client's requests when there are several shards: each goes to the
//! shard owning its keys ([`crate::shard::locate`]), and the few that
//! concern several shards are sent to each and their replies combined
//! ([`crate::shard::split`]) into one reply, queued in its place among
//! the client's other replies so a pipeline spanning shards keeps its
//! order.
//!
//! A client in a transaction or WATCH stays on its shard: a command for
//! another is refused with `CROSSSLOT` (and the transaction fails at
//! EXEC, as Redis Cluster does).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::connection::{Connection, Flow};
use super::writer::Pending;
use crate::backend::reply::ReplyTo;
use crate::backend::{Batch, BatchReply};
use crate::observe::counters::BatchClass;
use crate::resp::command::Class;
use crate::resp::{Request, Value};
use crate::route;
use crate::shard::locate::{locate, Place, CROSSSLOT};
use crate::shard::split::{self, Combine, Part};
use crate::shard::Shard;
use crate::topology::Node;

/// `CLIENT TRACKING`, `CACHING`, `TRACKINGINFO`, `GETREDIR`: over several
/// shards, about the client's tracking here (see [`super::tracking`]).
fn tracking_command(req: &Request) -> Option<Bytes> {
    if req.name().as_bytes() != b"CLIENT" {
        return None;
    }
    let sub = req.arg_upper(1)?;
    let ours = [&b"TRACKING"[..], b"CACHING", b"TRACKINGINFO", b"GETREDIR"];
    ours.contains(&sub.as_bytes())
        .then(|| Bytes::copy_from_slice(sub.as_bytes()))
}

impl Connection {
    /// Answers a tracking command over several shards.
    async fn tracking_command(&mut self, sub: Bytes, req: &Request) -> Flow {
        use super::tracking::Tracking;
        if self.session.in_multi {
            let error = "ERR rampart: CLIENT TRACKING and CACHING inside MULTI are not available with several shards";
            return self.refuse(error.into()).await;
        }
        let value = match &sub[..] {
            b"TRACKING" => {
                let session = self.session.link_session();
                let now = self.tracking.take();
                let ctx = self.ctx.clone();
                let (tracking, value) = Tracking::command(now, req, &ctx, session).await;
                self.tracking = tracking;
                value
            }
            b"CACHING" => Tracking::caching(self.tracking.as_deref_mut(), req),
            b"GETREDIR" => Tracking::getredir(self.tracking.as_deref()),
            _ => {
                let info = Tracking::info(self.tracking.as_deref(), self.session.proto);
                return self.push_local(info).await;
            }
        };
        self.reply(value).await
    }

    /// Chooses the shard for a request (sets `self.shard`), or handles it
    /// here when it concerns several. `None`: go on with `self.shard`.
    pub(super) async fn place(&mut self, class: Class, req: &Request) -> Option<Flow> {
        if let Class::Refused(_) = class {
            return None;
        }
        if let Some(sub) = tracking_command(req) {
            return Some(self.tracking_command(sub, req).await);
        }
        if !matches!(class, Class::Answer(_)) {
            if let Err(flow) = self.route_map(req).await {
                return Some(flow);
            }
        }
        if let Some(error) = crate::shard::locate::refused_with_shards(req, self.routing.map()) {
            return Some(self.refuse(error.into()).await);
        }
        let held = self.session.in_multi || self.session.watching || self.session.tx_lost;
        let place = match class {
            // Answered here, or about the client's own connection.
            Class::Answer(_) => Place::Any,
            _ => locate(req, self.routing.map(), self.ctx.shards.len()),
        };
        let index = match place {
            Place::One(index) => index,
            Place::Any | Place::Every(_) if held => self
                .pinned_shard()
                .unwrap_or_else(|| self.ctx.shards.first_index()),
            Place::Any if class == Class::Wait => {
                let written: Vec<usize> = (0..self.written.len())
                    .filter(|&i| self.written[i])
                    .collect();
                match written[..] {
                    [] => self.ctx.shards.first_index(),
                    [only] => only,
                    _ => return Some(self.wait_on(&written, req.clone()).await),
                }
            }
            Place::Any => self
                .pinned_shard()
                .unwrap_or_else(|| self.ctx.shards.first_index()),
            Place::CrossSlot | Place::Split(_) if held => {
                return Some(self.refuse(CROSSSLOT.into()).await)
            }
            Place::CrossSlot => return Some(self.refuse(CROSSSLOT.into()).await),
            Place::Split(kind) => {
                let (parts, how) = split::split(kind, req, self.routing.map());
                return Some(self.scatter(class, parts, how).await);
            }
            Place::Every(kind) => {
                let (parts, how) = split::every(kind, req, &self.ctx.shards.serving());
                return Some(self.scatter(class, parts, how).await);
            }
        };
        let shard = self.ctx.shards.at(index);
        if !Arc::ptr_eq(&self.shard, &shard) {
            self.shard = shard;
        }
        if class == Class::Write {
            self.wrote(index);
        }
        None
    }

    fn wrote(&mut self, index: usize) {
        if self.written.len() <= index {
            self.written.resize(self.ctx.shards.len(), false);
        }
        self.written[index] = true;
    }

    /// `WAIT n t` after writes to several shards: each shard's primary is
    /// asked on a connection of its own (after a marker write, as for one
    /// shard, see `blocking.rs`), all at once; the answer is the fewest
    /// replicas any shard had acknowledge, so `n` means the same as on
    /// one Redis: every write the client made is on that many replicas.
    /// A client that leaves meanwhile closes those connections, which
    /// ends the WAITs on the nodes.
    async fn wait_on(&mut self, shards: &[usize], req: Request) -> Flow {
        if self.flush().await == Flow::Stop || self.barrier().await == Flow::Stop {
            return Flow::Stop;
        }
        let mut waits = Vec::with_capacity(shards.len());
        for &index in shards {
            let shard = self.ctx.shards.at(index);
            let previous = std::mem::replace(&mut self.shard, shard.clone());
            let dedicated = self.dedicated().await;
            self.shard = previous;
            let (node, link) = match dedicated {
                Ok(pair) => pair,
                Err(error) => return self.reply(error).await,
            };
            let (tx, rx) = oneshot::channel();
            node.count_requests(2);
            link.send(Batch::plain(
                vec![super::blocking::wait_marker(), req.raw.clone()],
                tx,
            ))
            .await;
            waits.push((node, link, rx));
        }
        let waiting: Vec<(Arc<Node>, crate::backend::Link)> = waits
            .iter()
            .map(|(node, link, _)| (node.clone(), link.clone()))
            .collect();
        let (client_tx, client_rx) = oneshot::channel::<BatchReply>();
        let proto = self.session.proto;
        let session = self.session.link_session();
        tokio::spawn(async move {
            let mut client_tx = client_tx;
            let mut fewest: Option<i64> = None;
            let mut failure: Option<Bytes> = None;
            let mut lent = Vec::with_capacity(waits.len());
            for (node, link, rx) in waits {
                let reply = tokio::select! {
                    reply = rx => reply.ok(),
                    // The client left: dropping the links closes them.
                    _ = client_tx.closed() => return,
                };
                match reply.map(super::blocking::without_first) {
                    Some(r) if r.got == 1 && r.error.is_none() => match wait_count(&r.data) {
                        Some(n) => fewest = Some(fewest.map_or(n, |f| f.min(n))),
                        None => failure = Some(r.data),
                    },
                    Some(r) => {
                        failure = Some(
                            Value::err(r.error.as_deref().unwrap_or("ERR rampart: WAIT failed"))
                                .encode(proto),
                        )
                    }
                    None => failure = Some(Value::err("ERR rampart: WAIT failed").encode(proto)),
                }
                lent.push((node, link));
            }
            let data = failure.unwrap_or_else(|| Value::Int(fewest.unwrap_or(0)).encode(proto));
            let _ = client_tx.send(BatchReply {
                data,
                got: 1,
                error: None,
                charge: None,
            });
            for (node, link) in lent {
                node.pool.give_back(link, &session);
            }
        });
        let position = self.out.replies.push(Pending::Remote {
            reply: client_rx,
            replies: 1,
            sent: std::time::Instant::now(),
            class: BatchClass::Other,
        });
        // Known as blocked, so a client that leaves (or CLIENT UNBLOCK)
        // unblocks each shard's WAIT at once.
        for (node, link) in waiting {
            self.blocked.push(super::inflight::Blocked {
                node,
                link,
                position,
                request: req.clone(),
                sent: std::time::Instant::now(),
            });
        }
        Flow::Continue
    }

    /// The index of the shard the client's dedicated connection is on.
    pub(super) fn pinned_shard(&self) -> Option<usize> {
        let (node, _) = self.session.pinned.as_ref()?;
        self.ctx
            .shards
            .all()
            .iter()
            .position(|s| s.topology.has(node))
    }

    /// Sends each part to its shard and queues the combined reply.
    async fn scatter(&mut self, class: Class, parts: Vec<Part>, how: Combine) -> Flow {
        if self.flush().await == Flow::Stop {
            return Flow::Stop;
        }
        // The parts travel on other links than the client's earlier
        // requests: those must be answered first, so that what the parts
        // read follows what the client wrote.
        if self.out.replies.completed() < self.out.durable_upto
            && self.barrier().await == Flow::Stop
        {
            return Flow::Stop;
        }
        let write = class == Class::Write;
        let mut pending = Vec::with_capacity(parts.len());
        let mut durable = false;
        let mut lent = Vec::new();
        for part in parts {
            let shard = self.ctx.shards.at(part.shard);
            let (tx, rx) = oneshot::channel();
            let sent = self.send_part(&shard, write, part.request, tx).await;
            durable |= sent.durable;
            lent.extend(sent.lent);
            pending.push(rx);
        }
        let (client_tx, client_rx) = oneshot::channel();
        let account = self.out.account.clone();
        let session = self.session.link_session();
        tokio::spawn(async move {
            let mut replies = Vec::with_capacity(pending.len());
            for rx in pending {
                replies.push(part_reply(rx.await));
            }
            for (node, link) in lent {
                node.pool.give_back(link, &session);
            }
            let data = split::combine(&how, &replies);
            drop(replies);
            let charge = Some(account.charge(data.len()));
            let _ = client_tx.send(BatchReply {
                data,
                got: 1,
                error: None,
                charge,
            });
        });
        let position = self.out.replies.push(Pending::Remote {
            reply: client_rx,
            replies: 1,
            sent: std::time::Instant::now(),
            class: if write {
                BatchClass::Write
            } else {
                BatchClass::Read
            },
        });
        if durable {
            self.out.durable_upto = position;
        }
        // A reply combined from several shards: beyond every floor.
        let position = self.out.next_position();
        self.reads.saw_everywhere(&self.ctx.shards, position);
        Flow::Continue
    }

    /// Sends one part to its shard: writes to the primary (held for the
    /// shard's quorum in sync mode, through the writer in fan-out mode),
    /// reads where the shard's router says. A client logged in as a node
    /// ACL user sends on a connection of its own, logged in as that user,
    /// which is lent back once the reply is in.
    async fn send_part(
        &mut self,
        shard: &Arc<Shard>,
        write: bool,
        request: Request,
        tx: oneshot::Sender<BatchReply>,
    ) -> Sent {
        let proto = self.session.proto;
        let mut sent = Sent::default();
        if write {
            if let Some(fanout) = &shard.fanout {
                fanout.write(proto, vec![request.raw], 0, tx).await;
                sent.durable = true;
                return sent;
            }
        }
        let Some(node) = self.node_for(shard, write, &request).await else {
            let _ = tx.send(failed(&format!(
                "ERR rampart: no reachable primary for shard '{}'",
                shard.name()
            )));
            return sent;
        };
        sent.durable = write && shard.topology.durability.is_sync();
        node.count_requests(1);
        if self.session.user.is_some() {
            let link = match node.pool.dedicated(self.session.link_session()).await {
                Ok(link) => link,
                Err(e) => {
                    let _ = tx.send(failed(&format!(
                        "ERR rampart: {} unavailable ({e})",
                        node.addr
                    )));
                    sent.durable = false;
                    return sent;
                }
            };
            if sent.durable {
                // The user may not be allowed WAIT: Rampart's own writer
                // link waits for the replicas instead.
                let own = node.pool.writer(proto, self.session.id).clone();
                let durability = shard.topology.durability.clone();
                let depth = self.ctx.config.limits.max_reply_depth;
                super::durable::send_confirmed(
                    &link,
                    own,
                    durability,
                    vec![request.raw],
                    tx,
                    depth,
                )
                .await;
            } else {
                link.send(Batch::plain(vec![request.raw], tx)).await;
            }
            sent.lent = Some((node, link));
            return sent;
        }
        let link = if sent.durable {
            node.pool.writer(proto, self.session.id)
        } else {
            node.pool.shared(proto, self.session.id)
        };
        link.send(Batch {
            requests: vec![request.raw],
            replies: 1,
            reply: ReplyTo::charged(tx, self.out.account.clone()),
            durable: sent.durable.then(|| shard.topology.durability.clone()),
            keep_on_shortfall: false,
        })
        .await;
        sent
    }

    /// The node a part goes to, waiting for a failover if the shard has no
    /// primary and the part needs one.
    async fn node_for(
        &mut self,
        shard: &Arc<Shard>,
        write: bool,
        req: &Request,
    ) -> Option<Arc<Node>> {
        // A tracking client's reads go to the primary: a replica may not
        // have a write the client was already told about.
        let primary = write || self.tracking.is_some();
        let class = if primary { Class::Write } else { Class::Read };
        let read = route::Read {
            client_id: self.session.id,
            key: req.arg(1).unwrap_or_default(),
            burst: self.bursts,
        };
        let token = self.read_token_for(shard);
        let routed = route::route(&shard.topology, &shard.router, class, &read, &token)
            .ok()
            .map(|(node, _)| node)
            .filter(|node| {
                write
                    || node
                        .pool
                        .shared(self.session.proto, self.session.id)
                        .is_up()
            });
        if let Some(node) = routed {
            return Some(node.clone());
        }
        if let Some(primary) = shard.topology.primary() {
            return Some(primary.clone());
        }
        let previous = std::mem::replace(&mut self.shard, shard.clone());
        let found = self.await_primary().await;
        self.shard = previous;
        found.then(|| shard.topology.primary().cloned()).flatten()
    }
}

/// What sending a part did.
#[derive(Default)]
struct Sent {
    /// It waits for its shard's quorum.
    durable: bool,
    /// A connection lent to the client for it, to give back.
    lent: Option<(Arc<Node>, crate::backend::Link)>,
}

/// The count in `WAIT`'s reply (`:2`).
fn wait_count(reply: &[u8]) -> Option<i64> {
    let line = reply.strip_prefix(b":")?;
    let end = line.iter().position(|&b| b == b'\r')?;
    crate::resp::request::parse_i64(&line[..end])
}

/// One part's reply as a single RESP value, an error if it did not come.
fn part_reply(reply: Result<BatchReply, oneshot::error::RecvError>) -> Bytes {
    match reply {
        Ok(reply) if reply.got == 1 && reply.error.is_none() => reply.data,
        Ok(reply) => {
            let error = reply.error.map_or_else(
                || "ERR rampart: a shard did not answer".to_string(),
                |e| e.to_string(),
            );
            Value::err(error).encode(crate::resp::Proto::Resp2)
        }
        Err(_) => Bytes::from_static(b"-ERR rampart: a shard did not answer\r\n"),
    }
}

fn failed(error: &str) -> BatchReply {
    BatchReply {
        data: Bytes::new(),
        got: 0,
        error: Some(error.into()),
        charge: None,
    }
}
