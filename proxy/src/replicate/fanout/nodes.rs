//! Each node's standing with the log: what its stream reports (connected,
//! answered, disconnected, diverged), when it falls out of sync and is
//! copied afresh, an operator's `trust`, and its lag.

use std::time::Instant;

use bytes::Bytes;

use super::log::{Kind, Snapshot};
use super::*;

impl Fanout {
    /// Node `index` has answered every entry below `upto`.
    pub(super) fn acked(&self, index: usize, upto: u64) {
        let mut state = self.lock();
        let cursor = &mut state.nodes[index];
        cursor.acked = cursor.acked.max(upto);
        self.shard.nodes[index].set_applied(cursor.acked);
        let caught_up = cursor.acked >= cursor.catch_up_to;
        if self.node_state(index) == SyncState::CatchingUp && caught_up {
            self.shard.nodes[index].set_sync(SyncState::InSync);
            self.in_sync.notify_waiters();
            drop(state);
            self.event(
                "caught-up",
                index,
                "ran the writes it missed; serving again",
            );
            self.shard.refresh();
            let mut state = self.lock();
            self.trim(&mut state);
            return;
        }
        self.trim(&mut state);
    }

    /// A resync of node `index` reached its end in the log.
    pub(super) fn synced(&self, index: usize) {
        let before = self.shard.nodes[index].set_sync(SyncState::InSync);
        self.in_sync.notify_waiters();
        if before == SyncState::Resyncing {
            self.event(
                "resynced",
                index,
                "copied from a node in sync; serving again",
            );
            self.shard.refresh();
        }
    }

    /// Node `index`'s stream connected; `run_id` is the node's.
    pub(super) fn connected(&self, index: usize, run_id: String) -> Start {
        let node = &self.shard.nodes[index];
        let (restarted, first_seen) = {
            let mut state = self.lock();
            let cursor = &mut state.nodes[index];
            let known = cursor.run_id.replace(run_id.clone());
            (
                known.as_ref().is_some_and(|old| *old != run_id),
                known.as_ref() != Some(&run_id),
            )
        };
        if first_seen {
            self.remember(|r| {
                r.run_ids.insert(node.addr.clone(), run_id);
            });
        }
        if restarted && node.sync() != SyncState::Stale {
            node.set_sync(SyncState::Stale);
            self.event(
                "node-stale",
                index,
                "the node restarted (new run_id): what it kept may be older than what it acknowledged",
            );
        }
        let mut state = self.lock();
        let next = state.next;
        let cursor = &mut state.nodes[index];
        if node.sync() == SyncState::Stale {
            node.set_sync(SyncState::Resyncing);
            cursor.acked = next;
            cursor.sent = next;
            cursor.catch_up_to = next;
            // Not read from until the copy is done (it is not in sync).
            node.set_applied(next);
            return Start::Resync;
        }
        cursor.sent = cursor.acked;
        cursor.catch_up_to = next;
        let state_now = if cursor.acked >= next {
            SyncState::InSync
        } else {
            SyncState::CatchingUp
        };
        drop(state);
        node.set_sync(state_now);
        if state_now == SyncState::InSync {
            self.in_sync.notify_waiters();
        }
        self.shard.refresh();
        Start::Resume
    }

    /// Node `index`'s stream lost its connection. `unanswered` says whether
    /// writes were in flight on it.
    pub(super) fn disconnected(&self, index: usize, unanswered: bool, reason: &str) {
        let node = &self.shard.nodes[index];
        let before = node.sync();
        let after = match before {
            SyncState::Stale | SyncState::Resyncing => SyncState::Stale,
            _ if unanswered => SyncState::Stale,
            _ => SyncState::Down,
        };
        node.set_sync(after);
        if after == SyncState::Stale && before != SyncState::Stale {
            let why = if before == SyncState::Resyncing {
                format!("resync interrupted ({reason})")
            } else {
                format!("connection lost with writes unanswered ({reason}): they may or may not have run")
            };
            self.event("node-stale", index, why);
        } else if before != after {
            self.event(
                "node-down",
                index,
                format!("connection lost ({reason}); writes wait in its backlog"),
            );
        }
        self.shard.refresh();
        let mut state = self.lock();
        self.trim(&mut state);
    }

    /// Node `index` answered a write with a node-state error where the
    /// primary did not (or the other way round): it missed that write, or
    /// ran one the others did not.
    pub(super) fn diverged(&self, index: usize) {
        let node = &self.shard.nodes[index];
        if !matches!(node.sync(), SyncState::InSync | SyncState::CatchingUp) {
            return;
        }
        node.set_sync(SyncState::Stale);
        self.event(
            "node-stale",
            index,
            "a write failed on this node alone, or on it alone succeeded (READONLY, OOM, NOSCRIPT ...): it no longer holds what the others hold",
        );
        self.shard.refresh();
        // Its stream notices, reconnects and has it copied afresh.
        self.wake[index].notify_one();
    }

