//! The path of an ordinary read or write: to the node the shard's router
//! (and, for a read, the client's consistency) chooses, in the batch for
//! that node's link, held for the quorum when writes are synchronous.

use std::sync::Arc;

use super::connection::{Connection, Flow};
use super::hold;
use super::inflight::MAX_BATCH;
use crate::backend::Link;
use crate::resp::command::{Class, Tx};
use crate::resp::{Request, Value};
use crate::route;
use crate::topology::Node;

impl Connection {
    /// Whether the shard has a primary, waiting for a failover to give it
    /// one (see [`super::hold`]). The open batch is sent first: what the
    /// client sent before must not wait with this request.
    pub(super) async fn await_primary(&mut self) -> bool {
        if self.shard.topology.primary().is_some() {
            return true;
        }
        if self.flush().await == Flow::Stop {
            return false;
        }
        let ctx = self.ctx.clone();
        hold::until_primary(&ctx, &self.shard.topology, self.arrived).await
    }

    /// Whether the link to `primary` this request would take connects,
    /// waiting for it (see [`hold::until_connected`]); false past the hold.
    /// The open batch is sent first unless it waits for the same link.
    async fn await_link(&mut self, primary: &Arc<Node>, link: &Link) -> bool {
        let same = self
            .out
            .open
            .as_ref()
            .is_some_and(|open| open.target.same_link(link));
        if !same && self.flush().await == Flow::Stop {
            return false;
        }
        let ctx = self.ctx.clone();
        hold::until_connected(&ctx, &self.shard.topology, self.arrived, primary, link).await
    }

    pub(super) fn no_primary(&self) -> Value {
        hold::no_primary(self.shard.name())
    }

    /// Whether the request's reply must wait for the shard's write quorum:
    /// writes, blocking pops and moves, and EXEC (a whole transaction is one
    /// write), in synchronous mode. Commands queued inside MULTI are not,
    /// since a `WAIT` there would be queued with them.
    pub(super) fn wants_durability(&self, class: Class) -> bool {
        let write = match class {
            Class::Transaction(Tx::Exec) => true,
            Class::Write | Class::Blocking => !self.session.in_multi,
            _ => false,
        };
        let shard = &self.shard.topology;
        write && shard.durability.is_sync() && !shard.is_fanout()
    }

    /// Reads and writes that need no connection state.
    pub(super) async fn forward(&mut self, class: Class, req: Request) -> Flow {
        // State that lives on a connection (a database, a transaction ...)
        // keeps the client on its dedicated one, opening it if it was lost.
        if !self.session.is_clean() {
            return self.pinned(req).await.and_saw(self);
        }
        // While the primary pauses writes (`CLIENT PAUSE ... WRITE`), a held
        // command would hold a shared connection and every client behind it
        // there: each client waits on a connection of its own instead, as on
        // Redis.
        let paused = self
            .shard
            .topology
            .primary()
            .is_some_and(|p| p.pool.stats().is_paused());
        if paused {
            return self.pinned(req).await.and_saw(self);
        }
        if self.session.pinned.is_some() {
            self.unpin().await;
        }
        // Borrowed from a clone of the shard so that nothing per request
        // clones a node or link handle unless a new batch starts.
        let owner = self.shard.clone();
        let key = req.arg(1).unwrap_or_default();
        let (shard, policy) = (&owner.topology, &owner.router);
        let read = route::Read {
            client_id: self.session.id,
            key,
            burst: self.bursts,
        };
        // Only a read is placed by the client's consistency: a write goes
        // to the primary, and its token is not worth bringing up to date.
        let token = if class == Class::Read {
            let shard = self.shard.clone();
            self.read_token_for(&shard)
        } else {
            crate::route::ReadToken::default()
        };
        // A key of a moving slot may just have been copied to the
        // target's primary, which its replicas may not have yet: read
        // there, as a write would go.
        // A tracking client's reads go there too: a replica may not have a
        // write the client was already told about (see `super::tracking`).
        let to_primary = || self.tracking.is_some() || self.in_moving_slot(key);
        let routed_as = match class == Class::Read && to_primary() {
            true => Class::Write,
            false => class,
        };
        let (mut node, mut on_replica) = match route::route(shard, policy, routed_as, &read, &token)
        {
            Ok(routed) => routed,
            Err(_) => {
                if !self.await_primary().await {
                    return self.reply(self.no_primary()).await;
                }
                match route::route(shard, policy, routed_as, &read, &token) {
                    Ok(routed) => routed,
                    Err(_) => return self.reply(self.no_primary()).await,
                }
            }
        };
        let proto = self.session.proto;
        let writes_pending = self.out.open.as_ref().is_some_and(|open| open.durable)
            || self.out.replies.completed() < self.out.durable_upto;
        let follows_own_writes =
            class == Class::Read && writes_pending && shard.durability.is_sync();
        if follows_own_writes {
            if let Some(primary) = shard.primary() {
                node = primary;
                on_replica = false;
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
                on_replica = false;
                link = primary.pool.shared(proto, self.session.id);
            }
        }
        if !link.is_up() && !on_replica {
            // Never sent: it waits for the link, then is routed again
            // (the primary may have changed meanwhile). Past the hold it
            // goes to the link, which answers why the node is unavailable.
            let (node, link) = (node.clone(), link.clone());
            if self.await_link(&node, &link).await {
                return Box::pin(self.forward(class, req)).await;
            }
        }
        if let Some(open) = &mut self.out.open {
            if open.target.same_link(link) && open.requests.len() < MAX_BATCH {
                open.requests.push(req.raw);
                self.saw(on_replica.then_some(&**node));
                return Flow::Continue;
            }
        }
        let flow = self.add(node.clone(), link.clone(), req.raw).await;
        self.saw(on_replica.then_some(&**node));
        flow
    }
}
