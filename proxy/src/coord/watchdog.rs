//! The watchdog: a timer of its own, never delayed by etcd requests (a
//! coordination round waits a whole request timeout while etcd is silent),
//! that says when a shard's writes are held because this instance's view
//! may be too old, and asks the other instances for failsafe.
//!
//! The hold itself needs no timer: every shard's write window
//! ([`crate::replicate::window`]) is checked where writes are routed and
//! acknowledged. The watchdog turns the window into the `view_stale` flag,
//! the events and the wake-up of writes that wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Coordination;
use crate::replicate::window::Admit;

impl Coordination {
    pub(super) async fn watchdog(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let tick = (self.poll / 2).clamp(Duration::from_millis(5), Duration::from_millis(50));
        let mut last_failsafe: Option<Instant> = None;
        // Until etcd was read once, writes are held without a word: that
        // is starting, not losing the view.
        while self.view().read_at.is_none() {
            for shard in &self.shards() {
                shard.set_view_stale(true);
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => return,
            }
        }
        for shard in &self.shards() {
            shard.set_view_stale(false);
        }
        loop {
            self.watch_once(&mut last_failsafe).await;
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn watch_once(&self, last_failsafe: &mut Option<Instant>) {
        let why = self.stale_reason();
        if why.is_none() {
            self.view().nobody_reads_etcd = false;
            for shard in &self.shards() {
                shard.durability.window.failsafe_until(None);
            }
        } else if last_failsafe.is_none_or(|t| t.elapsed() >= self.poll) {
            // The others are asked even with failsafe off: whether anyone
            // can decide a failover also tells the controllers whether to
            // keep the replicas' copies safe themselves. A grant counts
            // from when the question was asked: each answer is about a
            // moment no earlier.
            let asked = Instant::now();
            *last_failsafe = Some(asked);
            let safe = self.failsafe().await;
            self.view().nobody_reads_etcd = safe.is_some();
            let safe = safe.filter(|_| self.failsafe).unwrap_or_default();
            for shard in &self.shards() {
                let until = safe
                    .contains(&shard.name)
                    .then_some(asked + self.max_view_age);
                shard.durability.window.failsafe_until(until);
            }
        }
        let failsafe = why.is_some()
            && self
                .shards()
                .iter()
                .any(|s| s.durability.window.admits() == Admit::Failsafe);
        let was = std::mem::replace(&mut self.view().failsafe_active, failsafe);
        if failsafe && !was {
            self.events.record(
                "-",
                "failsafe",
                None,
                0,
                "etcd cannot be read, but every known instance answers that it cannot read it either and routes by the same epochs: nobody can decide a failover, so writes go on (never to a primary that restarted or lost data)",
            );
        }
        for shard in &self.shards() {
            let held = match shard.durability.window.admits() {
                Admit::Open => false,
                Admit::Failsafe => shard.primary_node().is_some_and(|p| p.is_stale()),
                Admit::Closed => true,
            };
            if shard.set_view_stale(held) {
                let detail = match (held, &why) {
                    (false, _) => "etcd read again: writes flow".into(),
                    (true, Some(why)) if shard.durability.window.admits() == Admit::Failsafe => format!("{why}, and the primary restarted or lost data: failsafe never writes to it; writes are held"),
                    (true, Some(why)) => format!("{why}: writes are held until it is read again"),
                    (true, None) => "writes are held until etcd is read again".into(),
                };
                self.events.record(
                    &shard.name,
                    if held { "view-stale" } else { "view-fresh" },
                    None,
                    shard.epoch(),
                    detail,
                );
            }
        }
    }
}
