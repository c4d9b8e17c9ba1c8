//! The catch-up service.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::saved::Saved;
use super::{key, Change, Settings, Shared};
use crate::topology::{Health, Topology};

/// Each node's `run_id` as last seen (`None`: not known yet), by
/// [`key`].
type Seen = HashMap<usize, Option<String>>;

/// The catch-up service: a node that joined after a change, restarted
/// since one (its `run_id` changed), or missed one is given the whole
/// ledger through its queue, so nothing copied later overtakes it. With a
/// `state_dir` it also keeps the ledger there, with the nodes holding it.
pub async fn catch_up(
    settings: Arc<Settings>,
    topology: Arc<Topology>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let shared = settings.shared.clone();
    let mut seen = seen_before(&shared, &topology);
    let mut kept = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.changed.notified() => {}
            _ = shutdown.changed() => return,
        }
        let empty = settings.ledger_is_empty();
        for (shard, node) in topology.nodes() {
            if node.is_retired() {
                continue;
            }
            let run_id = node.run_id();
            let before = seen.get(&key(&node)).cloned();
            // A node not probed yet keeps the run_id it was last seen with.
            if run_id.is_some() || before.is_none() {
                seen.insert(key(&node), run_id.clone());
            }
            if empty {
                continue;
            }
            let restarted =
                matches!((before.clone().flatten(), &run_id), (Some(a), Some(b)) if &a != b);
            let due = shared
                .behind
                .get(&key(&node))
                .is_some_and(|at| Instant::now() >= *at && node.health() == Health::Up);
            let why = match (before.is_none(), restarted, due) {
                (true, _, _) => "it joined after them",
                (_, true, _) => "it restarted",
                (_, _, true) => "it missed a copy",
                _ => continue,
            };
            shared.behind.remove(&key(&node));
            settings.enqueue(&(shard, node), Change::CatchUp { why });
        }
        if !empty && shared.store.keeps() {
            keep(&shared, &topology, &seen, &mut kept).await;
        }
    }
}

/// The nodes the kept ledger lists, as holding it in the process they
/// then ran.
fn seen_before(shared: &Shared, topology: &Topology) -> Seen {
    let saved = std::mem::take(&mut *shared.saved_nodes.lock().unwrap_or_else(|p| p.into_inner()));
    let mut seen = Seen::new();
    for (_, node) in topology.nodes() {
        if let Some(run_id) = saved.get(&node.addr) {
            seen.insert(key(&node), Some(run_id.clone()));
        }
    }
    seen
}

/// Keeps the ledger, with the nodes that hold all of it (no change queued
/// for them, none missed), when either changed since it was last kept.
/// Awaited, so that an older state can never be written after a newer
/// one.
async fn keep(
    shared: &Arc<Shared>,
    topology: &Topology,
    seen: &Seen,
    kept: &mut Option<(u64, BTreeMap<String, String>)>,
) {
    let mut holding = BTreeMap::new();
    for (_, node) in topology.nodes() {
        let k = key(&node);
        let busy = shared.pending.get(&k).is_some_and(|n| *n > 0);
        if node.is_retired() || busy || shared.behind.contains_key(&k) {
            continue;
        }
        if let Some(Some(run_id)) = seen.get(&k) {
            holding.insert(node.addr.clone(), run_id.clone());
        }
    }
    let (now, saved) = {
        let ledger = shared.ledger();
        let now = (ledger.changes, holding);
        if kept.as_ref() == Some(&now) {
            return;
        }
        let saved = Saved::of(&ledger, now.1.clone());
        (now, saved)
    };
    let writer = shared.clone();
    let written = tokio::task::spawn_blocking(move || writer.store.save(&saved)).await;
    match written {
        Ok(Ok(())) => *kept = Some(now),
        Ok(Err(error)) => {
            tracing::warn!(%error, "could not keep the ACL users and settings changed through Rampart in state_dir; trying again");
        }
        Err(error) => tracing::warn!(%error, "keeping the ACL users and settings failed"),
    }
}
