//! What the client has seen of each shard, so that its reads from
//! replicas never show it less (the shard's `read_consistency`; the rules
//! are in `route::session`). The request path asks for the token before a
//! read is placed and tells it where every reply will come from.

use std::sync::Arc;

use super::connection::Connection;
use crate::config::ReadConsistency;
use crate::route::session::{Progress, ReadToken};
use crate::shard::Shard;
use crate::topology::Node;

impl Connection {
    /// The index of `shard`.
    fn slot_of(&self, shard: &Arc<Shard>) -> usize {
        if self.ctx.shards.len() == 1 {
            return 0;
        }
        self.ctx
            .shards
            .all()
            .iter()
            .position(|s| Arc::ptr_eq(s, shard))
            .unwrap_or(0)
    }

    /// The client's token for the request's shard, brought up to date.
    pub(super) fn read_token(&mut self) -> ReadToken {
        let shard = self.shard.clone();
        self.read_token_for(&shard)
    }

    /// The client's token for `shard`, brought up to date.
    pub(super) fn read_token_for(&mut self, shard: &Arc<Shard>) -> ReadToken {
        let slot = self.slot_of(shard);
        let progress = Progress {
            completed: self.replies.completed(),
            caught_up: self.replies.caught_up(),
        };
        let shard = &shard.topology;
        if self.reads.len() <= slot {
            self.reads.resize(self.ctx.shards.len(), None);
        }
        let token = self.reads[slot].get_or_insert_with(|| ReadToken::new(shard));
        token.settle(shard, progress);
        token.clone()
    }

    /// The reply to the request just handled comes from `replica`, or
    /// (`None`) from the primary or something else that may show more than
    /// any replica holds.
    pub(super) fn saw(&mut self, replica: Option<&Node>) {
        if self.shard.topology.positions.consistency() == ReadConsistency::Eventual {
            return;
        }
        let slot = self.slot_of(&self.shard);
        let position = self.replies.queued() + u64::from(self.open.is_some());
        let shard = &self.shard.topology;
        if self.reads.len() <= slot {
            self.reads.resize(self.ctx.shards.len(), None);
        }
        self.reads[slot]
            .get_or_insert_with(|| ReadToken::new(shard))
            .sent(shard, replica, position);
    }

    /// A reply combined from several shards' primaries or replicas: what it
    /// shows is beyond every floor.
    pub(super) fn saw_everywhere(&mut self) {
        let position = self.replies.queued() + u64::from(self.open.is_some());
        let shards = self.ctx.shards.all();
        for (slot, token) in self.reads.iter_mut().enumerate() {
            if let (Some(token), Some(shard)) = (token, shards.get(slot)) {
                token.sent(&shard.topology, None, position);
            }
        }
    }
}
