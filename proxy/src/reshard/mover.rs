//! The background side of a move: the pause at its start, the walk over
//! the source that moves every key of the moving slots, and the flip of
//! ownership at its end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use super::start::{StartError, PAUSE_LIMIT};
use super::state::{MapStore, SavedMap};
use super::step::{self, MoveError};
use super::Slots;
use crate::backend::control::scan_page;
use crate::observe::events::Events;
use crate::shard::slots::{ranges_text, slot, Moving, SlotMap};
use crate::shard::Shard;

/// Starts moves and runs them; one per Rampart.
pub struct Resharder {
    pub slots: Arc<Slots>,
    pub shards: Arc<crate::shard::Shards>,
    pub store: MapStore,
    pub events: Arc<Events>,
    /// How long a move waits for a primary (`failover.hold_writes_ms`).
    pub hold: Duration,
    pub shutdown: watch::Receiver<bool>,
    /// Held from the checks before a change of the slot map (a move
    /// starting, a shard removed) to the change: two operators' requests
    /// at once cannot both pass "no move in progress", nor a shard be
    /// removed as a move to it starts.
    pub changing: tokio::sync::Mutex<()>,
    /// With `[coordination]`: the map lives in etcd (see
    /// [`super::shared`]).
    pub shared: Option<Arc<super::shared::Shared>>,
}

/// Keys asked for per `SCAN` step.
const SCAN_COUNT: &str = "1000";

/// Keys moved at once by the walk (each holding its slot's gate).
const BATCH: usize = 64;

impl Resharder {
    fn names(&self) -> Vec<String> {
        super::shard_names(&self.shards)
    }

    fn save(&self, map: &SlotMap) -> std::io::Result<()> {
        let names = self.names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.store.save(&SavedMap::of(map, &names))
    }

