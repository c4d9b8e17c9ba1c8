//! The catch-up service.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{key, Change, Settings};
use crate::topology::{Health, Topology};

/// The catch-up service: a node that joined after a change, restarted
/// since one (its `run_id` changed), or missed one is given the whole
/// ledger through its queue, so nothing copied later overtakes it.
pub async fn catch_up(
    settings: Arc<Settings>,
    topology: Arc<Topology>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut seen: HashMap<usize, Option<String>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let empty = settings.ledger_is_empty();
        for (shard, node) in topology.nodes() {
            if node.is_retired() {
                continue;
            }
            let run_id = node.run_id();
            let before = seen.insert(key(&node), run_id.clone());
            if empty {
                continue;
            }
            let restarted =
                matches!((before.clone().flatten(), &run_id), (Some(a), Some(b)) if &a != b);
            let due = settings
                .shared
                .behind
                .get(&key(&node))
                .is_some_and(|at| Instant::now() >= *at && node.health() == Health::Up);
            let why = match (before.is_none(), restarted, due) {
                (true, _, _) => "it joined after them",
                (_, true, _) => "it restarted",
                (_, _, true) => "it missed a copy",
                _ => continue,
            };
            settings.shared.behind.remove(&key(&node));
            let (epoch, shard) = (shard.epoch(), shard.name.clone());
            settings.enqueue(&node, Change::CatchUp { shard, epoch, why });
        }
    }
}
