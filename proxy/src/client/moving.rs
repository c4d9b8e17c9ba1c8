//! The slot map a client routes by, and what a slot move asks of it (see
//! [`crate::reshard`]).
//!
//! A client keeps the map it routed a request by until that request is
//! answered: a move's pause waits for every holder of the map before it
//! to let go, and then no request sent by that map can still reach the
//! source. An idle client holds none.
//!
//! A transaction's queued commands run at EXEC, long after they were
//! routed: EXEC checks, by the map it is routed by (and holds until
//! answered), that every slot the transaction queued keys of is still
//! owned by its shard and not paused or moving; if one has started moving
//! meanwhile, the transaction is discarded and EXEC answers EXECABORT
//! (nothing ran). Only transactions that straddle the start of a move
//! (its pause lasts until the requests before it are answered,
//! milliseconds) see this.
//!
//! A request touching a key of a moving slot moves the key first (under
//! its slot's gate) and then runs on the target; one touching a paused
//! slot waits for the pause to end.

use std::sync::Arc;

use bytes::Bytes;

use super::connection::{Connection, Flow};
use crate::resp::keyspecs;
use crate::resp::Request;
use crate::shard::slots::{slot, Residence, SlotMap};

/// What a request's keys find.
enum Touch {
    /// No key of a moving slot.
    Settled,
    /// A key of a paused slot: wait.
    Paused,
    /// Keys of moving slots, grouped by slot: move them first.
    Moving(Vec<(u16, usize, usize, Vec<Bytes>)>),
}

fn touch(map: &SlotMap, req: &Request) -> Touch {
    if map.moving().is_none() {
        return Touch::Settled;
    }
    let Some(keys) = keyspecs::keys(req) else {
        return Touch::Settled;
    };
    let mut moving: Vec<(u16, usize, usize, Vec<Bytes>)> = Vec::new();
    for key in keys {
        let slot = slot(key);
        match map.residence(slot) {
            Residence::Owned(_) => {}
            Residence::Paused => return Touch::Paused,
            Residence::Moving { from, to } => match moving.iter_mut().find(|m| m.0 == slot) {
                Some(group) => group.3.push(Bytes::copy_from_slice(key)),
                None => moving.push((slot, from, to, vec![Bytes::copy_from_slice(key)])),
            },
        }
    }
    match moving.is_empty() {
        true => Touch::Settled,
        false => Touch::Moving(moving),
    }
}

impl Connection {
    /// Takes the map in force to route `req` by, waits out a pause of its
    /// slots and moves its keys of moving slots; `Err` is the flow after
    /// answering the request (a move failed).
    pub(super) async fn route_map(&mut self, req: &Request) -> Result<(), Flow> {
        loop {
            self.take_current_map().await?;
            match touch(self.routing.map(), req) {
                Touch::Settled => break,
                // A transaction with commands queued on a node cannot
                // wait: the pause waits for them (they hold the map they
                // were routed by until EXEC). It queues on the source, and
                // EXEC discards it (see `slots_stayed`).
                Touch::Paused if self.session.in_multi && self.session.multi_deferred.is_none() => {
                    break
                }
                Touch::Paused if self.routing.map().is_all_paused() => {
                    self.wait_for_shared_map().await?
                }
                Touch::Paused => self.wait_out_pause().await?,
                Touch::Moving(groups) => {
                    self.move_first(groups).await?;
                    break;
                }
            }
        }
        if self.session.in_multi {
            if let Some(keys) = keyspecs::keys(req) {
                let map = self.routing.map();
                let queued: Vec<(u16, bool)> = keys
                    .iter()
                    .map(|key| {
                        let slot = slot(key);
                        let moved = matches!(map.residence(slot), Residence::Moving { .. });
                        (slot, moved)
                    })
                    .collect();
                self.session.tx_slots.extend(queued);
            }
        }
        Ok(())
    }

    /// Whether every key the transaction queued is still where its
    /// command was queued, by the map EXEC is routed by: its slot owned by
    /// the transaction's shard, or (queued while the slot was moving, so
    /// after the key moved there) moving to it.
    pub(super) fn slots_stayed(&self, queued: &[(u16, bool)]) -> bool {
        if queued.is_empty() || self.ctx.shards.len() < 2 {
            return true;
        }
        let Some(home) = self
            .ctx
            .shards
            .all()
            .iter()
            .position(|s| Arc::ptr_eq(s, &self.shard))
        else {
            return true;
        };
        let map = self.routing.map();
        queued
            .iter()
            .all(|&(slot, queued_moving)| match map.residence(slot) {
                Residence::Owned(owner) => owner == home,
                Residence::Moving { to, .. } => queued_moving && to == home,
                Residence::Paused => false,
            })
    }

    /// EXEC of a transaction some of whose keys' slots started moving
    /// after they were queued: discarded on the node, nothing ran.
    pub(super) async fn abort_moved_exec(&mut self) -> Flow {
        if let Some((node, link)) = self.session.pinned.clone() {
            let discard = Request::from_args(&["DISCARD"]);
            if let Err(error) = self.call(&node, &link, vec![discard.raw], "DISCARD").await {
                tracing::debug!(?error, "DISCARD of a transaction whose slots moved failed");
            }
        }
        self.reply(crate::resp::Value::err(
            "EXECABORT Transaction discarded because the slot of a key it queued started moving to another shard (rampart); nothing ran, retry it",
        ))
        .await
    }

