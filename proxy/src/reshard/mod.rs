//! Moving hash slots from one shard to another while clients keep using
//! them, on unmodified Redis.
//!
//! A move goes through three maps, each published whole ([`Slots`]):
//!
//! 1. **Paused**: requests for the moving slots wait. Rampart waits until
//!    every request routed by the map before is answered (each client holds
//!    the map it routed by until then, so the map's reference count says
//!    it), unblocking commands blocked on those slots (sent again on the
//!    target after the pause). After this no request
//!    routed to the source for these slots can still run there.
//! 2. **Moving**: a command touching a key of a moving slot first moves
//!    that key ([`keys`]) under the slot's gate, then runs on the target;
//!    meanwhile the [`mover`] walks the source and moves the rest. Only
//!    Rampart's moves touch the source's copies, so a key is in exactly one
//!    place for every command: on the source until its move, on the target
//!    after.
//! 3. **Done**: the target owns the slots. Persisted ([`state`]) at every
//!    step, so a restart resumes the move or keeps the new map.

pub mod keys;
pub mod mover;
pub mod shared;
pub mod start;
pub mod state;
pub mod step;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;

use crate::shard::slots::SlotMap;

/// Gates: a key is moved under its slot's gate, which keeps the cached
/// connections used to move it. Striped, so at most this many moves run at
/// once.
const GATES: usize = 64;

/// The slot map in force, replaced whole on every step of a move.
pub struct Slots {
    map: ArcSwap<SlotMap>,
    changed: watch::Sender<u64>,
    gates: Box<[tokio::sync::Mutex<keys::Conns>]>,
    progress: Mutex<Progress>,
    /// Keys moved since start, for the metrics.
    moved_total: std::sync::atomic::AtomicU64,
}

/// What the move in progress (or the last one) has done.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    /// Keys moved: by the mover's walk, and by commands that touched them.
    pub moved: u64,
    pub moved_by_clients: u64,
    /// Full walks of the source done.
    pub passes: u32,
    #[serde(skip)]
    pub started: Option<Instant>,
    pub seconds: f64,
    /// The walk's rate limit (keys per second; 0: none).
    pub rate: u64,
    pub last_error: Option<String>,
}

impl Slots {
    pub fn new(map: SlotMap, transfer: keys::Transfer) -> Slots {
        Slots {
            map: ArcSwap::from_pointee(map),
            changed: watch::channel(0).0,
            gates: {
                let doubtful = keys::Doubtful::default();
                (0..GATES)
                    .map(|_| {
                        tokio::sync::Mutex::new(keys::Conns::new(
                            doubtful.clone(),
                            transfer.clone(),
                        ))
                    })
                    .collect()
            },
            progress: Mutex::new(Progress::default()),
            moved_total: Default::default(),
        }
    }

    /// The map, for a look (not kept: a client keeps what [`Slots::current`]
    /// gives).
    pub fn load(&self) -> arc_swap::Guard<Arc<SlotMap>> {
        self.map.load()
    }

    /// The map, kept by whoever routes by it until what they routed is
    /// answered.
    pub fn current(&self) -> Arc<SlotMap> {
        self.map.load_full()
    }

    /// Whether `map` is the one in force.
    pub fn is_current(&self, map: &Arc<SlotMap>) -> bool {
        Arc::ptr_eq(&self.map.load(), map)
    }

    /// Puts `map` in force; returns the one it replaces.
    pub(crate) fn publish(&self, map: SlotMap) -> Arc<SlotMap> {
        let old = self.map.swap(Arc::new(map));
        self.changed.send_modify(|n| *n += 1);
        old
    }

    /// Changes whenever a new map is in force.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The gate of `slot`.
    pub(crate) fn gate(&self, slot: u16) -> &tokio::sync::Mutex<keys::Conns> {
        &self.gates[usize::from(slot) % GATES]
    }

    pub fn progress(&self) -> Progress {
        let mut progress = self.progress.lock().map(|p| p.clone()).unwrap_or_default();
        if let Some(started) = progress.started {
            progress.seconds = started.elapsed().as_secs_f64();
        }
        progress
    }

    /// Counts keys moved, by the walk or by commands touching them.
    pub(crate) fn count_moved(&self, keys: usize, by_clients: bool) {
        self.moved_total
            .fetch_add(keys as u64, std::sync::atomic::Ordering::Relaxed);
        self.update(|p| match by_clients {
            true => p.moved_by_clients += keys as u64,
            false => p.moved += keys as u64,
        });
    }

    /// Keys moved since start.
    pub fn moved_total(&self) -> u64 {
        self.moved_total.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn update(&self, change: impl FnOnce(&mut Progress)) {
        if let Ok(mut progress) = self.progress.lock() {
            change(&mut progress);
        }
    }
}

/// The map to start with: the one moves left in `failover.state_dir`,
/// else the configuration's `slots` lines.
///
/// With `[coordination]`, the map is etcd's: every slot waits for the
/// first read, since other instances may have moved slots since the
/// configuration was written; a copy of it kept in a state directory by
/// this instance (a member, so no move got past a pause without it) would
/// do until then.
pub fn initial(config: &crate::config::Config) -> Result<SlotMap, crate::shard::slots::SlotError> {
    let Some(coordination) = &config.coordination else {
        return own(config);
    };
    let prefix = coordination.prefix.trim_end_matches('/');
    let names: Vec<&str> = config.shards.keys().map(String::as_str).collect();
    match load(config)?.filter(|s| s.shared.as_deref() == Some(prefix)) {
        Some(copy) => copy.to_map(&names, true),
        None => Ok(SlotMap::of(config)?.all_paused()),
    }
}

/// The map this instance would route by alone: the one its own moves left
/// in the state directory, else the configuration's. With
/// `[coordination]`, the shared map while etcd holds none.
pub fn own(config: &crate::config::Config) -> Result<SlotMap, crate::shard::slots::SlotError> {
    let configured = SlotMap::of(config)?;
    let Some(saved) = load(config)?.filter(|s| s.shared.is_none()) else {
        return Ok(configured);
    };
    let names: Vec<&str> = config.shards.keys().map(String::as_str).collect();
    let map = saved.to_map(&names, false)?;
    let differs = (0..names.len()).any(|i| map.ranges_of(i) != configured.ranges_of(i));
    if differs {
        tracing::warn!(
            "routing by the slot map that moves left in the state directory, not by the configuration's `slots` lines; `rampart slots --toml` prints lines that match it"
        );
    }
    Ok(map)
}

/// Puts `map` in force: each shard's topology shows its slots, then the
/// map is published. Returns the map it replaces.
pub(crate) fn put_in_force(
    slots: &Slots,
    shards: &crate::shard::Shards,
    map: SlotMap,
) -> Arc<SlotMap> {
    for (index, shard) in shards.all().iter().enumerate() {
        shard
            .topology
            .set_slots(crate::shard::slots::ranges_text(&map.ranges_of(index)));
    }
    slots.publish(map)
}

/// Every shard's name, by index (retired ones included: a map names
/// them).
pub(crate) fn shard_names(shards: &crate::shard::Shards) -> Vec<String> {
    shards.all().iter().map(|s| s.name().to_string()).collect()
}

fn load(
    config: &crate::config::Config,
) -> Result<Option<state::SavedMap>, crate::shard::slots::SlotError> {
    state::MapStore::new(config.failover.state_dir.as_deref())
        .load()
        .map_err(|e| crate::shard::slots::SlotError(format!("slots.json: {e}")))
}
