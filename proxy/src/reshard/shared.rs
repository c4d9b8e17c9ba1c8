//! Slot moves with `[coordination]`: every instance routes by one slot map,
//! kept in etcd (`coord::slot_record` carries it), and a move started on
//! any instance (its **walker**) goes through the same three maps as alone
//! (see [`crate::reshard`]), each written to etcd first:
//!
//! 1. **Paused**: every instance puts the map in force, waits until every
//!    request it routed by the maps before is answered, and acknowledges
//!    the record in its published view. The walker waits for every
//!    registered member, live or not: one cut off from etcd may still
//!    route by the map before, so until it acknowledges nothing moves.
//!    If one has not within [`PAUSE_LIMIT`] (and a second for the polls),
//!    the walker writes the map before back and the move is refused,
//!    naming who did not answer: nothing moved. A pause whose walker died
//!    is called off the same way by any instance, once it is that old.
//! 2. **Moving**: every instance moves a key before running a command on
//!    it; keys move with `MIGRATE ... COPY REPLACE` run by the source, so
//!    two instances moving one key cannot put an old copy over a newer
//!    write (see [`super::keys`]). The walker walks the source; if its
//!    lease key is gone (it died), every instance walks (moving a key
//!    twice is harmless, see above).
//! 3. **Done**: the walker that finds the source empty writes the map
//!    with the target owning the slots.
//!
//! An instance cut off from etcd mid-move routes by the map it
//! acknowledged: paused slots wait, moving ones move keys as above (which
//! stays right after the move is done: nothing writes the source's copy of
//! a moving slot), so nothing it does depends on hearing the end.
//!
//! An instance starting routes no key until it has read the map from
//! etcd (see [`super::initial`]): other instances may have moved slots
//! since its configuration was written. (`failover.state_dir`, where a
//! copy could be kept, is refused with `[coordination]`; the copy is kept
//! there if that ever changes.)

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::start::{StartError, PAUSE_LIMIT};
use super::state::{MapStore, SavedMap};
use super::Slots;
use crate::coord::Coordination;
use crate::shard::slots::{Moving, SlotMap};
use crate::shard::Shards;

/// What is kept in etcd.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    map: SavedMap,
    /// The instance that wrote it, which walks a move it started.
    walker: String,
}

/// How long the walker waits for acknowledgements beyond the pause limit:
/// instances read etcd and publish their views every `poll_ms`.
const POLLS: Duration = Duration::from_secs(1);

/// The shared map's state in this instance.
pub struct Shared {
    pub coord: Arc<Coordination>,
    slots: Arc<Slots>,
    shards: Arc<Shards>,
    /// Where a copy of the map in force is kept (nowhere while
    /// `failover.state_dir` is refused with `[coordination]`).
    store: MapStore,
    prefix: String,
    /// The map to route by while etcd holds no record: the one this
    /// instance had without `[coordination]`.
    own: SlotMap,
    /// The revision of the record in force here (-1: none yet).
    applied: AtomicI64,
    /// Its walker.
    walker: Mutex<String>,
    /// Maps replaced but perhaps still routed by.
    replaced: Mutex<Vec<Weak<SlotMap>>>,
    /// When the pause in force (by revision) was adopted.
    paused_at: Mutex<Option<(i64, Instant)>>,
    /// This instance is starting a move (its pause is not stale).
    starting: AtomicBool,
}

impl Shared {
    pub fn new(
        coord: Arc<Coordination>,
        slots: Arc<Slots>,
        shards: Arc<Shards>,
        store: MapStore,
        prefix: &str,
        own: SlotMap,
    ) -> Shared {
        Shared {
            coord,
            slots,
            shards,
            store,
            prefix: prefix.trim_end_matches('/').to_string(),
            own,
            applied: AtomicI64::new(-1),
            walker: Mutex::new(String::new()),
            replaced: Mutex::default(),
            paused_at: Mutex::default(),
            starting: AtomicBool::new(false),
        }
    }

    /// Whether a record from etcd is in force here.
    pub fn is_ready(&self) -> bool {
        self.applied.load(Ordering::SeqCst) >= 0
    }

