//! Where a shard's active router lives, and how it is replaced while
//! traffic flows.
//!
//! The active router is one *generation* behind an `ArcSwap`: each read
//! loads it (a few nanoseconds, no lock), so a swap is one pointer store and
//! commands already routing finish on the generation they loaded. A new
//! generation is compiled, instantiated, configured and self-checked on a
//! blocking thread before it is published; one that fails any step is never
//! seen by a command. The last few generations are kept for rollback, by
//! hand or automatically when a new one keeps trapping. A *shadow* generation
//! can run beside the active one on the same reads: its choices are only
//! compared and counted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::observe::policy_view::PolicyView;
use crate::route::{Read, ReadPolicy};
use crate::topology::{Node, ReplicaSet};

/// One loaded policy (a router unless said otherwise) and where it came
/// from.
pub struct Generation<P = Box<dyn ReadPolicy>> {
    pub number: u64,
    pub policy: P,
    /// `builtin:<name>`, a file path, or `upload`.
    pub source: String,
    /// Of the `.wasm` bytes; none for built-ins.
    pub sha256: Option<String>,
    pub config: String,
    pub loaded_at_ms: u64,
    loaded: Instant,
}

impl<P> Generation<P> {
    pub fn new(
        number: u64,
        policy: P,
        source: String,
        wasm: Option<&[u8]>,
        config: String,
    ) -> Generation<P> {
        Generation {
            number,
            policy,
            source,
            sha256: wasm.map(sha256_hex),
            config,
            loaded_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            loaded: Instant::now(),
        }
    }

    /// What the admin views show, with the policy's own counters.
    pub fn view_with(&self, policy: PolicyView) -> GenerationView {
        GenerationView {
            generation: self.number,
            source: self.source.clone(),
            sha256: self.sha256.clone(),
            config: self.config.clone(),
            loaded_at_ms: self.loaded_at_ms,
            policy,
        }
    }
}