    /// Starts moving: saves the move, pauses its slots, waits until every
    /// request routed by the map before is answered, then lets commands
    /// and the walk move keys.
    pub async fn start(&self, moving: Moving) -> Result<(), StartError> {
        if let Some(shared) = &self.shared {
            return shared.start(moving).await;
        }
        let before = self.slots.current();
        let paused = before.with_moving(Some(Moving {
            paused: true,
            ..moving.clone()
        }));
        self.save(&paused)
            .map_err(|e| StartError::Save(e.to_string()))?;
        let old = self.slots.publish(paused);
        drop(before);
        let deadline = Instant::now() + PAUSE_LIMIT;
        // Every holder of the old map (clients that routed by it and
        // whose replies are not in yet) lets go of it; this task holds one.
        while Arc::strong_count(&old) > 1 {
            if Instant::now() > deadline {
                let _ = self.save(&old);
                self.slots.publish(old.with_moving(None));
                return Err(StartError::Busy);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.slots.publish(old.with_moving(Some(Moving {
            paused: false,
            ..moving
        })));
        Ok(())
    }

    /// Runs the move in force, if any, to its end; then waits for the
    /// next. Returns at shutdown.
    pub async fn run(self: Arc<Self>) {
        let mut changed = self.slots.watch();
        let mut shutdown = self.shutdown.clone();
        loop {
            let moving = self.slots.load().moving().cloned();
            let walks = self.shared.as_ref().is_none_or(|s| s.walks());
            match moving {
                Some(moving) if !moving.paused && walks => {
                    if self.walk(&moving, &mut shutdown).await {
                        self.finish(&moving).await;
                    } else {
                        return;
                    }
                }
                _ => {
                    if let Some(shared) = &self.shared {
                        shared.call_off_stale().await;
                    }
                    // With other instances, a walker may die: looked at
                    // again every second.
                    tokio::select! {
                        result = changed.changed() => if result.is_err() {
                            return;
                        },
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }

    /// Walks the source until a whole pass finds no key of the moving
    /// slots. False if Rampart is shutting down first.
    async fn walk(&self, moving: &Moving, shutdown: &mut watch::Receiver<bool>) -> bool {
        let (from, to) = (self.shards.at(moving.from), self.shards.at(moving.to));
        self.slots.update(|p| {
            if p.started.is_none() {
                *p = super::Progress {
                    started: Some(Instant::now()),
                    rate: p.rate,
                    ..Default::default()
                };
            }
        });
        self.events.record(
            from.name(),
            "slots-moving",
            None,
            0,
            format!(
                "moving slots {} from shard '{}' to '{}'",
                ranges_text(&moving.ranges),
                from.name(),
                to.name()
            ),
        );
        let rate = self.slots.progress().rate;
        let started = Instant::now();
        let mut walked = 0u64;
        loop {
            if *shutdown.borrow() {
                return false;
            }
            if !self.still_moving(moving) {
                // Ended elsewhere (another instance's walk), or called off.
                return true;
            }
            match self
                .pass(moving, &from, &to, rate, started, &mut walked)
                .await
            {
                Ok(0) => return true,
                Ok(_) => self.slots.update(|p| p.passes += 1),
                Err(e) => {
                    tracing::warn!(error = %e, "moving slots: retrying in 1 s");
                    self.slots.update(|p| p.last_error = Some(e.to_string()));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return false,
                    }
                }
            }
        }
    }

    /// One `SCAN` of the source's primary, moving the keys of the moving
    /// slots it finds; returns how many it found (moved, or gone by the
    /// time they were read).
    async fn pass(
        &self,
        moving: &Moving,
        from: &Arc<Shard>,
        to: &Arc<Shard>,
        rate: u64,
        started: Instant,
        walked: &mut u64,
    ) -> Result<u64, MoveError> {
        let source = step::primary(from, self.hold).await?;
        let mut control = source
            .pool
            .control()
            .await
            .map_err(|e| MoveError::Unreachable(format!("{}: {e}", source.addr)))?;
        let mut cursor = "0".to_string();
        let mut found = 0u64;
        loop {
            let reply = control
                .call(
                    &["SCAN", &cursor, "COUNT", SCAN_COUNT],
                    Duration::from_secs(5),
                )
                .await
                .map_err(|e| MoveError::Unreachable(format!("{}: {e}", source.addr)))?;
            let (next, page) = scan_page(&reply).ok_or_else(|| {
                MoveError::Unreachable(format!("{}: SCAN answered {reply:?}", source.addr))
            })?;
            let batch: Vec<(u16, Bytes)> = page
                .into_iter()
                .map(|key| (slot(&key), key))
                .filter(|(slot, _)| moving.contains(*slot))
                .collect();
            found += batch.len() as u64;
            if !self.still_moving(moving) {
                return Ok(0);
            }
            // In small batches: a command touching a key of a slot the
            // walk holds waits for the batch, so batches stay short.
            for chunk in batch.chunks(BATCH) {
                let moved = self.move_page(from, to, chunk).await?;
                self.slots.count_moved(moved, false);
                *walked += chunk.len() as u64;
                if rate > 0 {
                    let due = started + Duration::from_secs_f64(*walked as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            // The source failed over: its successor's cursor is another.
            if !step::primary(from, self.hold)
                .await
                .is_ok_and(|p| Arc::ptr_eq(&p, &source))
            {
                return Err(MoveError::Unreachable(format!(
                    "shard '{}' changed primary during the walk",
                    from.name()
                )));
            }
            if next == "0" {
                return Ok(found);
            }
            cursor = next;
        }
    }

    /// Moves a page of keys at once, holding every gate they need (taken
    /// in order: a client holds one gate at a time, so this cannot wait
    /// on a client that waits on it).
    async fn move_page(
        &self,
        from: &Shard,
        to: &Shard,
        batch: &[(u16, Bytes)],
    ) -> Result<usize, MoveError> {
        let mut gates: Vec<usize> = batch
            .iter()
            .map(|(slot, _)| usize::from(*slot) % super::GATES)
            .collect();
        gates.sort_unstable();
        gates.dedup();
        let mut held = Vec::with_capacity(gates.len());
        for gate in gates {
            held.push(self.slots.gates[gate].lock().await);
        }
        let keys: Vec<Bytes> = batch.iter().map(|(_, key)| key.clone()).collect();
        held[0].move_keys(from, to, &keys, self.hold).await
    }

    /// Whether `moving` is still the move in force, under way: with other
    /// instances, another walker may have ended it, and a walk must not
    /// go on into a later move of the same slots.
    fn still_moving(&self, moving: &Moving) -> bool {
        self.slots.load().moving().is_some_and(|m| {
            !m.paused && m.ranges == moving.ranges && m.from == moving.from && m.to == moving.to
        })
    }

    /// The target owns the slots: saved, then in force.
    async fn finish(&self, moving: &Moving) {
        if !self.still_moving(moving) {
            return;
        }
        if let Some(shared) = &self.shared {
            // Written to etcd, and put in force as every record is.
            if !shared.finish().await {
                return;
            }
        } else {
            let done = self.slots.load().with_move_done();
            if let Err(e) = self.save(&done) {
                // Kept moving (commands still find every key, on the
                // target) until the map can be saved: a restart must not
                // route by the map before the move.
                tracing::error!(error = %e, "the slot map after a move could not be saved; retrying");
                self.slots
                    .update(|p| p.last_error = Some(format!("saving the slot map: {e}")));
                return;
            }
            super::put_in_force(&self.slots, &self.shards, done);
        }
        let progress = self.slots.progress();
        self.slots.update(|p| p.started = None);
        let (from, to) = (
            self.shards.at(moving.from).name().to_string(),
            self.shards.at(moving.to).name().to_string(),
        );
        self.events.record(
            &from,
            "slots-moved",
            None,
            0,
            format!(
                "slots {} moved from shard '{from}' to '{to}': {} keys in {:.1} s ({} by commands that touched them)",
                ranges_text(&moving.ranges),
                progress.moved + progress.moved_by_clients,
                progress.seconds,
                progress.moved_by_clients
            ),
        );
    }
}