    /// Makes the map in force the one this client routes by; the one it
    /// routed by before is kept until what it routed is answered.
    async fn take_current_map(&mut self) -> Result<(), Flow> {
        let fresh = self
            .routing
            .current
            .as_ref()
            .is_some_and(|map| self.ctx.slots.is_current(map));
        if fresh {
            return Ok(());
        }
        if let Some(old) = self.routing.current.take() {
            // What was gathered by the old map goes now, so its position
            // is known.
            if self.flush().await == Flow::Stop {
                return Err(Flow::Stop);
            }
            self.routing.earlier.push((old, self.out.replies.queued()));
        }
        self.routing.current = Some(self.ctx.slots.current());
        Ok(())
    }

    /// A pause lasts until every request routed before it is answered:
    /// this client's included, so it sends and collects its own first.
    async fn wait_out_pause(&mut self) -> Result<(), Flow> {
        let mut changed = self.ctx.slots.watch();
        if self.flush().await == Flow::Stop || self.barrier().await == Flow::Stop {
            return Err(Flow::Stop);
        }
        let completed = self.out.replies.completed();
        self.routing.release(completed, false);
        let mut shutdown = self.ctx.shutdown.clone();
        let deadline = tokio::time::Instant::now() + crate::reshard::start::PAUSE_LIMIT * 2;
        tokio::select! {
            _ = changed.changed() => Ok(()),
            _ = shutdown.changed() => Err(Flow::Stop),
            // The pause ends by its own limit; this only guards against a
            // map that never changes again.
            _ = tokio::time::sleep_until(deadline) => Ok(()),
        }
    }

    /// With `[coordination]`, an instance starting routes no key until it
    /// has read the slot map from etcd (`reshard::shared`): a request
    /// waits for it as a write waits for a primary, then is refused.
    async fn wait_for_shared_map(&mut self) -> Result<(), Flow> {
        let mut changed = self.ctx.slots.watch();
        let hold = std::time::Duration::from_millis(self.ctx.config.failover.hold_writes_ms);
        let mut shutdown = self.ctx.shutdown.clone();
        tokio::select! {
            _ = changed.changed() => Ok(()),
            _ = shutdown.changed() => Err(Flow::Stop),
            _ = tokio::time::sleep(hold) => Err(self
                .refuse(
                    "TRYAGAIN rampart: this instance has not read the slot map from etcd yet (it may have changed since the configuration was written); nothing ran"
                        .into(),
                )
                .await),
        }
    }

    /// Moves the request's keys of moving slots to their target, slot by
    /// slot under each slot's gate.
    async fn move_first(
        &mut self,
        groups: Vec<(u16, usize, usize, Vec<Bytes>)>,
    ) -> Result<(), Flow> {
        let hold = std::time::Duration::from_millis(self.ctx.config.failover.hold_writes_ms);
        let deadline = tokio::time::Instant::now() + hold;
        for (slot, from, to, keys) in groups {
            let (source, target) = (self.ctx.shards.at(from), self.ctx.shards.at(to));
            let moved = loop {
                let mut conns = self.ctx.slots.gate(slot).lock().await;
                let moved = conns.move_keys(&source, &target, &keys, hold).await;
                drop(conns);
                // A primary failing mid-move: tried again, as a write is
                // held through a failover (every step of a move can be
                // repeated: until the source's copy is deleted it is the
                // key, and copying it again replaces the target's).
                match moved {
                    Err(ref e) if e.may_pass() && tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    moved => break moved,
                }
            };
            match moved {
                Ok(0) => {}
                Ok(n) => self.ctx.slots.count_moved(n, true),
                Err(e) => {
                    let error = format!(
                        "TRYAGAIN rampart: slot {slot} is moving from shard '{}' to '{}' and its keys could not be moved first: {e}",
                        source.name(),
                        target.name()
                    );
                    return Err(self.refuse(error).await);
                }
            }
        }
        Ok(())
    }

    /// Whether `key`'s slot is moving, by the map this client routes by.
    pub(super) fn in_moving_slot(&self, key: &[u8]) -> bool {
        let map = self.routing.map();
        map.moving().is_some() && matches!(map.residence(slot(key)), Residence::Moving { .. })
    }

    /// A blocked command on a paused slot would otherwise wait on the
    /// source for a key that is about to live on the target: it is
    /// unblocked there and sent again after the pause (see
    /// `Connection::reissue_blocked`).
    pub(super) async fn unblock_if_paused(&mut self) -> Flow {
        let map = self.ctx.slots.current();
        let completed = self.out.replies.completed();
        let paused = self
            .blocked
            .iter()
            .find(|b| {
                b.position > completed
                    && keyspecs::keys(&b.request).is_some_and(|keys| {
                        keys.iter()
                            .any(|key| map.residence(slot(key)) == Residence::Paused)
                    })
            })
            .cloned();
        drop(map);
        let Some(blocked) = paused else {
            return Flow::Continue;
        };
        if super::reissue::may_reissue(&blocked.request) {
            return self.reissue_blocked(blocked).await;
        }
        self.unblock_own(false).await;
        Flow::Continue
    }
}