impl Generation {
    pub fn view(&self) -> GenerationView {
        self.view_with(self.policy.describe())
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerationView {
    pub generation: u64,
    pub source: String,
    pub sha256: Option<String>,
    pub config: String,
    pub loaded_at_ms: u64,
    #[serde(flatten)]
    pub policy: PolicyView,
}

/// A candidate router compared with the active one on live reads.
pub struct Shadow {
    pub generation: Arc<Generation>,
    /// Per choice of the active router (index 0: the primary, i + 1: node
    /// i of the shard), how often the shadow agreed and disagreed.
    counts: Vec<(AtomicU64, AtomicU64)>,
    /// Per choice of the shadow (same indices), how often it chose it.
    chosen: Vec<AtomicU64>,
}

impl Shadow {
    fn compare(&self, shard: &ReplicaSet, active: Option<&Arc<Node>>, shadow: Option<&Arc<Node>>) {
        let index = |n: Option<&Arc<Node>>| {
            n.and_then(|n| shard.nodes.iter().position(|m| m.id == n.id))
                .map_or(0, |i| i + 1)
        };
        let (a, s) = (index(active), index(shadow));
        if let Some(chosen) = self.chosen.get(s) {
            chosen.fetch_add(1, Ordering::Relaxed);
        }
        if let Some((agree, disagree)) = self.counts.get(a) {
            if a == s {
                agree.fetch_add(1, Ordering::Relaxed);
            } else {
                disagree.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn view(&self, shard: &ReplicaSet) -> ShadowView {
        let label = |i: usize| match i {
            0 => "primary".to_string(),
            i => shard
                .nodes
                .get(i - 1)
                .map_or("?".into(), |n| n.addr.clone()),
        };
        ShadowView {
            candidate: self.generation.view(),
            by_active_choice: self
                .counts
                .iter()
                .enumerate()
                .map(|(i, (agree, disagree))| ChoiceCounts {
                    active_choice: label(i),
                    agree: agree.load(Ordering::Relaxed),
                    disagree: disagree.load(Ordering::Relaxed),
                })
                .collect(),
            by_shadow_choice: self
                .chosen
                .iter()
                .enumerate()
                .map(|(i, n)| (label(i), n.load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ShadowView {
    pub candidate: GenerationView,
    pub by_active_choice: Vec<ChoiceCounts>,
    /// What the candidate chose: each node (and "primary") with how many
    /// reads it would have sent there.
    pub by_shadow_choice: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChoiceCounts {
    pub active_choice: String,
    pub agree: u64,
    pub disagree: u64,
}

/// Generations kept behind the active one for rollback.
const KEEP: usize = 3;

/// Generations rolled back from, kept (newest last) with why they left.
const RETIRED: usize = 5;

/// A generation taken out of service by a rollback, as it was then: its
/// counters and last error are why it left, and stay visible after it is
/// gone (`policy list`, `/v1/policies`, the dashboard).
#[derive(Debug, Clone, Serialize)]
pub struct RetiredView {
    #[serde(flatten)]
    pub generation: GenerationView,
    /// `rolled back automatically` (it trapped soon after loading) or
    /// `rolled back by an operator`.
    pub reason: String,
    pub retired_at_ms: u64,
}

/// A shard's router: the active generation, the ones before, a shadow.
pub struct RouterSlot {
    current: ArcSwap<Generation>,
    /// Oldest first; a rollback takes the last.
    previous: Mutex<Vec<Arc<Generation>>>,
    shadow: ArcSwapOption<Shadow>,
    /// Whether a shadow is set: checked before loading it, so reads without
    /// a shadow (nearly all) skip that load.
    has_shadow: AtomicBool,
    next: AtomicU64,
    retired: Mutex<Vec<RetiredView>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotView {
    pub active: GenerationView,
    /// What a rollback goes back to.
    pub previous: Option<GenerationView>,
    /// The generations further back, newest first: rollbacks after the
    /// first go to these in turn.
    pub earlier: Vec<u64>,
    pub shadow: Option<ShadowView>,
    /// Generations rolled back from, newest first, with why.
    pub retired: Vec<RetiredView>,
}

/// The slot as the request path sees it: one read policy.
impl ReadPolicy for RouterSlot {
    /// Picks the node for a read with the active generation (and lets the
    /// shadow, if any, pick too, for the record). `None`: the primary.
    fn pick<'s>(&self, shard: &'s ReplicaSet, read: &Read) -> Option<&'s Arc<Node>> {
        let current = self.current.load();
        let choice = current.policy.pick(shard, read);
        if self.has_shadow.load(Ordering::Relaxed) {
            if let Some(shadow) = &*self.shadow.load() {
                let candidate = shadow.generation.policy.pick(shard, read);
                shadow.compare(shard, choice, candidate);
            }
        }
        choice
    }

    fn describe(&self) -> PolicyView {
        self.current.load().policy.describe()
    }
}

impl RouterSlot {
    pub fn from_generation(generation: Generation) -> RouterSlot {
        RouterSlot {
            next: AtomicU64::new(generation.number + 1),
            current: ArcSwap::from_pointee(generation),
            previous: Mutex::new(Vec::new()),
            shadow: ArcSwapOption::empty(),
            has_shadow: AtomicBool::new(false),
            retired: Mutex::new(Vec::new()),
        }
    }

    /// The number the next generation gets.
    pub fn next_number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub fn active(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Numbers from now on start at `next` at least (a generation numbered
    /// by another instance was loaded).
    pub fn skip_to(&self, next: u64) {
        self.next.fetch_max(next, Ordering::Relaxed);
    }

    /// The number a rollback would go back to.
    pub fn previous_number(&self) -> Option<u64> {
        self.previous
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .map(|g| g.number)
    }

    /// The generation running in shadow, if any.
    pub fn shadow_generation(&self) -> Option<Arc<Generation>> {
        self.shadow.load().as_ref().map(|s| s.generation.clone())
    }

    /// Makes `generation` active; the old one becomes `previous`.
    pub fn publish(&self, generation: Generation) -> u64 {
        let number = generation.number;
        let old = self.current.swap(Arc::new(generation));
        self.remember(old);
        number
    }

    /// Keeps a generation that was just replaced, for rollback.
    fn remember(&self, old: Arc<Generation>) {
        let mut previous = self.previous.lock().unwrap_or_else(|p| p.into_inner());
        previous.push(old);
        if previous.len() > KEEP {
            previous.remove(0);
        }
    }

    /// Goes back to the previous generation (an operator's rollback);
    /// `None` if there is none.
    pub fn rollback(&self) -> Option<u64> {
        self.roll_back("rolled back by an operator")
    }

    fn roll_back(&self, reason: &str) -> Option<u64> {
        let previous = self
            .previous
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()?;
        let number = previous.number;
        let bad = self.current.swap(previous);
        tracing::warn!(from = bad.number, to = number, reason, "router rolled back");
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.push(RetiredView {
            generation: bad.view(),
            reason: reason.to_string(),
            retired_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        });
        if retired.len() > RETIRED {
            retired.remove(0);
        }
        Some(number)
    }

    pub fn set_shadow(&self, generation: Option<Generation>, nodes: usize) {
        self.has_shadow
            .store(generation.is_some(), Ordering::Relaxed);
        self.shadow.store(generation.map(|g| {
            Arc::new(Shadow {
                generation: Arc::new(g),
                counts: (0..=nodes).map(|_| Default::default()).collect(),
                chosen: (0..=nodes).map(|_| Default::default()).collect(),
            })
        }));
    }

    /// Makes the shadow the active generation.
    pub fn activate_shadow(&self) -> Option<u64> {
        self.has_shadow.store(false, Ordering::Relaxed);
        let shadow = self.shadow.swap(None)?;
        let number = shadow.generation.number;
        let old = self.current.swap(shadow.generation.clone());
        self.remember(old);
        Some(number)
    }

    /// A generation younger than `probation` that has trapped `traps`
    /// times or more is replaced by the one before it. Returns the numbers
    /// rolled from and to.
    pub fn roll_back_if_failing(&self, probation: Duration, traps: u64) -> Option<(u64, u64)> {
        let current = self.current.load();
        let young = current.loaded.elapsed() < probation;
        // A trap is a fallback too; so is an answer the host cannot use
        // (an unknown node): either way the plugin is not deciding.
        if !young || current.policy.describe().fallbacks < traps {
            return None;
        }
        let from = current.number;
        drop(current);
        self.roll_back(
            "rolled back automatically: it trapped or gave unusable answers soon after loading",
        )
        .map(|to| (from, to))
    }

    pub fn view(&self, shard: &ReplicaSet) -> SlotView {
        let previous = self.previous.lock().unwrap_or_else(|p| p.into_inner());
        SlotView {
            active: self.current.load().view(),
            previous: previous.last().map(|g| g.view()),
            earlier: previous.iter().rev().skip(1).map(|g| g.number).collect(),
            shadow: self.shadow.load().as_ref().map(|s| s.view(shard)),
            retired: self
                .retired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .rev()
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::PrimaryOnly;

    fn generation(number: u64) -> Generation {
        Generation::new(
            number,
            Box::new(PrimaryOnly),
            format!("g{number}"),
            None,
            String::new(),
        )
    }

    #[test]
    fn the_last_few_generations_can_be_rolled_back_to_in_turn() {
        let slot = RouterSlot::from_generation(generation(1));
        for n in 2..=5 {
            slot.publish(generation(n));
        }
        assert_eq!(slot.active().number, 5);
        assert_eq!(slot.rollback(), Some(4));
        assert_eq!(slot.rollback(), Some(3));
        assert_eq!(slot.rollback(), Some(2));
        assert_eq!(slot.rollback(), None, "only {KEEP} are kept");
        assert_eq!(slot.active().number, 2);
    }
}
