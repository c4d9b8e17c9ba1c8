//! The `detector` world: a Wasm component that judges, from each node's
//! probe results, whether it is up, suspect or down.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use wasmtime::component::HasSelf;

use super::sandbox::{Single, Spec, State};
use super::LoadError;
use crate::failover::detect::Detector as NativeDetector;
use crate::route::PolicyView;
use crate::topology::Health as Verdict;

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "detector",
    with: {
        "rampart:policy/types": super::router::rampart::policy::types,
        "rampart:policy/host": super::router::rampart::policy::host,
    },
});

use super::router::rampart::policy::types as wit;

/// A loaded detector plugin, shared by the probes of every node (it keeps
/// its own state per node id). If a call traps, each node keeps its last
/// verdict until the plugin answers again (a fresh instance starts with no
/// history).
pub struct WasmDetector {
    plugin: Single<Detector>,
}

/// The monotonic clock plugins see: milliseconds since Rampart started.
fn monotonic_ms(at: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    at.saturating_duration_since(start).as_millis() as u64
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
        Ok(WasmDetector { plugin })
    }

    /// The detector for one node's probe.
    pub fn for_node(self: &Arc<Self>, node: u32) -> Box<dyn NativeDetector> {
        Box::new(NodeDetector {
            plugin: self.clone(),
            node,
            last: Verdict::Down,
        })
    }

    pub fn describe(&self) -> PolicyView {
        self.plugin.describe()
    }

    /// See [`Single::reset`]: the self-check's probe results are forgotten.
    pub fn forget_self_check(&self) {
        self.plugin.reset();
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
            .plugin
            .call("observe", |d, store| d.call_observe(store, node, at_ms, ok));
    }

    fn verdict(&mut self, now: Instant) -> Verdict {
        let (node, now_ms) = (self.node, monotonic_ms(now));
        self.last = match self
            .plugin
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
