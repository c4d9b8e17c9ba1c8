//! The `quorum` world: a Wasm component that says how many replica
//! acknowledgements a write needs and whom to promote.

use wasmtime::component::HasSelf;

use super::sandbox::{Single, Spec, State};
use super::LoadError;
use crate::observe::policy_view::PolicyView;
use crate::replicate::quorum::{self as native, QuorumPolicy};

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "quorum",
    with: {
        "rampart:policy/types": super::wit::rampart::policy::types,
        "rampart:policy/host": super::wit::rampart::policy::host,
    },
});

use super::wit::rampart::policy::types as wit;

/// A loaded quorum plugin. If a call traps it fails closed: the
/// requirement is the built-in fallback's, and the election promotes
/// nobody (the controller tries again on its next tick).
pub struct WasmQuorum {
    plugin: Single<Quorum>,
    fallback: Box<dyn QuorumPolicy>,
}

impl WasmQuorum {
    pub fn load(spec: Spec<'_>, fallback: Box<dyn QuorumPolicy>) -> Result<WasmQuorum, LoadError> {
        let plugin = Single::load(
            spec,
            |linker| Quorum::add_to_linker::<State, HasSelf<State>>(linker, |state| state),
            QuorumPre::new,
            |pre, store| pre.instantiate(store),
            |q, store, config| q.call_configure(store, config),
        )?;
        Ok(WasmQuorum { plugin, fallback })
    }
}

impl WasmQuorum {
    /// An answer the host cannot use: counted as a fallback, kept as the
    /// last error, logged with the plugin's name.
    fn invalid(&self, reason: String) {
        self.plugin.stats.fallback(&reason);
        tracing::warn!(plugin = %self.plugin.name, %reason, "quorum plugin answered what cannot be used");
    }
}

impl QuorumPolicy for WasmQuorum {
    fn requirement(&self, replicas: u32) -> native::Requirement {
        self.plugin
            .call("requirement", |q, store| {
                q.call_requirement(store, replicas)
            })
            .map(|r| {
                if r.acks > replicas {
                    self.invalid(format!(
                        "requirement asked for {} acks of {replicas} replica(s); {replicas} it is",
                        r.acks
                    ));
                }
                native::Requirement {
                    acks: r.acks.min(replicas),
                    timeout_ms: r.timeout_ms.max(1),
                    fail_on_shortfall: r.fail_on_shortfall,
                }
            })
            .unwrap_or_else(|| self.fallback.requirement(replicas))
    }

    fn elect(&self, candidates: &[native::Candidate]) -> Option<u32> {
        let list: Vec<wit::Candidate> = candidates
            .iter()
            .map(|c| wit::Candidate {
                id: c.id,
                offset: c.offset,
                priority: c.priority,
            })
            .collect();
        let chosen = self
            .plugin
            .call("elect", |q, store| q.call_elect(store, &list))??;
        // Only a candidate can be promoted, whatever the plugin says.
        if candidates.iter().any(|c| c.id == chosen) {
            return Some(chosen);
        }
        let ids: Vec<String> = candidates.iter().map(|c| c.id.to_string()).collect();
        self.invalid(format!(
            "elect returned node {chosen}, which is not a candidate (candidates: {})",
            ids.join(", ")
        ));
        None
    }

    fn describe(&self) -> PolicyView {
        self.plugin.describe()
    }

    fn forget_self_check(&self) {
        self.plugin.reset();
    }
}