    /// Whether this instance walks the move in force: it started it, or
    /// its walker's lease is gone.
    pub fn walks(&self) -> bool {
        if self.applied.load(Ordering::SeqCst) < 0 {
            return false;
        }
        let walker = lock(&self.walker).clone();
        walker == self.coord.instance || !self.coord.is_live(&walker)
    }

    /// A pause in force for longer than a walker waits for it, not one
    /// this instance is starting: its walker died, or lost etcd.
    fn stale_pause(&self) -> Option<i64> {
        let (revision, at) = (*lock(&self.paused_at))?;
        let applied = self.applied.load(Ordering::SeqCst);
        let stale = revision == applied
            && at.elapsed() > PAUSE_LIMIT + POLLS * 2
            && !self.starting.load(Ordering::SeqCst);
        stale.then_some(revision)
    }

    fn names(&self) -> Vec<String> {
        super::shard_names(&self.shards)
    }

    /// Follows the record in etcd: each new one is put in force and
    /// acknowledged. Runs until shutdown.
    pub async fn follow(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut changed = self.coord.slot_record_watch();
        loop {
            self.take_record();
            tokio::select! {
                result = changed.changed() => if result.is_err() {
                    return;
                },
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Puts the record last read in force, if it is new.
    fn take_record(self: &Arc<Self>) {
        let Some((value, revision)) = self.coord.slot_record() else {
            return;
        };
        if revision == self.applied.load(Ordering::SeqCst) {
            return;
        }
        match self.decode(value.as_deref()) {
            Ok((map, walker)) => self.adopt(map, walker, revision),
            Err(why) => {
                // Not acknowledged: a move waiting for it is refused.
                tracing::error!(revision, "the shared slot map cannot be routed by: {why}");
                self.applied.store(revision, Ordering::SeqCst);
            }
        }
    }

    /// The map a record (or its absence) describes, and its walker.
    fn decode(&self, value: Option<&[u8]>) -> Result<(SlotMap, String), String> {
        let Some(value) = value else {
            return Ok((self.own.clone(), String::new()));
        };
        let record: Record = serde_json::from_slice(value).map_err(|e| e.to_string())?;
        let names = self.names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let map = record.map.to_map(&names, true).map_err(|e| e.to_string())?;
        // A shard removed here by a reload cannot receive slots (a move
        // asked elsewhere before this instance's reload was seen there).
        for (index, shard) in self.shards.all().iter().enumerate() {
            let target = map.moving().is_some_and(|m| m.to == index);
            if shard.topology.is_retired() && (target || map.count_of(index) > 0) {
                return Err(format!(
                    "it gives slots to shard '{}', which was removed here",
                    shard.name()
                ));
            }
        }
        Ok((map, record.walker))
    }

    /// Puts `map`, the record at `revision`, in force here: copied to the
    /// state directory first (a restart routes by the copy), then
    /// published; acknowledged once nothing routed by an earlier map is
    /// unanswered.
    fn adopt(self: &Arc<Self>, map: SlotMap, walker: String, revision: i64) {
        let names = self.names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut copy = SavedMap::of(&map, &names);
        copy.shared = Some(self.prefix.clone());
        if let Err(e) = self.store.save(&copy) {
            // Not in force, not acknowledged: tried again at the next read.
            tracing::error!(error = %e, "the shared slot map could not be copied to the state directory");
            return;
        }
        self.applied.store(revision, Ordering::SeqCst);
        *lock(&self.walker) = walker;
        *lock(&self.paused_at) = map
            .moving()
            .filter(|m| m.paused)
            .map(|_| (revision, Instant::now()));
        if **self.slots.load() != map {
            let old = super::put_in_force(&self.slots, &self.shards, map);
            lock(&self.replaced).push(Arc::downgrade(&old));
        }
        tokio::spawn(acknowledge(self.clone(), revision));
    }

    /// Writes `map` as the record if it is still at `replaces`.
    async fn write(&self, map: &SlotMap, replaces: i64) -> Result<i64, StartError> {
        let names = self.names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let record = Record {
            map: SavedMap::of(map, &names),
            walker: self.coord.instance.clone(),
        };
        let value = serde_json::to_vec(&record).map_err(|e| StartError::Save(e.to_string()))?;
        match self.coord.write_slot_record(value, replaces).await {
            Ok(Some(revision)) => Ok(revision),
            Ok(None) => Err(StartError::Changed),
            Err(e) => Err(StartError::Save(format!("etcd: {e}"))),
        }
    }

    /// Writes `map` over the record at `replaces` and puts it in force,
    /// trying again for a while when etcd cannot be reached.
    async fn write_and_adopt(
        self: &Arc<Self>,
        map: SlotMap,
        replaces: i64,
    ) -> Result<i64, StartError> {
        let deadline = Instant::now() + PAUSE_LIMIT;
        loop {
            match self.write(&map, replaces).await {
                Ok(revision) => {
                    self.adopt(map, self.coord.instance.clone(), revision);
                    return Ok(revision);
                }
                Err(StartError::Save(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts a move through etcd (see the module's doc).
    pub async fn start(self: &Arc<Self>, moving: Moving) -> Result<(), StartError> {
        self.starting.store(true, Ordering::SeqCst);
        let result = self.pause_and_move(moving).await;
        self.starting.store(false, Ordering::SeqCst);
        result
    }

    async fn pause_and_move(self: &Arc<Self>, moving: Moving) -> Result<(), StartError> {
        let Some((_, revision)) = self.coord.slot_record() else {
            return Err(StartError::NotRead);
        };
        if revision != self.applied.load(Ordering::SeqCst) {
            return Err(StartError::Changed);
        }
        let before = (**self.slots.load()).clone();
        let paused = before.with_moving(Some(Moving {
            paused: true,
            ..moving.clone()
        }));
        let pause = self.write_and_adopt(paused, revision).await?;
        let deadline = Instant::now() + PAUSE_LIMIT + POLLS;
        loop {
            let missing = self.coord.unacknowledged(pause);
            if missing.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                self.write_and_adopt(before, pause).await?;
                return Err(StartError::Unacknowledged(missing));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let under_way = before.with_moving(Some(Moving {
            paused: false,
            ..moving
        }));
        self.write_and_adopt(under_way, pause).await?;
        Ok(())
    }

    /// The walk found the source empty: the target owns the slots. Another
    /// instance may have written that first: then nothing is written.
    pub async fn finish(self: &Arc<Self>) -> bool {
        let revision = self.applied.load(Ordering::SeqCst);
        let done = self.slots.load().with_move_done();
        match self.write_and_adopt(done, revision).await {
            Ok(_) => true,
            Err(StartError::Changed) => false,
            Err(e) => {
                tracing::warn!(error = %e, "the slot map after a move could not be written; the walk goes on");
                self.slots.update(|p| p.last_error = Some(e.to_string()));
                false
            }
        }
    }

    /// Calls off a pause whose walker is gone (see the module's doc).
    pub async fn call_off_stale(self: &Arc<Self>) {
        let Some(revision) = self.stale_pause() else {
            return;
        };
        let before = self.slots.load().with_moving(None);
        match self.write(&before, revision).await {
            Ok(written) => {
                tracing::warn!(
                    "a move's pause outlived its walker; called off (nothing had moved)"
                );
                self.adopt(before, self.coord.instance.clone(), written);
            }
            // Someone else called it off, or its walker went on.
            Err(StartError::Changed) => {}
            Err(e) => tracing::warn!(error = %e, "calling off a stale pause"),
        }
    }
}

/// Acknowledges the record at `revision` once no map it replaced is
/// routed by; gives up when another record is put in force first.
async fn acknowledge(shared: Arc<Shared>, revision: i64) {
    loop {
        if shared.applied.load(Ordering::SeqCst) != revision {
            return;
        }
        let drained = {
            let mut replaced = lock(&shared.replaced);
            replaced.retain(|map| map.strong_count() > 0);
            replaced.is_empty()
        };
        if drained {
            shared.coord.acknowledge_slots(revision);
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
