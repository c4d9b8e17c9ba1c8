//! The `detector` world: a Wasm component that judges, from each node's
//! probe results, whether it is up, suspect or down.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use wasmtime::component::HasSelf;

use super::sandbox::{Single, Spec, State};
use super::LoadError;
use crate::failover::detect::Detector as NativeDetector;
use crate::observe::policy_view::PolicyView;
use crate::topology::Health as Verdict;

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "detector",
    with: {
        "rampart:policy/types": super::wit::rampart::policy::types,
        "rampart:policy/host": super::wit::rampart::policy::host,
    },
});

use super::wit::rampart::policy::types as wit;

/// A loaded detector plugin, shared by the probes of every node (it keeps
/// its own state per node id). If a call traps, each node keeps its last
/// verdict until the plugin answers again, and the fresh instance is first
/// given the recent probe results again (the last [`REPLAYED`] per node),
/// so a detector that judges from history does not start from nothing.
pub struct WasmDetector {
    plugin: Single<Detector>,
    history: std::sync::Mutex<History>,
}

/// Probe results kept per node for a fresh instance.
const REPLAYED: usize = 128;

#[derive(Default)]
struct History {
    /// Per node, its recent `(at_ms, ok)`, oldest first.
    nodes: std::collections::BTreeMap<u32, std::collections::VecDeque<(u64, bool)>>,
    /// A call trapped: the next one goes to a fresh instance, which is
    /// given the history first.
    replay: bool,
}

/// The monotonic clock plugins see: milliseconds since Rampart started.
fn monotonic_ms(at: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    at.saturating_duration_since(start).as_millis() as u64
}

impl crate::failover::detect::DetectorMaker for WasmDetector {
    /// The detector for one node's probe.
    fn for_node(self: Arc<Self>, node: u32) -> Box<dyn NativeDetector> {
        Box::new(NodeDetector {
            plugin: self,
            node,
            last: Verdict::Down,
        })
    }

    fn describe(&self) -> PolicyView {
        self.plugin.describe()
    }
}

impl WasmDetector {
    pub fn load(spec: Spec<'_>) -> Result<WasmDetector, LoadError> {
        let plugin = Single::load(
            spec,
            |linker| Detector::add_to_linker::<State, HasSelf<State>>(linker, |state| state),
            DetectorPre::new,
            |pre, store| pre.instantiate(store),
            |d, store, config| d.call_configure(store, config),
        )?;
        Ok(WasmDetector {
            plugin,
            history: Default::default(),
        })
    }

    /// Calls the plugin, first giving a fresh instance (after a trap) the
    /// probe results the trapped one had seen. A replay that traps is not
    /// retried: the history is the likely cause.
    fn call<R>(
        &self,
        what: &str,
        call: impl FnOnce(&Detector, &mut wasmtime::Store<State>) -> wasmtime::Result<R>,
    ) -> Option<R> {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if std::mem::take(&mut history.replay) {
            'replay: for (&node, seen) in &history.nodes {
                for &(at_ms, ok) in seen {
                    let replayed = self
                        .plugin
                        .call("observe", |d, store| d.call_observe(store, node, at_ms, ok));
                    if replayed.is_none() {
                        break 'replay;
                    }
                }
            }
        }
        let answer = self.plugin.call(what, call);
        history.replay = answer.is_none();
        answer
    }

    fn remember(&self, node: u32, at_ms: u64, ok: bool) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let seen = history.nodes.entry(node).or_default();
        if seen.len() == REPLAYED {
            seen.pop_front();
        }
        seen.push_back((at_ms, ok));
    }

    /// See [`Single::reset`]: the self-check's probe results are forgotten.
    pub fn forget_self_check(&self) {
        self.plugin.reset();
        *self.history.lock().unwrap_or_else(|p| p.into_inner()) = History::default();
    }
}

/// One node's view of a shared detector plugin.
struct NodeDetector {
    plugin: Arc<WasmDetector>,
    node: u32,
    last: Verdict,
}

impl NativeDetector for NodeDetector {
    fn observe(&mut self, at: Instant, ok: bool) {
        let (node, at_ms) = (self.node, monotonic_ms(at));
        let _ = self
            .plugin
            .call("observe", |d, store| d.call_observe(store, node, at_ms, ok));
        // After the call: a replay it caused already gave the new instance
        // everything before this result, and the call gave it this one.
        self.plugin.remember(node, at_ms, ok);
    }

    fn verdict(&mut self, now: Instant) -> Verdict {
        let (node, now_ms) = (self.node, monotonic_ms(now));
        self.last = match self
            .plugin
            .call("assess", |d, store| d.call_assess(store, node, now_ms))
        {
            Some(wit::Health::Up) => Verdict::Up,
            Some(wit::Health::Suspect) => Verdict::Suspect,
            Some(wit::Health::Down) => Verdict::Down,
            None => self.last,
        };
        self.last
    }
}