    /// Node `index` answers but cannot take part (a Redis replica): it is
    /// marked stale, to be copied once it can.
    pub(super) fn unfit(&self, index: usize, why: &str) {
        if self.shard.nodes[index].set_sync(SyncState::Stale) != SyncState::Stale {
            self.event("node-stale", index, why.to_string());
            self.shard.refresh();
            let mut state = self.lock();
            self.trim(&mut state);
        }
    }

    /// Node `index`'s resync failed before it began copying.
    pub(super) fn resync_failed(&self, index: usize, why: &str) {
        if self.shard.nodes[index].set_sync(SyncState::Stale) == SyncState::Resyncing {
            self.event("resync-failed", index, why.to_string());
        }
        self.wake[index].notify_one();
        let mut state = self.lock();
        self.trim(&mut state);
    }

    /// Marks a node stale so that it is copied afresh (an operator's call,
    /// when a node's data is known to be wrong). False if it is not in
    /// this shard.
    pub fn force_resync(&self, addr: &str) -> bool {
        let Some(index) = self.shard.nodes.iter().position(|n| n.addr == addr) else {
            return false;
        };
        let before = self.shard.nodes[index].set_sync(SyncState::Stale);
        if before != SyncState::Stale {
            self.event("node-stale", index, "resync requested by an operator");
        }
        self.shard.refresh();
        // Its stream notices at its next wake-up and reconnects.
        self.wake[index].notify_one();
        true
    }

    /// The operator's way out when no node is known to have every write
    /// (the last primary is gone after a crash, say): `addr` is declared in
    /// sync and made primary, and the others are copied from it.
    pub(super) fn trust(&self, addr: &str) -> Result<String, OpError> {
        let index = self
            .shard
            .nodes
            .iter()
            .position(|n| n.addr == addr)
            .ok_or_else(|| {
                OpError::NotFound(format!("no node {addr} in shard '{}'", self.shard.name))
            })?;
        let node = &self.shard.nodes[index];
        if !matches!(node.sync(), SyncState::Stale | SyncState::Down)
            || node.health() != crate::topology::Health::Up
        {
            return Err(OpError::Conflict(format!(
                "{addr} must answer before it can be trusted"
            )));
        }
        // Its stream reconnects and resumes from the head of the log.
        {
            let mut state = self.lock();
            let next = state.next;
            let cursor = &mut state.nodes[index];
            cursor.acked = next;
            cursor.sent = next;
        }
        node.set_applied(self.shard.positions.log_head());
        node.set_sync(SyncState::Down);
        self.wake[index].notify_one();
        // Whatever the others hold is measured against this node now.
        for (i, other) in self.shard.nodes.iter().enumerate() {
            if i != index && other.sync() == SyncState::Down {
                other.set_sync(SyncState::Stale);
            }
        }
        {
            self.event(
                "trusted",
                index,
                "declared in sync by an operator (no node was known to have every write); the others will be copied from it",
            );
        }
        Ok(format!(
            "{addr} is trusted; it becomes primary once its connection is up"
        ))
    }

    /// A node in sync to copy from, the primary if it is.
    pub(super) fn source_for(&self, target: usize) -> Option<usize> {
        let fit = |i: usize| i != target && self.node_state(i) == SyncState::InSync;
        self.shard
            .primary_index()
            .filter(|&p| fit(p))
            .or_else(|| (0..self.shard.nodes.len()).find(|&i| fit(i)))
    }

    /// Appends a resync step; false if the target is no longer resyncing.
    pub(super) async fn append_snapshot(
        &self,
        source: usize,
        target: usize,
        keys: Vec<Bytes>,
    ) -> bool {
        if self.node_state(target) != SyncState::Resyncing {
            return false;
        }
        self.append(Kind::Snapshot(Snapshot::new(source, target, keys)))
            .await;
        true
    }
}

impl Fanout {
    /// Each node's distance behind the head of the log: the bytes it has
    /// not answered, and how long ago the oldest of them was appended.
    pub(super) fn update_lag(&self, now: Instant) {
        let state = self.lock();
        for (index, cursor) in state.nodes.iter().enumerate() {
            let node = &self.shard.nodes[index];
            let oldest = cursor
                .acked
                .checked_sub(state.base)
                .and_then(|i| state.entries.get(i as usize))
                .filter(|_| holds_place(node.sync()));
            match oldest {
                Some(entry) => node.set_lag(
                    state.appended - entry.offset,
                    now.duration_since(entry.at).as_millis() as u64,
                ),
                None => node.set_lag(0, 0),
            }
        }
    }
}
