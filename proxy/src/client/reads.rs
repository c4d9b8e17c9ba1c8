//! What the client has seen of each shard, so that its reads from
//! replicas never show it less (the shard's `read_consistency`; the rules
//! are in `route::session`). The request path asks for the token before a
//! read is placed and tells it where every reply will come from.

use std::sync::Arc;

use crate::config::ReadConsistency;
use crate::route::session::{Progress, ReadToken};
use crate::shard::{Shard, Shards};
use crate::topology::Node;

/// One token per shard (by index), made when first needed.
#[derive(Default)]
pub(super) struct ReadTokens {
    tokens: Vec<Option<ReadToken>>,
}

impl ReadTokens {
    /// The token for `shard`, brought up to date with the client's replies
    /// (`progress`).
    pub(super) fn token(
        &mut self,
        shards: &Shards,
        shard: &Arc<Shard>,
        progress: Progress,
    ) -> ReadToken {
        let token = self.entry(shards, shard);
        token.settle(&shard.topology, progress);
        token.clone()
    }

    /// The reply at `position` in the client's queue comes from `replica`,
    /// or (`None`) from the primary or something else that may show more
    /// than any replica holds.
    pub(super) fn saw(
        &mut self,
        shards: &Shards,
        shard: &Arc<Shard>,
        replica: Option<&Node>,
        position: u64,
    ) {
        if shard.topology.positions.consistency() == ReadConsistency::Eventual {
            return;
        }
        self.entry(shards, shard)
            .sent(&shard.topology, replica, position);
    }

    /// A reply combined from several shards' primaries or replicas: what it
    /// shows is beyond every floor.
    pub(super) fn saw_everywhere(&mut self, shards: &Shards, position: u64) {
        let shards = shards.all();
        for (index, token) in self.tokens.iter_mut().enumerate() {
            if let (Some(token), Some(shard)) = (token, shards.get(index)) {
                token.sent(&shard.topology, None, position);
            }
        }
    }

    fn entry(&mut self, shards: &Shards, shard: &Arc<Shard>) -> &mut ReadToken {
        let index = shards.index_of(shard);
        if self.tokens.len() <= index {
            self.tokens.resize(index + 1, None);
        }
        self.tokens[index].get_or_insert_with(|| ReadToken::new(&shard.topology))
    }
}
