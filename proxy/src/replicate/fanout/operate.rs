//! What an operator (or the start and the end of a run) asks of a fan-out
//! shard's writer: choosing the first primary, a switchover, and closing
//! the log once clients have been answered.

use super::*;

impl Fanout {
    /// At start-up: waits (a little) for every node's stream to connect,
    /// then makes the first node listed that is in sync the primary, so the
    /// choice does not depend on which connection was quickest.
    pub async fn pick_first_primary(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline
            && self.shard.nodes.iter().any(|n| n.sync() == SyncState::Down)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.shard.clear_primary();
    }

    /// A clean stop: waits (until `deadline`) for the connected nodes to
    /// run every write, then records which nodes have, so the next start
    /// trusts exactly those.
    pub async fn close(&self, deadline: tokio::time::Instant) {
        let caught_up = |i: usize, state: &State| state.nodes[i].acked >= state.next;
        loop {
            let waiting = {
                let state = self.lock();
                (0..self.shard.nodes.len()).any(|i| self.may_answer(i) && !caught_up(i, &state))
            };
            if !waiting || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let in_sync = {
            let state = self.lock();
            (0..self.shard.nodes.len())
                .filter(|&i| self.node_state(i) == SyncState::InSync && caught_up(i, &state))
                .map(|i| self.shard.nodes[i].addr.clone())
                .collect::<Vec<_>>()
        };
        let primary = self
            .shard
            .primary_index()
            .map(|i| self.shard.nodes[i].addr.clone());
        tracing::info!(shard = %self.shard.name, ?in_sync, "fan-out log closed");
        self.closed.send_replace(true);
        self.remember(|record| {
            record.running = false;
            record.primary = primary;
            record.run_ids.retain(|addr, _| in_sync.contains(addr));
            record.in_sync = in_sync;
        });
    }

    /// Makes another node in sync the primary (nothing moves: every node
    /// in sync has every write). `None` picks the first other one.
    pub fn switchover(&self, target: Option<String>) -> Result<String, OpError> {
        let current = self.shard.primary_index();
        let fit = |i: &usize| Some(*i) != current && self.node_state(*i) == SyncState::InSync;
        let none_in_sync =
            !(0..self.shard.nodes.len()).any(|i| self.node_state(i) == SyncState::InSync);
        if let (true, Some(addr)) = (none_in_sync, &target) {
            return self.trust(addr);
        }
        let chosen = match &target {
            Some(addr) => {
                let index = self
                    .shard
                    .nodes
                    .iter()
                    .position(|n| n.addr == *addr)
                    .ok_or_else(|| {
                        OpError::NotFound(format!("no node {addr} in shard '{}'", self.shard.name))
                    })?;
                if !fit(&index) {
                    return Err(OpError::Conflict(format!(
                        "{addr} cannot become primary: it is {} ({})",
                        if Some(index) == current {
                            "the primary already"
                        } else {
                            "not in sync"
                        },
                        self.node_state(index).name()
                    )));
                }
                index
            }
            None => (0..self.shard.nodes.len())
                .find(fit)
                .ok_or_else(|| OpError::Conflict("no other node is in sync".into()))?,
        };
        let node = &self.shard.nodes[chosen];
        self.shard.set_primary(node, self.shard.epoch() + 1);
        Ok(node.addr.clone())
    }
}
